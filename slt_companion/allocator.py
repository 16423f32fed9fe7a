r"""tcmalloc for CPU runs: where it is, the environment that preloads it, and whether this process runs on it.

PyTorch on a CPU allocates and frees a tensor's memory for nearly every operation. With glibc's ``malloc`` that costs
more than the arithmetic for the book's small models, and large activations come back as fresh pages from the kernel
(zero-filled, one page fault per 4 KiB). Google's tcmalloc keeps freed memory in per-size caches instead. Preloaded
into a process (``LD_PRELOAD``), it changes no number -- the same arithmetic on the same values, bit for bit -- and on
this book's 2-core CPU its training, sampling and validation work ran 1.13--1.19 times faster
(``benchmarks/allocator.py`` measures it side by side, and checks the bits).

A library cannot swap the allocator of a process that is already running, so the book preloads tcmalloc into the
processes it starts: ``make book`` and ``make test`` install Debian's ``libtcmalloc-minimal4`` where they can, and
every page's kernel starts with :func:`preload_env` (``tests/nbexec.py``). To run your own scripts or Jupyter on it::

    eval "$(python -m slt_companion.allocator)"      # prints: export LD_PRELOAD=...; or how to install it
    jupyter lab

``SLT_MALLOC=system`` turns it off (:func:`preload_env` then leaves the environment as it is). Linux only; elsewhere
every function here reports "not available" and changes nothing.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

__all__ = ["tcmalloc_path", "preload_env", "tcmalloc_active", "INSTALL_HINT"]

#: the shared library's name (Debian/Ubuntu package ``libtcmalloc-minimal4``; Fedora: ``gperftools-libs``)
SONAME = "libtcmalloc_minimal.so.4"
INSTALL_HINT = ("tcmalloc is not installed (Debian/Ubuntu: sudo apt-get install -y libtcmalloc-minimal4); "
                "CPU runs use the system allocator, slower by up to a sixth (benchmarks/allocator.py)")
#: tcmalloc prints "tcmalloc: large alloc ..." to stderr for each allocation above this many bytes (default 1 GiB);
#: a notebook's kernel would show it as cell output, so the threshold is raised out of the way
_REPORT_THRESHOLD = str(2 ** 50)
_SEARCH = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def tcmalloc_path() -> str | None:
    """The absolute path of tcmalloc's shared library, or ``None`` where it is not installed (or not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    for folder in _SEARCH:
        candidate = Path(folder) / SONAME
        if candidate.is_file():
            return str(candidate)
    found = ctypes.util.find_library("tcmalloc_minimal")     # ldconfig's cache: a soname, not a path
    if found:
        for folder in _SEARCH:
            if (Path(folder) / found).is_file():
                return str(Path(folder) / found)
    return None


def preload_env(env: dict | None = None) -> dict:
    """A copy of ``env`` (default ``os.environ``) in which a process started with it runs on tcmalloc: its path
    prepended to ``LD_PRELOAD`` (kept once) and its large-allocation report silenced. Unchanged when tcmalloc is not
    installed or ``SLT_MALLOC=system``."""
    out = dict(os.environ if env is None else env)
    path = tcmalloc_path()
    if path is None or out.get("SLT_MALLOC", "").strip().lower() == "system":
        return out
    preload = [p for p in out.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if not any(Path(p).name.startswith("libtcmalloc") for p in preload):
        out["LD_PRELOAD"] = " ".join([path, *preload])
    out.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", _REPORT_THRESHOLD)
    return out


def tcmalloc_active() -> bool:
    """True when this process runs on tcmalloc (it is among the process's mapped libraries)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "libtcmalloc" in maps


def _main(argv: list[str]) -> int:
    """``python -m slt_companion.allocator``: the shell line that preloads tcmalloc (or the install hint, on
    stderr, with exit code 1); ``--check``: exit code 0 when it is installed, 1 when not."""
    path = tcmalloc_path()
    if "--check" in argv:
        return 0 if path else 1
    if path is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    env = preload_env({"LD_PRELOAD": os.environ.get("LD_PRELOAD", "")})
    print(f"export LD_PRELOAD='{env['LD_PRELOAD']}' "
          f"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD={env['TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD']}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
