"""Shared fixtures: every notebook page executed once, the quick build of the whole book that renders those
executions, and a time budget for every page.

`make test` runs ``pytest tests`` with ``SLT_QUICK=1``:
- ``tests/test_*.py``: package unit tests;
- ``tests/test_notebooks.py``: every notebook page of ``_toc.yml`` executed once by ``tests/nbexec.py``
  (kernels over IPC, a per-cell timeout that dumps the kernel's stack) into the quick build's jupyter-cache;
- tests that take the ``quick_book`` fixture, last: the quick ``-W`` build (which finds every page in that
  cache and executes none) and browser tests of the built pages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slt_companion.config import QUICK

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/notebooks.py, tests/nbexec.py: helper modules

#: wall-clock budget per notebook page in quick mode (seconds; override with SLT_PAGE_BUDGET_S). A page over it
#: is flagged in the terminal summary but does not fail: machines here are noisy (one CI run took a 13 s page to
#: 102 s), and speed is measured by benchmarks, not timed tests (DEVELOPERS.md)
PAGE_BUDGET_S = float(os.environ.get("SLT_PAGE_BUDGET_S", "90"))
#: per-cell timeout in quick mode, the hang guard: a cell that runs this long fails with the kernel's stack. (Four
#: page runs once took exactly one cell timeout longer than usual and then succeeded: a ZeroMQ wake-up lost by
#: pyzmq's asyncio poll, now bounded to a second by ``nbexec.sliced_get_msg``.)
CELL_TIMEOUT_S = float(os.environ.get("SLT_CELL_TIMEOUT_S", "120"))

QUICK_OUT = ROOT / "_build" / "quick"
#: where the quick build's jupyter-book looks for executed notebooks (<path-output>/_build/.jupyter_cache)
QUICK_EXEC_CACHE = QUICK_OUT / "_build" / ".jupyter_cache"
#: the quick build is killed and the book tests fail after this long (seconds); with every page already
#: executed it only renders (about two minutes on 2 cores)
QUICK_BUILD_TIMEOUT_S = float(os.environ.get("SLT_QUICK_BUILD_TIMEOUT_S", "900"))

#: seconds per notebook page, filled by tests/test_notebooks.py, shown in the terminal summary
page_seconds: dict[str, float] = {}
_quick_build_returncode: int | None = None  # set once the build has run; read by the terminal summary


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    if page_seconds:
        tr.section(f"notebook pages: wall time of their one execution (budget {PAGE_BUDGET_S:.0f} s each, "
                   f"cell timeout {CELL_TIMEOUT_S:.0f} s, SLT_QUICK=1)")
        for path, secs in sorted(page_seconds.items(), key=lambda kv: -kv[1]):
            flag = "  OVER BUDGET" if secs > PAGE_BUDGET_S else ""
            tr.write_line(f"{secs:7.1f} s  {path}{flag}")
        tr.write_line(f"{sum(page_seconds.values()):7.1f} s  total")
    if _quick_build_returncode == 0:
        from notebooks import record_times

        record_times(QUICK_OUT / "_build", "quick")  # shown by the {runtime} role in each chapter


def pytest_collection_modifyitems(session, config, items):
    """Run the tests of the built book last, after the unit tests and the notebooks (failures there come first)."""
    items.sort(key=lambda item: "quick_book" in getattr(item, "fixturenames", ()))  # stable sort


@pytest.fixture(scope="session")
def quick_exec_cache() -> Path:
    """The quick build's jupyter-cache, emptied once per session (quick pages never mix with full-size ones)."""
    if not QUICK:
        pytest.fail("notebook and book tests need SLT_QUICK=1 (run them through `make test`)")
    shutil.rmtree(QUICK_OUT, ignore_errors=True)
    QUICK_EXEC_CACHE.parent.mkdir(parents=True)
    return QUICK_EXEC_CACHE


#: notebook pages executed at once by ``page_runs`` (each in a process of its own); SLT_TEST_JOBS overrides
TEST_JOBS = max(1, int(os.environ.get("SLT_TEST_JOBS", str(min(2, os.cpu_count() or 1)))))


def _run_page_process(page: Path, cache_dir: Path) -> dict:
    """Execute one page with ``tests/nbexec.py`` in a child process (its own kernel, IPC sockets, per-cell
    timeout with the kernel's stack); return ``{"ok", "seconds", "error"}``."""
    import re
    import time

    start = time.perf_counter()
    from nbexec import child_command, child_env

    proc = subprocess.run(child_command(page, cache_dir=cache_dir, timeout=CELL_TIMEOUT_S, force=True),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=child_env(TEST_JOBS))
    out = proc.stdout
    m = re.search(r": ok in ([0-9.]+) s", out)
    seconds = float(m.group(1)) if m else time.perf_counter() - start
    if proc.returncode == 130:
        raise KeyboardInterrupt(f"stopped while executing {page}")
    return {"ok": proc.returncode == 0, "seconds": seconds, "error": None if proc.returncode == 0 else out[-12000:]}


@pytest.fixture(scope="session")
def page_runs(request, quick_exec_cache) -> dict:
    """Every notebook page selected for this session, executed once, ``TEST_JOBS`` at a time (two on two cores:
    the pages are mostly single-threaded), into ``quick_exec_cache``; ``{page path: result}``."""
    from concurrent.futures import ThreadPoolExecutor

    pages = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "page" in callspec.params and item.originalname == "test_page_executes":
            pages.append(Path(callspec.params["page"]))
    with ThreadPoolExecutor(max_workers=TEST_JOBS) as pool:
        futures = {page: pool.submit(_run_page_process, page, quick_exec_cache) for page in pages}
        return {page: fut.result() for page, fut in futures.items()}


@pytest.fixture(scope="session")
def quick_book(quick_exec_cache) -> Path:
    """The whole book built with ``-W`` in quick mode into _build/quick; return the HTML folder.

    It runs after tests/test_notebooks.py (see ``pytest_collection_modifyitems``), which left every page's
    execution in ``quick_exec_cache``: the build renders them and starts no kernel (``test_book.py`` checks
    that). A page the notebook tests did not run (``pytest -k``) is executed by the build itself.
    """
    global _quick_build_returncode
    # The same result cache (SLT_CACHE_DIR) as the notebook executions before it.
    env = dict(os.environ)
    env.setdefault("SLT_CACHE_DIR", str(QUICK_OUT / "slt_cache"))
    jb = Path(sys.executable).with_name("jupyter-book")
    with open(QUICK_OUT / "build.log", "w") as log_file:
        try:
            returncode = subprocess.run([str(jb), "build", "-W", "--keep-going", "--path-output", str(QUICK_OUT), "."],
                                        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                        timeout=QUICK_BUILD_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            pytest.fail(f"quick book build still running after {QUICK_BUILD_TIMEOUT_S:.0f} s; "
                        f"see {QUICK_OUT / 'build.log'}; raise SLT_QUICK_BUILD_TIMEOUT_S if it is just slow")
    _quick_build_returncode = returncode
    log = (QUICK_OUT / "build.log").read_text()
    html = QUICK_OUT / "_build" / "html"
    if returncode != 0:
        reports = "".join(f"\n--- {p}\n{p.read_text()[-4000:]}" for p in sorted((html / "reports").glob("*")))
        pytest.fail(f"quick book build failed (exit {returncode}); full log in {QUICK_OUT / 'build.log'}\n"
                    f"{log[-6000:]}{reports}")
    return html
