"""Shared fixtures: every notebook page executed once, the quick build of the whole book that renders those
executions, and a time budget for every page.

`make test` runs ``pytest tests`` with ``SLT_QUICK=1``:
- ``tests/test_*.py``: package unit tests;
- ``tests/test_notebooks.py``: every notebook page of ``_toc.yml`` executed once by ``tests/nbexec.py``
  (kernels over IPC, a per-cell timeout that dumps the kernel's stack) into the quick build's jupyter-cache;
- tests that take the ``quick_book`` fixture, last: the quick ``-W`` build (which finds every page in that
  cache and executes none) and browser tests of the built pages.

The page executions start in the background as soon as the tests are collected, and the unit tests run beside
them (they come first); the notebook tests then wait for the pages' results. On two cores this overlap saves the
unit tests' wall time minus what they take from the pages: `make test` went from 10:49 to 8:47 on a slow day
(with the browser tests' second load of every page removed). A page's quick time (the terminal summary, the
chapters' "with SLT_QUICK=1") is therefore measured beside the unit tests, about 1.5x its time alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slt_companion.config import QUICK

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/notebooks.py, tests/nbexec.py: helper modules

#: wall-clock budget per notebook page in quick mode (seconds; override with SLT_PAGE_BUDGET_S). A page over it
#: is flagged in the terminal summary but does not fail: machines here are noisy (one CI run took a 13 s page to
#: 102 s), and speed is measured by benchmarks, not timed tests (DEVELOPERS.md)
#: 135 s since the pages run beside the unit tests (1.5x the 90 s of pages run alone; the longest quick page took
#: 100 s beside them in a fresh-clone CI run on a slow day, 44 s alone on the same day)
PAGE_BUDGET_S = float(os.environ.get("SLT_PAGE_BUDGET_S", "135"))
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


def _phase(item) -> int:
    """0: unit tests (they run while the pages execute in the background), 1: the notebook pages' results,
    2: tests of the built book (failures in the first two come first)."""
    if "quick_book" in getattr(item, "fixturenames", ()):
        return 2
    return 1 if getattr(item, "originalname", None) == "test_page_executes" else 0


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_phase)  # stable sort: each phase keeps its file order


def pytest_collection_finish(session):
    """Start executing the selected notebook pages in the background (see ``page_runs``)."""
    global _background
    pages = _selected_pages(session.items)
    if pages and QUICK and not session.config.option.collectonly:
        _background = _BackgroundPages(pages, _reset_quick_out())


def pytest_sessionfinish(session, exitstatus):
    """Stop page executions still running (a failure with ``-x``, Ctrl-C): no kernel outlives the session."""
    if _background is not None:
        _background.stop()


_quick_out_reset = False


def _reset_quick_out() -> Path:
    """Empty _build/quick once per session (quick pages never mix with full-size ones); return the jupyter-cache
    folder, its database created (children that all find it missing race to create its tables)."""
    global _quick_out_reset
    if not _quick_out_reset:
        from nbexec import prepare_cache

        shutil.rmtree(QUICK_OUT, ignore_errors=True)
        QUICK_EXEC_CACHE.parent.mkdir(parents=True)
        prepare_cache(QUICK_EXEC_CACHE)
        _quick_out_reset = True
    return QUICK_EXEC_CACHE


@pytest.fixture(scope="session")
def quick_exec_cache() -> Path:
    """The quick build's jupyter-cache, emptied once per session."""
    if not QUICK:
        pytest.fail("notebook and book tests need SLT_QUICK=1 (run them through `make test`)")
    return _reset_quick_out()


#: notebook pages executed at once by ``page_runs`` (each in a process of its own); SLT_TEST_JOBS overrides
TEST_JOBS = max(1, int(os.environ.get("SLT_TEST_JOBS", str(min(2, os.cpu_count() or 1)))))


def _selected_pages(items) -> list[Path]:
    """The pages of the selected ``test_page_executes`` tests, in test order."""
    pages = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "page" in callspec.params and item.originalname == "test_page_executes":
            pages.append(Path(callspec.params["page"]))
    return pages


class _BackgroundPages:
    """Every selected page executed once by ``tests/nbexec.py`` in a child process of its own (its own kernel, IPC
    sockets, per-cell timeout with the kernel's stack; ``nbexec.PageProcesses``), ``TEST_JOBS`` at a time, longest
    first, into ``cache_dir``; started at collection, while the unit tests run. ``results()`` waits for them:
    ``{page: {"ok", "seconds", "error"}}``; ``stop()`` ends the children still running. The children get the
    environment of collection (a ``monkeypatch.setenv`` of SLT_CACHE_DIR by a unit test once sent a page's results
    into that test's temporary cache). ``command``, ``popen``: stand-ins for tests."""

    def __init__(self, pages: list[Path], cache_dir: Path, *, command=None, popen=None):
        from concurrent.futures import ThreadPoolExecutor

        from nbexec import PageProcesses, longest_first

        self.runner = PageProcesses(TEST_JOBS, cache_dir=cache_dir, timeout=CELL_TIMEOUT_S, force=True, cwd=ROOT,
                                    command=command, popen=popen)
        # the unit tests beside the pages get the cores the pages leave (at least one): torch's default pool of
        # one thread per core, spinning beside two single-threaded kernels on two cores, slowed some pages 2x
        self.main_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - TEST_JOBS))
        self.pool = ThreadPoolExecutor(max_workers=TEST_JOBS, thread_name_prefix="page")
        self.futures = {page: self.pool.submit(self._one, page) for page in longest_first(pages)}

    def _one(self, page: Path) -> dict:
        import re
        import time

        start = time.perf_counter()
        returncode, out = self.runner.run(page)
        if returncode is None:
            return {"ok": False, "seconds": 0.0, "error": "not executed: the test session stopped first"}
        m = re.search(r": ok in ([0-9.]+) s", out)
        seconds = float(m.group(1)) if m else time.perf_counter() - start
        if returncode == 130 or self.runner.stopping.is_set():
            return {"ok": False, "seconds": seconds, "error": f"stopped while executing {page}\n{out[-4000:]}"}
        return {"ok": returncode == 0, "seconds": seconds, "error": None if returncode == 0 else out[-12000:]}

    def results(self) -> dict:
        try:
            return {page: fut.result() for page, fut in self.futures.items()}
        finally:
            torch.set_num_threads(self.main_threads)

    def stop(self) -> None:
        torch.set_num_threads(self.main_threads)
        self.runner.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)


_background: _BackgroundPages | None = None


@pytest.fixture(scope="session")
def page_runs(quick_exec_cache) -> dict:
    """Every notebook page selected for this session, executed once (in the background since collection, see
    ``_BackgroundPages``); ``{page path: result}``."""
    if _background is None:
        pytest.fail("the selected pages were not started at collection (conftest.pytest_collection_finish)",
                    pytrace=False)
    return _background.results()


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
