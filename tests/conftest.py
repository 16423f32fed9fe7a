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

from slt_companion.config import QUICK

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/notebooks.py is a helper module, not a package

#: wall-clock budget per notebook page under nbval in quick mode (seconds); override with SLT_PAGE_BUDGET_S
PAGE_BUDGET_S = float(os.environ.get("SLT_PAGE_BUDGET_S", "90"))

_page_seconds: dict[str, float] = defaultdict(float)


class _PageTimer:
    """Sums the time nbval spends on each notebook (setup + call + teardown of each cell).

    Registered as a plugin rather than written as a conftest hook: a hook in tests/conftest.py only sees
    items under tests/, and the notebooks live in _build/nbval/."""

    @staticmethod
    def pytest_runtest_logreport(report):
        path = report.nodeid.split("::", 1)[0]  # relative to the repository (make test runs from there)
        if path.endswith(".ipynb"):
            _page_seconds[path] += report.duration


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("slt-page-timer"):
        config.pluginmanager.register(_PageTimer(), "slt-page-timer")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    if _quick_build_returncode == 0:
        from notebooks import exec_table, record_times

        tr.section("quick book build: execution time per page")
        for line in exec_table(QUICK_OUT / "_build").splitlines():
            tr.write_line(line)
        record_times(QUICK_OUT / "_build", "quick")  # shown by the {runtime} role in each chapter
    if not _page_seconds:
        return
    tr.section(f"notebook pages: wall time (budget {PAGE_BUDGET_S:.0f} s each, SLT_QUICK=1)")
    for path, secs in sorted(_page_seconds.items(), key=lambda kv: -kv[1]):
        flag = "  OVER BUDGET" if secs > PAGE_BUDGET_S else ""
        tr.write_line(f"{secs:7.1f} s  {path}{flag}")


def pytest_sessionfinish(session, exitstatus):
    over = {p: s for p, s in _page_seconds.items() if s > PAGE_BUDGET_S}
    if over and session.exitstatus == 0:
        session.exitstatus = 1  # a page over budget fails the run (reported in the summary above)


QUICK_OUT = ROOT / "_build" / "quick"
#: the quick build is killed and the book tests fail after this long (seconds)
QUICK_BUILD_TIMEOUT_S = float(os.environ.get("SLT_QUICK_BUILD_TIMEOUT_S", "900"))

# The quick build executes every notebook again, after nbval, never beside it: two notebook executions in two
# processes at once hung a kernel twice here (a suspected jupyter_client port race between processes).
_quick_build_returncode: int | None = None  # set once the build has run; read by the terminal summary


def pytest_collection_modifyitems(session, config, items):
    """Run the tests of the built book last, after the unit tests and the notebooks (failures there come first)."""
    items.sort(key=lambda item: "quick_book" in getattr(item, "fixturenames", ()))  # stable sort


@pytest.fixture(scope="session")
def quick_book() -> Path:
    """The whole book built with ``-W`` in quick mode into _build/quick; return the HTML folder.

    A fresh build every session into its own folder (its execution cache is thrown away), so quick pages
    never mix with the full-size execution cache in _build/.jupyter_cache. It runs after the notebooks
    (see ``pytest_collection_modifyitems``) and shares their ``SLT_CACHE_DIR``.
    """
    global _quick_build_returncode
    if not QUICK:
        pytest.fail("the book tests need SLT_QUICK=1 (run them through `make test`)")
    shutil.rmtree(QUICK_OUT, ignore_errors=True)
    QUICK_OUT.mkdir(parents=True)
    # The same result cache as the nbval run that came before (quick mode is part of every cache key, so
    # nothing mixes with full-size results): long computations are not repeated, only kernels and figures.
    env = dict(os.environ)
    env.setdefault("SLT_CACHE_DIR", str(QUICK_OUT / "slt_cache"))
    jb = Path(sys.executable).with_name("jupyter-book")
    with open(QUICK_OUT / "build.log", "w") as log_file:
        try:
            returncode = subprocess.run([str(jb), "build", "-W", "--keep-going", "--path-output", str(QUICK_OUT), "."],
                                        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                        timeout=QUICK_BUILD_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            pytest.fail(f"quick book build still running after {QUICK_BUILD_TIMEOUT_S:.0f} s (a hung kernel?); "
                        f"see {QUICK_OUT / 'build.log'}; raise SLT_QUICK_BUILD_TIMEOUT_S if it is just slow")
    _quick_build_returncode = returncode
    log = (QUICK_OUT / "build.log").read_text()
    html = QUICK_OUT / "_build" / "html"
    if returncode != 0:
        reports = "".join(f"\n--- {p}\n{p.read_text()[-4000:]}" for p in sorted((html / "reports").glob("*")))
        pytest.fail(f"quick book build failed (exit {returncode}); full log in {QUICK_OUT / 'build.log'}\n"
                    f"{log[-6000:]}{reports}")
    return html
