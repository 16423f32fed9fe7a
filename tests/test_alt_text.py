"""Every figure in the built book has alt text that says what it shows.

A figure is a matplotlib output of a code cell; its alt text is cell metadata read by MyST-NB
(verified with myst-nb 1.4.0, ``render_image_options``, cell key ``image``)::

    ```{code-cell} ipython3
    :mystnb:
    :  image:
    :    alt: "Training loss against step on log axes, falling from the predict-zero line to ..."
    ```

Without it docutils writes the image's own file path as its ``alt`` ("_images/3f2a….png"), which a screen
reader reads out as a hash. Figures drawn by ipywidgets (``interact``) live in the widget state, not in the
page's HTML, and are not checked here.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import PurePosixPath

from notebooks import toc_docnames


class _ArticleImages(HTMLParser):
    """(src, alt) of every <img> inside the page's <article> (the chapter content, not the theme chrome)."""

    def __init__(self):
        super().__init__()
        self.depth = 0  # nesting depth of <article> elements
        self.images: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "article":
            self.depth += 1
        elif tag == "img" and self.depth:
            a = dict(attrs)
            self.images.append((a.get("src") or "", a.get("alt")))

    def handle_endtag(self, tag):
        if tag == "article" and self.depth:
            self.depth -= 1


def _is_real_alt(src: str, alt: str | None) -> bool:
    if not alt or not alt.strip():
        return False
    alt = alt.strip()
    name = PurePosixPath(src).name
    # docutils' fallback is the image URI itself
    return alt != src and alt != name and not alt.lower().endswith((".png", ".jpg", ".jpeg", ".svg", ".gif"))


#: Pages exempt from the check while being written (none now: every chapter's figures have alt text).
PENDING: set[str] = set()


def test_every_figure_has_alt_text(quick_book):
    missing, total = [], 0
    for docname in toc_docnames():
        if docname in PENDING:
            continue
        parser = _ArticleImages()
        parser.feed((quick_book / f"{docname}.html").read_text(encoding="utf-8"))
        for src, alt in parser.images:
            total += 1
            if not _is_real_alt(src, alt):
                missing.append(f"{docname}.html: <img src={src!r} alt={alt!r}>")
    assert total > 0, "no <img> found in any chapter's <article>: has the theme's markup changed?"
    assert not missing, (
        f"{len(missing)} figure(s) without alt text; give the code cell `:mystnb:` / `:  image:` / "
        "`:    alt: ...` metadata (see this file's docstring):\n" + "\n".join(missing)
    )


def test_alt_check_rejects_docutils_fallback():
    """The fallback docutils writes (the image path) does not count as alt text; a sentence does."""
    src = "../../_images/3f2a9c.png"
    assert not _is_real_alt(src, src)
    assert not _is_real_alt(src, "3f2a9c.png")
    assert not _is_real_alt(src, "")
    assert not _is_real_alt(src, None)
    assert _is_real_alt(src, "Loss against step on log axes, falling in two drops.")
