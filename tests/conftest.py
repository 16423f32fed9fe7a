"""Shared fixtures: the quick build of the whole book, and a time budget for every notebook page.

`make test` runs ``pytest tests _build/nbval --nbval-lax`` with ``SLT_QUICK=1``:
- ``tests/test_*.py``: package unit tests, the quick ``-W`` build, browser tests of the built pages;
- ``_build/nbval/**.ipynb``: every notebook page of ``_toc.yml`` converted from MyST by
  ``tests/notebooks.py to-ipynb`` and executed cell by cell by nbval.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/notebooks.py is a helper module, not a package

#: wall-clock budget per notebook page under nbval in quick mode (seconds); override with SLT_PAGE_BUDGET_S
PAGE_BUDGET_S = float(os.environ.get("SLT_PAGE_BUDGET_S", "90"))

_page_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    """Sum the time nbval spends on each notebook (setup + call + teardown of each cell)."""
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _page_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _page_seconds:
        return
    tr = terminalreporter
    tr.section(f"notebook pages: wall time (budget {PAGE_BUDGET_S:.0f} s each, SLT_QUICK=1)")
    for path, secs in sorted(_page_seconds.items(), key=lambda kv: -kv[1]):
        flag = "  OVER BUDGET" if secs > PAGE_BUDGET_S else ""
        tr.write_line(f"{secs:7.1f} s  {path}{flag}")


def pytest_sessionfinish(session, exitstatus):
    over = {p: s for p, s in _page_seconds.items() if s > PAGE_BUDGET_S}
    if over and session.exitstatus == 0:
        session.exitstatus = 1  # a page over budget fails the run (reported in the summary above)


QUICK_OUT = ROOT / "_build" / "quick"

# The quick build executes every notebook again, so it runs in the background *while* pytest runs the unit
# tests and nbval: one thread each (two cores, two streams) roughly halves the wall time of `make test`.
# Notebook kernels started by nbval inherit this process's environment.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_build_proc: subprocess.Popen | None = None


def _start_quick_build() -> None:
    global _build_proc
    if _build_proc is not None:
        return
    shutil.rmtree(QUICK_OUT, ignore_errors=True)
    QUICK_OUT.mkdir(parents=True)
    env = dict(os.environ, SLT_CACHE_DIR=str(QUICK_OUT / "slt_cache"))
    jb = Path(sys.executable).with_name("jupyter-book")
    log = open(QUICK_OUT / "build.log", "w")
    _build_proc = subprocess.Popen([str(jb), "build", "-W", "--keep-going", "--path-output", str(QUICK_OUT), "."],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()


def _quick_mode() -> bool:
    return os.environ.get("SLT_QUICK") in {"1", "true", "yes", "on"}


def pytest_collection_modifyitems(session, config, items):
    """Run the tests of the built book last, so the background build overlaps everything else."""
    items.sort(key=lambda item: "quick_book" in getattr(item, "fixturenames", ()))  # stable sort


def pytest_collection_finish(session):
    """Start the quick book build as soon as we know a collected test needs it."""
    if _quick_mode() and any("quick_book" in getattr(item, "fixturenames", ()) for item in session.items):
        _start_quick_build()


def pytest_unconfigure(config):
    if _build_proc is not None and _build_proc.poll() is None:
        _build_proc.kill()


@pytest.fixture(scope="session")
def quick_book() -> Path:
    """The whole book built with ``-W`` in quick mode into _build/quick (started in the background at
    collection); return the HTML folder once the build has finished.

    A fresh forced build every session (its execution cache is thrown away), so quick results never
    mix with the full-size cache in _build/.jupyter_cache.
    """
    if not _quick_mode():
        pytest.fail("the book tests need SLT_QUICK=1 (run them through `make test`)")
    _start_quick_build()
    returncode = _build_proc.wait()
    log = (QUICK_OUT / "build.log").read_text()
    html = QUICK_OUT / "_build" / "html"
    if returncode != 0:
        reports = "".join(f"\n--- {p}\n{p.read_text()[-4000:]}" for p in sorted((html / "reports").glob("*")))
        pytest.fail(f"quick book build failed (exit {returncode}); full log in {QUICK_OUT / 'build.log'}\n"
                    f"{log[-6000:]}{reports}")
    return html
