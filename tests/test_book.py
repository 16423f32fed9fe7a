"""The quick build of the whole book: -W passes, every page of _toc.yml is there, nothing leaks."""

from __future__ import annotations

import re

from notebooks import ROOT, toc_docnames


def test_quick_build_has_no_warnings(quick_book):
    log = (quick_book.parents[1] / "build.log").read_text()
    # ipykernel 7.4 prints this on every kernel start; it is not a Sphinx warning and -W ignores it (STACK.md)
    harmless = "[IPKernelApp] WARNING | Kernel is running over TCP without encryption"
    warnings = [line for line in log.splitlines() if "WARNING" in line and harmless not in line]
    assert not warnings, "\n".join(warnings)


def test_quick_build_executed_no_notebook(quick_book):
    """Execute once: tests/test_notebooks.py ran every page into the build's jupyter-cache, so the build found
    each page there and started no kernel (a page whose cache key did not match would run a second time)."""
    from nbexec import notebook_pages

    log = (quick_book.parents[1] / "build.log").read_text()
    executed = [line for line in log.splitlines() if "Executing notebook" in line or "Executed notebook" in line]
    assert not executed, "the quick build executed pages again:\n" + "\n".join(executed)
    assert log.count("Using cached notebook") == len(notebook_pages()), log[-3000:]


def test_every_toc_page_is_built(quick_book):
    for docname in toc_docnames():
        assert (quick_book / f"{docname}.html").is_file(), f"{docname}.html missing from the build"


def test_no_static_folder_and_assets_served_from_book(quick_book):
    # jupyter-book 1.x injects every .js under a _static/ source folder into every page (STACK.md fix 1)
    assert not list((ROOT / "book").rglob("_static")), "book/ must not contain a _static/ folder"
    for rel in ("mathjax/tex-mml-chtml.js", "widgets/embed-amd.js", "widgets/require.js"):
        assert (quick_book / "_static" / rel).is_file(), f"vendored asset {rel} missing from the build"


def test_pages_reference_no_cdn(quick_book):
    cdn = re.compile(r"""(?:src|href)=["']https?://(?!127\.0\.0\.1)[^"']+\.(?:js|css)""")
    for docname in toc_docnames():
        html = (quick_book / f"{docname}.html").read_text(encoding="utf-8")
        assert not cdn.findall(html), f"{docname}.html loads {cdn.findall(html)}"


def test_each_script_is_included_once(quick_book):
    """The dedupe_js extension: no inline script or file is on a page twice (THEBE_JS_URL error)."""
    for docname in toc_docnames():
        html = (quick_book / f"{docname}.html").read_text(encoding="utf-8")
        srcs = re.findall(r'<script[^>]*src="([^"]+)"', html)
        dupes = {s for s in srcs if srcs.count(s) > 1}
        assert not dupes, f"{docname}.html includes {dupes} more than once"
        assert html.count("THEBE_JS_URL =") <= 1


def test_no_page_shows_a_traceback(quick_book):
    """A figure that fails to draw (e.g. bad mathtext) does not fail the cell: IPython prints the traceback as
    output and the build passes. The reader must never see one."""
    for docname in toc_docnames():
        html = (quick_book / f"{docname}.html").read_text(encoding="utf-8")
        assert 'class="output traceback' not in html, f"{docname}.html shows a traceback in a cell output"
        for stderr in re.findall(r'class="output stderr[^"]*".*?</pre>', html, flags=re.S):
            assert not re.search(r"\b\w*(Error|Exception)\b", stderr), \
                f"{docname}.html prints an error on stderr: {stderr[:300]}"


def _internal_links(html_dir):
    """(page, href) for every relative link and resource on every built page."""
    from html.parser import HTMLParser

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found, self.ids = [], set()

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if "id" in a:
                self.ids.add(a["id"])
            for key in ("href", "src"):
                if a.get(key) and tag in {"a", "img", "script", "link"}:
                    self.found.append(a[key])

    pages = {}
    for page in html_dir.rglob("*.html"):
        if page.relative_to(html_dir).parts[0] in {"_static", "_sources"}:
            continue  # theme template fragments copied verbatim, not pages
        parser = Links()
        parser.feed(page.read_text(encoding="utf-8"))
        pages[page] = parser
    return pages


def test_internal_links_resolve(quick_book):
    """Every relative link, image and script on every page points at a file that exists, and every
    ``page.html#anchor`` at an element with that id (external http(s) links are not followed: no network)."""
    from urllib.parse import unquote, urlsplit

    pages = _internal_links(quick_book)
    broken = []
    for page, parser in pages.items():
        for ref in parser.found:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith(("//", "mailto:", "javascript:", "data:")):
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(quick_book)} -> {ref}")
            elif parts.fragment and target.suffix == ".html" and target in pages \
                    and unquote(parts.fragment) not in pages[target].ids:
                broken.append(f"{page.relative_to(quick_book)} -> {ref} (no such anchor)")
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(sorted(set(broken))[:40])


def test_notebook_pages_offer_their_executed_ipynb(quick_book):
    """Each notebook page links an executed .ipynb (outputs included) in its download menu."""
    import nbformat

    from notebooks import is_notebook, source_of

    for docname in toc_docnames():
        if not is_notebook(source_of(docname)):
            continue
        ipynb = quick_book / "_sources" / f"{docname}.ipynb"
        assert ipynb.is_file(), f"{docname}: no downloadable {ipynb.name}"
        nb = nbformat.read(ipynb, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        shown = [c for c in code if "remove-cell" not in c.get("metadata", {}).get("tags", [])]
        assert not shown or any(c.get("outputs") for c in code), \
            f"{docname}: the downloadable notebook has no outputs (was it executed?)"
        html = (quick_book / f"{docname}.html").read_text(encoding="utf-8")
        assert f'_sources/{docname}.ipynb"' in html, f"{docname}.html does not link its .ipynb"


#: a Markdown table's separator row left as text in a paragraph ("|---|", typographer dashes: "|—|"): a glued table
#: whose {glue:md} directive lacks ``:format: myst`` renders as one paragraph of pipes instead of a table
RAW_TABLE = re.compile(r"<p>[^<]*\|\s*[-—–:]+\s*\|")


def raw_tables(html: str) -> list[str]:
    """Paragraphs of ``html`` that hold a Markdown table's separator row (see :data:`RAW_TABLE`)."""
    return [m.group(0)[:120] for m in RAW_TABLE.finditer(html)]


def test_no_table_renders_as_text(quick_book):
    bad = {docname: found for docname in toc_docnames()
           if (found := raw_tables((quick_book / f"{docname}.html").read_text(encoding="utf-8")))}
    assert not bad, f"Markdown tables rendered as paragraphs (add ':format: myst' to their {{glue:md}}): {bad}"


def test_raw_table_check_catches_a_glued_table_left_as_text():
    assert raw_tables("<p>| a | b |\n|—|—|\n| 1 | 2 |</p>")
    assert raw_tables("<p>| a | b | |---|---| | 1 | 2 |</p>")
    assert not raw_tables("<table><tr><td>a</td></tr></table><p>x | y and a - b | c</p>")
