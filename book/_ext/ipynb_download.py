"""Offer every notebook page as an executed ``.ipynb`` in the page's download menu.

sphinx-book-theme copies the executed notebook next to the sources only when a launch button (Binder,
Colab, ...) is configured, and it copies MyST-NB's file as it is (see below). This does the copy itself:
``_build/jupyter_execute/<page>.ipynb`` (written by MyST-NB) goes to ``_build/html/_sources/<page>.ipynb``,
outputs included, and the theme's download menu gains an ``.ipynb`` entry. The merged notebook is also written
back over MyST-NB's file, so the theme's own copy (with launch buttons on, right after this) is the same.
The ``notebooks`` branch that Colab opens is made of these files (.github/workflows/book.yml).

MyST-NB 1.4 writes that file *without* outputs when it took them from the jupyter-cache (it saves the notebook
it read, not the one it merged with the cache: every page of an unchanged rebuild, and every page that
``tests/nbexec.py`` executed before the build). The outputs are then merged in from the cache here.
"""

from __future__ import annotations

from pathlib import Path


def _has_outputs(nb) -> bool:
    return any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


def _executed_notebook(app, pagename):
    """The page's notebook with its outputs, or None for a plain Markdown page."""
    import nbformat

    written = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not written.is_file():
        return None
    nb = nbformat.read(written, as_version=4)
    if _has_outputs(nb) or not any(cell.cell_type == "code" for cell in nb.cells):
        return nb
    from jupyter_cache import get_cache

    cache_path = app.config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache"
    try:
        _, nb = get_cache(str(cache_path)).merge_match_into_notebook(nb)
    except KeyError:
        pass  # not in the cache (e.g. execution off): offer the notebook as it is
    return nb


def _offer_ipynb(app, pagename, templatename, context, doctree):
    if not context.get("sourcename", "").endswith((".md", ".md.txt")):
        return
    nb = _executed_notebook(app, pagename)
    if nb is None:
        return  # a plain Markdown page, not a notebook
    import nbformat

    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    # sphinx-book-theme's launch buttons copy jupyter_execute/<page>.ipynb over the target next (priority 501)
    nbformat.write(nb, Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb")
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # before sphinx-book-theme builds its header buttons (priority 501)
    app.connect("html-page-context", _offer_ipynb, priority=500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
