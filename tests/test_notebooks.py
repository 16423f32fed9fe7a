"""Every notebook page of the book executed once (SLT_QUICK=1), one test per page, and the executor itself:
kernels over IPC that cannot collide, a timeout that reports where the kernel hung, an error that names the cell.

The executions land in the quick build's jupyter-cache (``quick_exec_cache``), from which the quick ``-W``
build renders the pages without running them again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, page_seconds
from nbexec import execute_page, notebook_pages

PAGES = notebook_pages()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT).with_suffix("")) for p in PAGES])
def test_page_executes(page, page_runs):
    run = page_runs[page]          # executed once, two pages at a time, by the session fixture
    page_seconds[str(page.relative_to(ROOT))] = run["seconds"]
    if not run["ok"]:
        pytest.fail(run["error"], pytrace=False)


# ---- the executor, on small pages of its own ------------------------------------------------------------

HEADER = textwrap.dedent("""\
    ---
    jupytext:
      text_representation:
        format_name: myst
    kernelspec:
      display_name: Python 3
      language: python
      name: python3
    ---

    # A page
    """)


def _page(tmp_path: Path, name: str, *cells: str) -> Path:
    body = "".join(f"\nSome text.\n\n```{{code-cell}} ipython3\n{textwrap.dedent(c).strip()}\n```\n" for c in cells)
    path = tmp_path / f"{name}.md"
    path.write_text(HEADER + body)
    return path


def test_a_failing_cell_is_named_with_its_line(tmp_path):
    page = _page(tmp_path, "fails", "x = 1", "raise ValueError('the bad value')")
    run = execute_page(page, timeout=60)
    assert not run.ok
    assert "code cell 2 of 2" in run.error and "ValueError: the bad value" in run.error, run.error
    lines = page.read_text().splitlines()
    first_line = lines.index("raise ValueError('the bad value')") + 1  # the cell's first line, counted from 1
    assert f"(line {first_line} of the page)" in run.error, run.error
    assert "\x1b[" not in run.error  # no terminal colour codes in a failure message


def test_a_hang_fails_with_the_kernels_stack(tmp_path):
    page = _page(tmp_path, "hangs", """
        import time
        def wait_for_something_that_never_comes():
            time.sleep(120)
        wait_for_something_that_never_comes()
        """)
    run = execute_page(page, timeout=4)
    assert not run.ok and "CellTimeoutError" in run.error and "cell timeout of 4 s" in run.error, run.error
    assert "wait_for_something_that_never_comes" in run.error, run.error  # the kernel's stack, from faulthandler
    assert run.seconds < 60


def test_warnings_from_the_package_are_errors_in_pages(tmp_path):
    page = _page(tmp_path, "warns", """
        import warnings
        warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="slt_companion.llc")
        """)
    run = execute_page(page, timeout=60)
    assert not run.ok and "DeprecationWarning" in run.error


def test_the_cache_serves_a_page_once(tmp_path):
    page = _page(tmp_path, "once", "print(6 * 7)")
    first = execute_page(page, cache_dir=tmp_path / "cache", timeout=60)
    second = execute_page(page, cache_dir=tmp_path / "cache", timeout=60)
    assert first.ok and not first.cached and second.cached
    page.write_text(page.read_text().replace("6 * 7", "6 * 8"))  # code changed: executed again
    assert not execute_page(page, cache_dir=tmp_path / "cache", timeout=60).cached


def test_two_executions_at_once_in_two_processes(tmp_path):
    """Two pages executed at the same moment by two processes, each kernel checking that it talks over IPC
    (no TCP port that the other could take)."""
    check = """
        import json, time
        from ipykernel.connect import get_connection_info
        info = json.loads(get_connection_info())
        assert info["transport"] == "ipc", info
        time.sleep(2)
        print("done", info["ip"])
        """
    pages = [_page(tmp_path, f"p{i}", check, "print(sum(range(10**6)))") for i in range(2)]
    script = "import sys; sys.path.insert(0, 'tests'); from nbexec import main; sys.exit(main(sys.argv[1:]))"
    procs = [subprocess.Popen([sys.executable, "-c", script, "--timeout", "60", str(p)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in pages]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out
        assert ": ok in" in out, out


def test_parallel_pages_fill_an_empty_cache(tmp_path):
    """``--jobs 2`` into a cache that does not exist yet (a fresh clone's ``make book``): the database is created
    once before the children start, so none of them loses a race to create its tables, and every page is cached."""
    from jupyter_cache import get_cache

    from nbexec import prepare_cache

    prepare_cache(tmp_path / "made")
    assert (tmp_path / "made" / "global.db").exists()
    pages = [_page(tmp_path, f"q{i}", f"print({i})") for i in range(4)]
    script = "import sys; sys.path.insert(0, 'tests'); from nbexec import main; sys.exit(main(sys.argv[1:]))"
    cache = tmp_path / "cache"
    out = subprocess.run([sys.executable, "-c", script, "--timeout", "60", "--jobs", "2", "--cache", str(cache),
                          *map(str, pages)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(get_cache(str(cache)).list_cache_records()) == 4


STORE_MANY = """
import sys
sys.path.insert(0, "tests")
import nbformat as nbf
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from nbexec import store_execution
cache_dir, tag = sys.argv[1], sys.argv[2]
cache = get_cache(cache_dir)
for i in range(30):
    nb = nbf.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                       "language": "python"}})
    nb.cells.append(nbf.v4.new_code_cell(f"print('{tag}{i}')", execution_count=1))
    store_execution(cache, CacheBundleIn(nb, f"/pages/{tag}{i}.md"))
