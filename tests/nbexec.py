"""Execute the book's notebook pages once each, in a way that cannot hang silently, straight into the
jupyter-cache that Jupyter Book reads.

    python tests/nbexec.py --cache _build/.jupyter_cache [--timeout S] [--force] [--jobs N|auto] [PAGE.md ...]
        # every notebook page of _toc.yml when no page is named; a page already in the cache is skipped;
        # the per-cell timeout defaults to execute.timeout in _config.yml

Both consumers go through :func:`execute_page`:

- ``make test``: ``tests/test_notebooks.py`` runs every page once with ``SLT_QUICK=1`` (one pytest item per
  page, failing with the cell that failed) into the quick build's cache; the quick ``-W`` build then renders
  those executions instead of running the notebooks again (``tests/test_book.py`` checks it executed none);
- ``make book``: every page full size into ``_build/.jupyter_cache`` before ``jupyter-book build``.

What makes it safe to run beside anything else on the machine:

- **No ports.** Each kernel talks to its client over IPC (Unix-domain sockets) in a private temporary
  directory, never over TCP: two executions in two processes cannot pick the same port. (With TCP, a kernel
  went idle while its client waited forever, twice, when two notebook runs overlapped.)
- **A hang is a failure with a stack.** Every cell has a timeout. Before the code cells run, the kernel
  registers :mod:`faulthandler` on ``SIGUSR1``; when a cell times out the client sends that signal, and the
  kernel's Python stack of every thread goes into the error message, so the report says where it hung.
- **One execution, one cache entry.** The page is read with MyST-NB's own reader, so the cache key (a hash of
  the code cells and their metadata) is the one Jupyter Book computes when it builds the page; it then finds
  the execution in the cache and does not run a kernel.

The same set-up code also turns DeprecationWarning/FutureWarning raised from ``slt_companion`` into errors
(STYLE.md, convention 10), silently, without adding a cell to the page.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import signal
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # IPython colours its tracebacks; a failure message is plain text

#: runs silently in every kernel before the first cell; ``{dump}`` is the file the stack goes to
KERNEL_SETUP = """\
import faulthandler as _slt_fh, signal as _slt_signal, warnings as _slt_warnings
_slt_fh.register(_slt_signal.SIGUSR1, file=open({dump!r}, "w"), all_threads=True, chain=False)
for _slt_category in (DeprecationWarning, FutureWarning):
    _slt_warnings.filterwarnings("error", category=_slt_category, module=r"slt_companion(\\..*)?$")
del _slt_fh, _slt_signal, _slt_warnings, _slt_category
"""


@dataclass
class PageRun:
    """What happened when one page was executed.

    Attributes: ``path`` (the page), ``seconds`` (wall time of the execution, kernel start included),
    ``cached`` (True when the cache already held this page and nothing ran), ``error`` (None on success,
    else a report naming the cell, its line in the page, and the traceback or the kernel's stack).
    """

    path: Path
    seconds: float
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@functools.lru_cache(maxsize=None)
def book_config(root: Path = ROOT) -> dict:
    """``_config.yml``, read once."""
    import yaml

    return yaml.safe_load((root / "_config.yml").read_text()) or {}


def md_config(root: Path = ROOT):
    """MyST-Parser's configuration as ``_config.yml`` sets it (the reader needs it to split the page into cells)."""
    from myst_parser.config.main import MdParserConfig

    extensions = (book_config(root).get("parse") or {}).get("myst_enable_extensions") or []
    return MdParserConfig(enable_extensions=set(extensions))


def config_timeout(root: Path = ROOT) -> float:
    """``execute.timeout`` of ``_config.yml`` (the full-size build's per-cell timeout, seconds)."""
    return float((book_config(root).get("execute") or {}).get("timeout", 1200))


def read_page(path: Path, root: Path = ROOT):
    """The page as the notebook MyST-NB builds from it (same cells, same metadata, hence the same cache key)."""
    import nbformat
    from myst_nb.core.read import read_myst_markdown_notebook

    path = Path(path)
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"), config=md_config(root),
                                       add_source_map=True, path=str(path))


