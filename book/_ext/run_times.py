"""The ``{runtime}`` role: a chapter's measured execution time, from the last recorded builds.

``**Time to run** {runtime}`page``` renders as, e.g., "31 s at full size (first build; later builds read the
cache), 8 s with SLT_QUICK=1 -- measured on a 2-core CPU on 2026-11-25". The numbers come from
``book/_data/run_times.json``, which ``make book`` (full size) and ``make test`` (quick) rewrite from the
jupyter-cache of the build they just ran (``tests/notebooks.py exec-table --record``). A page with no
measurement yet says so instead of guessing.
"""

from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes

DATA = Path(__file__).resolve().parents[1] / "_data" / "run_times.json"


def _fmt(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _describe(docname: str) -> str:
    try:
        data = json.loads(DATA.read_text())
    except (OSError, ValueError):
        data = {}
    parts = []
    for mode, label in (("full", "at full size"), ("quick", "with SLT_QUICK=1")):
        entry = data.get(mode, {})
        seconds = entry.get("pages", {}).get(docname)
        if seconds is not None:
            parts.append(f"{_fmt(seconds)} {label}")
    if not parts:
        return "not measured yet (run make book)"
    when = data.get("full", data.get("quick", {})).get("measured", "")
    where = data.get("full", data.get("quick", {})).get("machine", "")
    return ", ".join(parts) + f" -- measured in the last build ({where}, {when})"


def runtime_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    env = inliner.document.settings.env
    docname = env.docname if text.strip() in {"", "page", "this"} else text.strip()
    env.note_dependency(str(DATA))
    return [nodes.emphasis(rawtext, _describe(docname))], []


def setup(app):
    app.add_role("runtime", runtime_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