"""


def test_two_writers_lose_no_cache_record(tmp_path):
    """Two processes storing 30 executions each into one cache keep all 60. jupyter-cache alone is not safe for
    two writers (each write trims the cache in two queries and may delete the record the other just wrote: 48-76
    of 80 kept when tried); ``store_execution`` serialises the writes with a file lock."""
    from jupyter_cache import get_cache

    from nbexec import prepare_cache

    cache = tmp_path / "cache"
    prepare_cache(cache)
    procs = [subprocess.Popen([sys.executable, "-c", STORE_MANY, str(cache), tag], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for tag in "ab"]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    uris = sorted(r.uri for r in get_cache(str(cache)).list_cache_records())
    assert uris == sorted(f"/pages/{t}{i}.md" for t in "ab" for i in range(30))


def test_jobs_auto_is_one_page_per_core_within_memory():
    """``--jobs auto`` (make book): one page per core, capped by the memory (PAGE_MEMORY per page) and the number of
    pages; unknown memory is no cap; ``--jobs`` refuses what is neither a positive number nor ``auto``."""
    import argparse

    from nbexec import PAGE_MEMORY, auto_jobs, jobs_arg

    assert auto_jobs(23, cores=2, memory=20 * PAGE_MEMORY) == 2          # the book's machine: its measured setting
    assert auto_jobs(23, cores=16, memory=64 * PAGE_MEMORY) == 16
    assert auto_jobs(23, cores=16, memory=5 * PAGE_MEMORY + 1) == 5      # the memory holds five kernels
    assert auto_jobs(23, cores=16, memory=PAGE_MEMORY // 2) == 1         # never fewer than one
    assert auto_jobs(3, cores=16, memory=None) == 3                      # no more than the pages
    assert 1 <= auto_jobs(23) <= 23                                      # this machine, as measured here
    assert jobs_arg("auto") == "auto" and jobs_arg(" AUTO ") == "auto" and jobs_arg("3") == 3
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="--jobs must be"):
            jobs_arg(bad)


def test_parallel_pages_start_longest_first(tmp_path, monkeypatch):
    """``--jobs`` starts the pages with the longest recorded run time first (so the longest does not run alone at the
    end), pages with no record before them, ties in reading order; an unreadable record keeps reading order."""
    import json

    from nbexec import ROOT as NB_ROOT, longest_first

    times = tmp_path / "run_times.json"
    times.write_text(json.dumps({"full": {"pages": {"book/a": 5.0, "book/b": 50.0, "book/c": 5.0}},
                                 "quick": {"pages": {"book/a": 9.0, "book/b": 1.0, "book/c": 2.0}}}))
    pages = [NB_ROOT / "book" / f"{n}.md" for n in "abcd"]
    monkeypatch.delenv("SLT_QUICK", raising=False)
    assert [p.stem for p in longest_first(pages, times)] == ["d", "b", "a", "c"]
    monkeypatch.setenv("SLT_QUICK", "1")
    assert [p.stem for p in longest_first(pages, times)] == ["d", "a", "c", "b"]
    assert longest_first(pages, tmp_path / "missing.json") == pages
    times.write_text("{not json")
    assert longest_first(pages, times) == pages
    monkeypatch.delenv("SLT_QUICK")      # the default record is the book's: its longest full-size page goes first
    book = [NB_ROOT / "book" / "intro.md", NB_ROOT / "book" / "partIII_development" / "transient_ridge.md"]
    assert longest_first(book)[0].stem == "transient_ridge"


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_signal_stops_the_whole_run(tmp_path, jobs):
    """SIGTERM (a CI timeout) or Ctrl-C while a page runs stops the run and its kernel, not just that page --
    also with ``--jobs 2`` (``make book``), where the pages run in child processes."""
    import signal
    import time

    started = tmp_path / "first-page-started"
    slow = _page(tmp_path, "slow", f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(120)")
    slow2 = _page(tmp_path, "slow2", "import time\ntime.sleep(120)")
    marker = tmp_path / "second-page-ran"
    second = _page(tmp_path, "second", f"open({str(marker)!r}, 'w').close()")
    script = "import sys; sys.path.insert(0, 'tests'); from nbexec import main; sys.exit(main(sys.argv[1:]))"
    pages = [str(slow), str(second)] if jobs == 1 else [str(slow), str(slow2), str(second)]
    proc = subprocess.Popen([sys.executable, "-c", script, "--timeout", "200", "--jobs", str(jobs), *pages],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:  # the kernel sleeps in the first page's cell
        time.sleep(0.2)
    assert started.exists(), "the first page never started"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "the remaining pages were not run" in out and not marker.exists(), out


def test_a_lost_socket_wakeup_costs_a_second_not_a_cell_timeout(tmp_path, monkeypatch):
    """pyzmq's asyncio poll can miss ZeroMQ's edge-triggered wake-up and then sleep until its timeout, when it
    finds the message and returns it: with nbclient's one wait of a whole cell timeout that was a silent stall of
    exactly one cell timeout (seen four times). Simulate a wake-up lost on every long wait: the executor's
    ``sliced_get_msg`` waits at most a second at a time, so the page takes seconds, not the 40 s cell timeout."""
    import asyncio
    import time

    from jupyter_client.channels import AsyncZMQSocketChannel

    from nbexec import sliced_get_msg

    orig = AsyncZMQSocketChannel.get_msg

    async def lossy(self, timeout=None):
        if timeout is None or timeout > 2:   # the wake-up is lost: asleep until the timeout, then one last poll
            await asyncio.sleep(3600 if timeout is None else timeout)
            return await orig(self, timeout=0)
        return await orig(self, timeout=timeout)

    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", lossy)
    page = _page(tmp_path, "lossy", "x = 6 * 7", "print(x)")
    run = execute_page(page, timeout=40)
    assert run.ok, run.error
    assert run.seconds < 25, run.seconds

    async def slow_then_empty(timeout=None):   # the wrapper keeps the overall timeout and its Empty
        from queue import Empty
        await asyncio.sleep(min(timeout, 0.05))
        raise Empty

    start = time.monotonic()
    with pytest.raises(Exception) as err:
        asyncio.run(sliced_get_msg(slow_then_empty, slice_s=0.05)(timeout=0.3))
    assert type(err.value).__name__ == "Empty" and 0.25 < time.monotonic() - start < 2


def test_the_cached_execution_matches_its_source_for_jupyter_book(tmp_path):
    """Jupyter Book looks a page up by a hash that includes cell metadata: the cached notebook must match the
    page's source (per-cell times live in the record's data), or the book build would execute every page again."""
    from jupyter_cache import get_cache
    from nbexec import read_page

    page = _page(tmp_path, "timed", "import time\ntime.sleep(0.2)", "print(1)")
    assert execute_page(page, cache_dir=tmp_path / "cache", timeout=60).ok
    cache = get_cache(str(tmp_path / "cache"))
    rec = cache.match_cache_notebook(read_page(page))   # as MyST-NB reads it
    secs = rec.data["cell_seconds"]
    assert len(secs) == 2 and secs[0] >= 0.2 and secs[1] >= 0


def test_recorded_times_carry_the_machine_probe(tmp_path, monkeypatch):
    """`exec-table --record` stores, beside the pages' times, how fast the machine ran a fixed workload then."""
    import json

    import torch

    import notebooks

    monkeypatch.setattr(notebooks, "RUN_TIMES", tmp_path / "run_times.json")
    monkeypatch.setattr(notebooks, "execution_times", lambda build_dir, root: [("book/intro", 3.04), ("x", None)])
    monkeypatch.setattr(notebooks, "machine_probe", lambda: 0.125)
    notebooks.record_times(tmp_path, "full")
    entry = json.loads((tmp_path / "run_times.json").read_text())["full"]
    assert entry["pages"] == {"book/intro": 3.0} and entry["probe_seconds"] == 0.125
    monkeypatch.undo()
    threads = torch.get_num_threads()
    assert 0 < notebooks.machine_probe(repeats=1) < 60 and torch.get_num_threads() == threads


def test_page_processes_keep_the_environment_they_were_made_with(monkeypatch):
    """The pages of `make test` run beside the unit tests: a page that starts while a test has changed os.environ
    (monkeypatch.setenv of SLT_CACHE_DIR, say) still gets the environment of the session's start."""
    from nbexec import PageProcesses

    seen = {}

    class Process:
        returncode = 0

        def __init__(self, cmd, env=None, **kw):
            seen["cmd"], seen["env"] = cmd, env

        def communicate(self):
            return "execute: page.md: ok in 0.1 s", None

        def poll(self):
            return 0

    monkeypatch.setenv("SLT_BACKGROUND_PROBE", "when the runner was made")
    runner = PageProcesses(2, timeout=5, command=lambda page, **kw: ["true", str(page)], popen=Process)
    monkeypatch.setenv("SLT_BACKGROUND_PROBE", "changed by a test")
    assert runner.run(Path("page.md")) == (0, "execute: page.md: ok in 0.1 s")
    assert seen["cmd"] == ["true", "page.md"] and seen["env"]["SLT_BACKGROUND_PROBE"] == "when the runner was made"
    runner.stop()
    assert runner.run(Path("page.md")) == (None, "")           # nothing starts after stop()
