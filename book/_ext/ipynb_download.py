"""Offer every notebook page as an executed ``.ipynb`` in the page's download menu.

sphinx-book-theme only copies the executed notebook next to the sources when a launch button (Binder,
Colab, ...) is configured, and those need a network, so they are off in this book. This does the copy
itself: ``_build/jupyter_execute/<page>.ipynb`` (written by MyST-NB, outputs included) goes to
``_build/html/_sources/<page>.ipynb`` and the theme's download menu gains an ``.ipynb`` entry.
"""

from __future__ import annotations

from pathlib import Path
from shutil import copy2


def _offer_ipynb(app, pagename, templatename, context, doctree):
    if not context.get("sourcename", "").endswith((".md", ".md.txt")):
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():
        return  # a plain Markdown page, not a notebook
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # before sphinx-book-theme builds its header buttons (priority 501)
    app.connect("html-page-context", _offer_ipynb, priority=500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
