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


@pytest.fixture(scope="session")
def quick_book() -> Path:
    """Build the whole book with ``-W`` in quick mode into _build/quick; return the HTML folder.

    A fresh forced build every session (its execution cache is thrown away), so quick results never
    mix with the full-size cache in _build/.jupyter_cache.
    """
    if os.environ.get("SLT_QUICK") not in {"1", "true", "yes", "on"}:
        pytest.fail("the book tests need SLT_QUICK=1 (run them through `make test`)")
    shutil.rmtree(QUICK_OUT, ignore_errors=True)
    env = dict(os.environ, SLT_CACHE_DIR=str(QUICK_OUT / "slt_cache"))
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", "-W", "--keep-going", "--path-output", str(QUICK_OUT), "."],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (QUICK_OUT / "build.log").parent.mkdir(parents=True, exist_ok=True)
    (QUICK_OUT / "build.log").write_text(log)
    html = QUICK_OUT / "_build" / "html"
    if proc.returncode != 0:
        reports = "".join(f"\n--- {p}\n{p.read_text()[-4000:]}" for p in sorted((html / "reports").glob("*")))
        pytest.fail(f"quick book build failed (exit {proc.returncode}); full log in {QUICK_OUT / 'build.log'}\n"
                    f"{log[-6000:]}{reports}")
    return html
