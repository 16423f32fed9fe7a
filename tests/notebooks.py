"""The book's pages as seen by the tests: listing them from _toc.yml and their execution times.

    python tests/notebooks.py list                 # every page in _toc.yml (docname, source, is_notebook)
    python tests/notebooks.py exec-table BUILD [--record full|quick]
                                                   # per-chapter execution times of the last build in BUILD
                                                   # (e.g. _build), read from its jupyter-cache; --record writes
                                                   # them to book/_data/run_times.json for the {runtime} role
    python tests/notebooks.py section-times BUILD  # per page and "## " section: seconds its code cells took
                                                   # in the last build (nbclient's per-cell timing)
    python tests/notebooks.py probe                # seconds of a fixed workload: how fast this machine is now

Executing pages is tests/nbexec.py's job (``python tests/nbexec.py PAGE.md`` runs one page and reports the
failing cell).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _walk(entries, out):
    for entry in entries or []:
        if "file" in entry:
            out.append(entry["file"])
        for key in ("chapters", "sections", "parts"):
            _walk(entry.get(key), out)


def toc_docnames(root: Path = ROOT) -> list[str]:
    """Docnames (paths without suffix) of every page in _toc.yml, in reading order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = [toc["root"]]
    _walk(toc.get("parts"), names)
    _walk(toc.get("chapters"), names)
    return [str(Path(n).with_suffix("")) for n in names]


def source_of(docname: str, root: Path = ROOT) -> Path:
    for suffix in (".md", ".ipynb"):
        path = root / f"{docname}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(f"_toc.yml lists {docname!r} but no {docname}.md or .ipynb exists")


def is_notebook(path: Path) -> bool:
    """A MyST Markdown notebook has a YAML header with a jupytext or kernelspec section."""
    if path.suffix == ".ipynb":
        return True
    head = path.read_text(encoding="utf-8")[:2000]
    return head.startswith("---") and ("jupytext:" in head or "kernelspec:" in head)


def execution_times(build_dir: Path, root: Path = ROOT) -> list[tuple[str, float | None]]:
    """``(docname, seconds)`` for every notebook page of _toc.yml, from the build's jupyter-cache
    (``None`` when a page has no cached execution, e.g. it failed)."""
    records = _latest_records(build_dir, root, lambda rec: rec.data.get("execution_seconds") is not None)
    return [(d, float(records[d].data["execution_seconds"]) if d in records else None)
            for d in toc_docnames(root) if is_notebook(source_of(d, root))]


def _latest_records(build_dir: Path, root: Path, keep=lambda rec: True) -> dict:
    """``{docname: the newest record of the build's jupyter-cache for that page}``, among records that ``keep``."""
    from jupyter_cache import get_cache

    cache_path = build_dir / ".jupyter_cache"
    latest = {}
    if cache_path.exists():
        for rec in get_cache(str(cache_path)).list_cache_records():
            try:
                key = str(Path(rec.uri).resolve().relative_to(root.resolve()).with_suffix(""))
            except ValueError:
                continue
            if keep(rec) and (key not in latest or rec.created > latest[key].created):
                latest[key] = rec
    return latest


def section_times(build_dir: Path, root: Path = ROOT) -> list[tuple[str, str, float]]:
    """``(docname, section, seconds)``: how long the code cells under each ``## `` heading of every executed page
    took in the build's jupyter-cache (from the per-cell times nbexec stores in each record's data; ``-`` = before the first heading)."""
    from nbexec import read_page     # the reader that made the executed notebook: its code cells align

    latest = _latest_records(build_dir, root)
    out = []
    for docname in toc_docnames(root):
        rec = latest.get(docname)
        if rec is None:
            continue
        sections, heading = [], "-"                     # the section of each code cell, from the page's source
        for cell in read_page(source_of(docname, root), root).cells:
            if cell.cell_type == "markdown":
                heading = next((ln[3:].strip() for ln in reversed(cell.source.splitlines()) if ln.startswith("## ")),
                               heading)
            elif cell.cell_type == "code":
                sections.append(heading)
        totals: dict = {}
        for heading, secs in zip(sections, rec.data.get("cell_seconds") or []):
            if secs is not None:
                totals[heading] = totals.get(heading, 0.0) + secs
        out += [(docname, h, s) for h, s in totals.items()]
    return out