def _client_class():
    """nbclient's NotebookClient over IPC, with the stack dump on timeout (built lazily: nbclient is slow to import)."""
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    class PageClient(NotebookClient):
        def __init__(self, nb, *, socket_dir: str, dump_path: str, **kwargs):
            super().__init__(nb, **kwargs)
            self._socket_dir = socket_dir
            self._dump_path = dump_path

        def create_kernel_manager(self):
            # Unix-domain sockets under a private directory: absolute paths (the kernel runs in the page's
            # directory, not ours) that no other process can choose.
            self.km = AsyncKernelManager(kernel_name=self.kernel_name or "python3", transport="ipc",
                                         ip=os.path.join(self._socket_dir, "k"),
                                         connection_file=os.path.join(self._socket_dir, "kernel.json"))
            return self.km

        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            # nbclient's own SIGINT/SIGTERM handler shuts the kernel down and then goes on with the next page;
            # ours also records the signal, so that execute_page stops the whole run (Ctrl-C, a CI timeout).
            import asyncio

            loop = asyncio.get_event_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(signum, self._stop, signum)
                except (RuntimeError, NotImplementedError, ValueError):
                    pass  # not the main thread: nbclient's handlers (or none) stay
            for channel in (kc.shell_channel, kc.iopub_channel):   # a lost wake-up costs a second, not a timeout
                channel.get_msg = sliced_get_msg(channel.get_msg)
            msg_id = kc.execute(KERNEL_SETUP.format(dump=self._dump_path), silent=True, store_history=False)
            reply = await self.async_wait_for_reply(msg_id)
            if reply is None or reply["content"]["status"] != "ok":
                raise RuntimeError(f"the kernel set-up code failed: {reply and reply['content']}")
            return kc

        stopped_by: int | None = None

        def _stop(self, signum: int) -> None:
            import asyncio

            self.stopped_by = signum
            self._async_cleanup_kernel_future = asyncio.ensure_future(self._async_cleanup_kernel())

        def kernel_stack(self) -> str:
            """Ask the kernel for its Python stack (SIGUSR1 -> faulthandler) and return what it wrote."""
            process = getattr(getattr(self.km, "provisioner", None), "process", None)
            if process is None or process.poll() is not None:
                return "(the kernel process is gone: no stack)"
            os.kill(process.pid, signal.SIGUSR1)  # the kernel alone, not its process group
            deadline = time.monotonic() + 5
            text = ""
            while time.monotonic() < deadline:
                time.sleep(0.2)
                text = Path(self._dump_path).read_text(errors="replace")
                if text.strip():
                    time.sleep(0.2)  # let it finish writing
                    return Path(self._dump_path).read_text(errors="replace")
            return "(the kernel wrote no stack within 5 s)"

        async def _async_handle_timeout(self, timeout, cell=None):
            raise CellTimeoutError(
                f"no reply from the kernel within the cell timeout of {timeout:g} s (a hang, or a cell too slow "
                f"for its budget).\n--- the cell:\n{cell.source if cell is not None else '?'}\n"
                f"--- the kernel's Python stack at the timeout (main thread first, most recent call first):\n"
                f"{_main_thread_first(self.kernel_stack())}")

    return PageClient


#: longest single wait on a kernel socket (seconds); see :func:`sliced_get_msg`
POLL_SLICE_S = 1.0


def sliced_get_msg(get_msg, slice_s: float = POLL_SLICE_S):
    """Wrap an async channel's ``get_msg(timeout)`` so that it waits in slices of at most ``slice_s`` seconds.

    Why: pyzmq's asyncio poller waits for the socket's file descriptor, which ZeroMQ signals edge-triggered; a
    wake-up that is lost (a message that arrives while the edge is being consumed) leaves the poll asleep until
    its timeout, when pyzmq polls once more, finds the message and returns it as if nothing had happened. With
    nbclient's single wait of a whole cell timeout that was a silent stall of exactly one cell timeout before the
    page went on and succeeded (seen four times: 102 s = 90 + 12, 354 s = 300 + 54, 1213 s = 1200 + 13, 1206 s =
    1200 + 6). Waiting in short slices bounds the cost of a lost wake-up by ``slice_s``; the overall ``timeout``
    (``None``: for ever) and the ``Empty`` it raises are unchanged."""
    from queue import Empty

    async def get(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            left = slice_s if deadline is None else max(0.0, min(slice_s, deadline - time.monotonic()))
            try:
                return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    return get


def _main_thread_first(dump: str) -> str:
    """faulthandler lists the current (main) thread last; the reader wants it first."""
    blocks = dump.strip().split("\n\n")
    main = [b for b in blocks if b.startswith("Current thread")]
    return "\n\n".join(main + [b for b in blocks if not b.startswith("Current thread")])


def _failing_cell(nb) -> str:
    """'cell K (line L of the page)' for the first code cell whose outputs hold an error, or the last one run."""
    source_map = nb.metadata.get("source_map")
    failed = None
    code = [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    for number, (index, cell) in enumerate(code, start=1):
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            failed = number, index
            break
        if cell.get("execution_count") is not None:
            failed = number, index  # the last cell that started; a timed-out cell has a count, no error output
    if failed is None:
        return "before the first code cell (kernel start or set-up)"
    number, index = failed
    line = f" (line {source_map[index] + 1} of the page)" if source_map else ""
    return f"code cell {number} of {len(code)}{line}"


def execute_page(path: Path, *, cache_dir: Path | None = None, timeout: float = 1200, root: Path = ROOT,
                 force: bool = False) -> PageRun:
    """Execute one notebook page in its own directory, over IPC, with a per-cell ``timeout`` (seconds).

    With ``cache_dir``, a page whose code is already cached there is not run again (unless ``force``), and a
    successful run is stored there as Jupyter Book would store it (``execution_seconds`` in its data)."""
    path = Path(path).resolve()
    nb = read_page(path, root)
    cache = None
    if cache_dir is not None:
        from jupyter_cache import get_cache

        cache = get_cache(str(cache_dir))
        if not force:
            try:
                cache.match_cache_notebook(nb)
                return PageRun(path, 0.0, cached=True)
            except KeyError:
                pass
    start = time.perf_counter()
    error = None
    with tempfile.TemporaryDirectory(prefix="slt-nb-") as tmp:
        dump = os.path.join(tmp, "stack.txt")
        client = _client_class()(nb, socket_dir=tmp, dump_path=dump, timeout=max(1, math.ceil(timeout)), kernel_name="python3",
                                 allow_errors=False, record_timing=True,   # per-cell times: stored in the record data
                                 resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(cwd=str(path.parent), env=kernel_env())
        except Exception as err:  # nbclient's CellExecutionError / CellTimeoutError / DeadKernelError, or set-up
            if client.stopped_by is not None:  # the kernel is already shut down; stop here, not at the next page
                raise KeyboardInterrupt(f"stopped by signal {client.stopped_by} while executing {path}") from err
            error = (f"{path.relative_to(root) if path.is_relative_to(root) else path}: failed at "
                     f"{_failing_cell(nb)}: {type(err).__name__}\n{err}")
            if not str(err).strip():
                error += traceback.format_exc()
            error = ANSI.sub("", error)
    seconds = time.perf_counter() - start
    if error is None and cache is not None:
        from jupyter_cache.base import CacheBundleIn

        # per-cell times go into the record's data, not the cells: jupyter-cache hashes cell metadata, and a cell
        # carrying nbclient's timing would no longer match its source (Jupyter Book would execute it again)
        cell_seconds = [_cell_seconds(c.metadata.pop("execution", {})) for c in nb.cells if c.cell_type == "code"]
        store_execution(cache, CacheBundleIn(nb, str(path), data={"execution_seconds": seconds,
                                                                  "cell_seconds": cell_seconds}))
    return PageRun(path, seconds, error=error)


def store_execution(cache, bundle) -> None:
    """Store one executed notebook in the jupyter-cache ``cache``, holding an exclusive lock on
    ``<cache.path>/nbexec.lock`` while it writes.

    jupyter-cache is not safe for two writers: after each write it trims the cache to its size limit by listing
    the records to keep and then, in a second query, every record not in that list; a record another process
    commits between the two queries is deleted (folder and row). With ``--jobs 2`` a page ran, ended "ok" and
    was then missing from the cache (seen once in CI; two processes writing 40 records each kept 48-76 of the
    80). Writers that take the lock cannot interleave."""
    import fcntl

    cache.path.mkdir(parents=True, exist_ok=True)
    with open(cache.path / "nbexec.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cell_seconds(execution: dict) -> float | None:
    """Seconds from nbclient's ``execute_input`` to ``execute_reply`` timestamps (None if absent)."""
    import datetime

    try:
        start, end = (datetime.datetime.fromisoformat(execution[k].replace("Z", "+00:00"))
                      for k in ("iopub.execute_input", "shell.execute_reply"))
    except (KeyError, ValueError):
        return None
    return (end - start).total_seconds()


def notebook_pages(root: Path = ROOT) -> list[Path]:
    """Every notebook page of _toc.yml, in reading order."""
    from notebooks import is_notebook, source_of, toc_docnames

    return [source_of(d, root) for d in toc_docnames(root) if is_notebook(source_of(d, root))]


def child_command(page, *, cache_dir=None, timeout: float, force: bool = False) -> list[str]:
    """The command line that executes one page in a child process of its own (this file's CLI)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--timeout", str(timeout), str(page)]
    if cache_dir is not None:
        cmd[2:2] = ["--cache", str(cache_dir)]
    if force:
        cmd.append("--force")
    return cmd


def child_env(jobs: int) -> dict:
    """The environment of a page run beside ``jobs - 1`` others: each kernel gets its share of the cores for its
    BLAS/OpenMP threads (set before numpy/torch start). Two kernels with a full-size thread pool each on two cores
    slowed a numpy-heavy page twenty-fold (busy-waiting BLAS threads), 60 s to 1,213 s in one build."""
    share = str(max(1, usable_cores() // max(1, jobs)))
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, share)
    return env


#: memory set aside for each page by ``--jobs auto``: the largest peak resident size of a page's kernel in a full-size
#: build (``VmHWM``; the language-model chapter's, 2.99 GiB, in the fresh-clone build at 8fa2354; every other page
#: under 1.4 GiB) and half a GiB for the processes beside it (torch.compile's workers)
PAGE_MEMORY = 7 * 2**29


def available_memory() -> int | None:
    """Bytes of memory available to new processes (``MemAvailable`` of ``/proc/meminfo``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: ``auto_jobs(memory=...)`` default: read the available memory (:func:`available_memory`)
MEASURE = object()


def auto_jobs(num_pages: int, *, cores: int | None = None, memory=MEASURE) -> int:
    """``--jobs auto``: one page per core, no more pages than :data:`PAGE_MEMORY` each fits in the available memory
    (``memory`` bytes, read from the OS by default; ``None``: unknown, not a limit), and no more than there are
    pages. Every page's kernel then runs single-threaded (:func:`child_env`), which is fastest for the book's small
    models. On the book's 2-core machine that is 2, the setting its recorded build times were measured with (not
    measured on more cores)."""
    cores = usable_cores() if cores is None else max(1, int(cores))
    memory = available_memory() if memory is MEASURE else memory
    by_memory = cores if memory is None else max(1, int(memory) // PAGE_MEMORY)
    return max(1, min(int(num_pages), cores, by_memory))


def jobs_arg(text: str):
    """``--jobs``: a positive whole number, or ``auto`` (:func:`auto_jobs`)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be a positive whole number or 'auto', got {text!r}")
    return jobs


def kernel_env() -> dict:
    """The environment a page's kernel starts with: this process's, on tcmalloc where it is installed
    (:func:`slt_companion.allocator.preload_env`; ``SLT_MALLOC=system`` turns it off). The same numbers, bit for bit;
    the book's work ran 1.13-1.19 times faster alone (``benchmarks/allocator.py``). Progress bars off
    (``TQDM_DISABLE=1``, unless set): in the stored outputs of the built book a bar is frozen where the run left it
    ("25% 9856/40000") and reads like an aborted run; a reader running the notebook sees them."""
    from slt_companion.allocator import preload_env

    env = preload_env(os.environ)
    env.setdefault("TQDM_DISABLE", "1")
    return env


def prepare_cache(cache_dir) -> None:
    """Create the jupyter-cache database in ``cache_dir`` once, before child processes open it: children that all
    find it missing race to create its tables, and the loser fails with "table settings already exists" (seen in
    a fresh-clone ``make book``, on the first two pages)."""
    from jupyter_cache import get_cache

    get_cache(str(cache_dir)).db        # creates <cache_dir>/global.db and its tables


def longest_first(pages, times_file: Path | None = None) -> list:
    """``pages`` in the order ``--jobs`` starts them: longest first by the run times recorded for this mode
    (``SLT_QUICK``) in ``times_file`` (default ``notebooks.RUN_TIMES``, the file ``exec-table --record`` writes),
    pages with no record before all others (they may be long).
    With two workers, reading order let the longest page (transient_ridge, about 20 min) start late and run alone at
    the end; longest-first shortens a full build's execution by about 77 s of the 41 min (computed from the
    recorded times). Without a readable record the order is unchanged."""
    import json

    from notebooks import RUN_TIMES

    try:
        quick = os.environ.get("SLT_QUICK", "").strip().lower() in ("1", "true", "yes", "on")   # as config.QUICK
        mode = "quick" if quick else "full"
        times = json.loads(Path(RUN_TIMES if times_file is None else times_file).read_text())[mode]["pages"]
    except (OSError, ValueError, KeyError, TypeError):
        return list(pages)

    def key(page):
        p = Path(page).resolve()
        doc = (p.relative_to(ROOT) if p.is_relative_to(ROOT) else p).with_suffix("").as_posix()
        t = times.get(doc)
        return (0, 0.0) if t is None else (1, -float(t))

    return sorted(pages, key=key)     # stable: equal keys keep reading order


class PageProcesses:
    """Pages executed each in a child process of this file's CLI (its own kernel): the mechanism of ``--jobs`` and
    of the background pages of `make test` (tests/conftest.py). The children's environment is :func:`child_env`
    taken once, when the runner is made, so that a caller changing ``os.environ`` meanwhile (a unit test's
    ``monkeypatch.setenv`` beside the pages) does not reach them; :meth:`stop` ends the children still running and
    starts no more. ``new_session``: children in a session of their own, stopped by the caller's signal handler
    rather than by the terminal's Ctrl-C. ``command`` and ``popen`` stand in for :func:`child_command` and
    ``subprocess.Popen`` in tests."""

    def __init__(self, jobs: int, *, cache_dir=None, timeout: float, force: bool = False, cwd=None,
                 new_session: bool = False, command=None, popen=None):
        import subprocess
        import threading

        self.cache_dir, self.timeout, self.force = cache_dir, timeout, force
        self.cwd, self.new_session = cwd, new_session
        self.command, self.popen = command or child_command, popen or subprocess.Popen
        self.env = child_env(jobs)
        self.lock, self.stopping, self.children = threading.Lock(), threading.Event(), []

    def run(self, page) -> tuple[int | None, str]:
        """Execute ``page`` in a child process: ``(returncode, output)``, or ``(None, "")`` once :meth:`stop` came."""
        import subprocess

        cmd = self.command(page, cache_dir=self.cache_dir, timeout=self.timeout, force=self.force)
        with self.lock:              # stop() holds it while it sets `stopping`: no child starts after stop()
            if self.stopping.is_set():
                return None, ""
            proc = self.popen(cmd, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=self.new_session, env=self.env)
            self.children.append(proc)
        out, _ = proc.communicate()
        return proc.returncode, out

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            for proc in self.children:
                if proc.poll() is None:
                    proc.terminate()     # SIGTERM: the child's handler shuts its kernel down


def _main_parallel(pages, args, timeout: float) -> int:
    """``--jobs N``: every page in a child ``nbexec.py`` process, N at a time; SIGTERM/Ctrl-C stops them all."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    if args.cache is not None:
        prepare_cache(args.cache)
    # children in sessions of their own: our handler, not the terminal, stops them
    runner = PageProcesses(args.jobs, cache_dir=args.cache, timeout=timeout, force=args.force, new_session=True)
    printing = threading.Lock()

    def one(page):
        returncode, out = runner.run(page)
        with printing:
            print(out, end="", flush=True)
        return page, returncode

    def stop(signum, frame):
        runner.stop()
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(one, longest_first(pages)))
    except KeyboardInterrupt as why:
        print(f"execute: stopped ({why}); the remaining pages were not run", flush=True)
        return 130
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if any(rc == 130 for _, rc in results):
        return 130
    failed = [page for page, rc in results if rc not in (0, None)]
    if failed:
        print(f"execute: {len(failed)} page(s) failed: " + ", ".join(map(str, failed)))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to execute (default: every notebook page)")
    parser.add_argument("--cache", type=Path, help="jupyter-cache directory to read and fill")
    parser.add_argument("--timeout", type=float, default=None,
                        help="per-cell timeout in seconds (default: execute.timeout of _config.yml)")
    parser.add_argument("--force", action="store_true", help="execute even the pages already in the cache")
    parser.add_argument("--jobs", type=jobs_arg, default=1,
                        help="pages executed at once, each in a child process of its own (default 1); 'auto': one "
                             "per core, as many as the memory holds (make book)")
    args = parser.parse_args(argv)
    pages = args.pages or notebook_pages()
    if args.jobs == "auto":
        cores = usable_cores()
        args.jobs = auto_jobs(len(pages), cores=cores)
        print(f"execute: {len(pages)} page(s), {args.jobs} at a time (--jobs auto: {cores} core(s))", flush=True)
    timeout = args.timeout if args.timeout is not None else config_timeout()
    if args.jobs > 1 and len(pages) > 1:
        return _main_parallel(pages, args, timeout)
    failed = []
    for page in pages:
        print(f"execute: {page} ...", flush=True)
        try:
            run = execute_page(page, cache_dir=args.cache, timeout=timeout, force=args.force)
        except KeyboardInterrupt as stop:
            print(f"execute: {stop or 'interrupted'}; the remaining pages were not run", flush=True)
            return 130
        status = "cached" if run.cached else ("ok" if run.ok else "FAILED")
        print(f"execute: {page}: {status}" + ("" if run.cached else f" in {run.seconds:.1f} s"), flush=True)
        if not run.ok:
            print(run.error, flush=True)
            failed.append(page)
    if failed:
        print(f"execute: {len(failed)} page(s) failed: " + ", ".join(map(str, failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