def exec_table(build_dir: Path, root: Path = ROOT) -> str:
    rows = execution_times(build_dir, root)
    lines = ["seconds  page (execution time of the last build that ran it)"]
    lines += [f"{'-' if s is None else f'{s:7.1f}'}  {d}" for d, s in rows]
    total = sum(s for _, s in rows if s is not None)
    lines.append(f"{total:7.1f}  total ({total / 60:.1f} min)")
    return "\n".join(lines)


RUN_TIMES = ROOT / "book" / "_data" / "run_times.json"


def machine_probe(repeats: int = 5) -> float:
    """Seconds of a fixed single-threaded workload like the book's (a pure-Python loop, then 300 forward and
    backward passes of a small torch layer), the best of ``repeats``. Recorded with every build's times, so that two
    builds' minutes can be told apart from two days' machines: the same code has taken 1.3-2.6x longer from one
    day to the next on the same 2-core machine. First measured on 2026-11-30, one of those slow days."""
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(64, 64, generator=gen, requires_grad=True)
        x = torch.randn(32, 64, generator=gen)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            total = 0
            for i in range(1_000_000):
                total += i * i % 7
            for _ in range(300):
                torch.tanh(x @ w).pow(2).mean().backward()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return round(best, 3)


def record_times(build_dir: Path, mode: str, root: Path = ROOT) -> None:
    """Store this build's per-page times in book/_data/run_times.json under ``mode`` ("full" or "quick").

    Only pages that executed are updated, so a partial rebuild keeps the older numbers of the others."""
    import datetime
    import json
    import os
    import platform

    if mode not in {"full", "quick"}:
        raise SystemExit(f"--record takes 'full' or 'quick', not {mode!r}")
    try:
        data = json.loads(RUN_TIMES.read_text())
    except (OSError, ValueError):
        data = {}
    entry = data.setdefault(mode, {"pages": {}})
    fresh = {d: round(s, 1) for d, s in execution_times(build_dir, root) if s is not None}
    if not fresh:
        return
    entry.setdefault("pages", {}).update(fresh)
    entry["measured"] = datetime.date.today().isoformat()
    entry["machine"] = f"{os.cpu_count()}-core {platform.machine()} CPU"
    entry["probe_seconds"] = machine_probe()        # how fast the machine was, right after the build
    RUN_TIMES.parent.mkdir(parents=True, exist_ok=True)
    RUN_TIMES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"list", "exec-table", "section-times", "probe"}:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "list":
        for docname in toc_docnames():
            src = source_of(docname)
            print(f"{docname:50s} {src.relative_to(ROOT)}  notebook={is_notebook(src)}")
    elif cmd == "probe":
        print(f"{machine_probe():.3f} s  (tests/notebooks.py machine_probe; compare probe_seconds in "
              f"{RUN_TIMES.relative_to(ROOT)})")
    elif cmd == "section-times":
        if len(args) != 1:
            print("usage: notebooks.py section-times BUILD_DIR")
            return 2
        rows = section_times(Path(args[0]))
        for docname, heading, secs in rows:
            print(f"{secs:8.1f}  {docname}  § {heading}")
        rep = sum(s for _, h, s in rows if "replicate" in h.lower())
        print(f"{sum(s for *_, s in rows) / 60:8.1f} min in all code cells; {rep / 60:.1f} min in the "
              "\"Does it replicate?\" sections")
    elif cmd == "exec-table":
        if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--record"):
            print("usage: notebooks.py exec-table BUILD_DIR [--record full|quick]")
            return 2
        print(exec_table(Path(args[0])))
        if len(args) == 3:
            record_times(Path(args[0]), args[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
