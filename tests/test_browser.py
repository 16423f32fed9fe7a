"""The built book in a real browser: every page of _toc.yml loads in Debian's Chromium (driven by Playwright)
with no JavaScript errors, no failed or external requests (fonts aside), all math typeset, every image
loaded and every widget drawn exactly once.

Chromium comes from Debian (`apt-get install -y chromium`; `make test` installs it when it runs as root);
never `playwright install`. Without Chromium these tests FAIL with that instruction; they never skip.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from notebooks import toc_docnames

# Flags measured in ../shared/STACK.md: no sandbox (root in a container), no GPU, no background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FONT = re.compile(r"\.(woff2?|ttf|otf|eot)(\?.*)?$")


def _chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("Chromium was not found, so the browser tests cannot run. Install Debian's Chromium with "
                "`sudo apt-get install -y chromium` (`make test` does this itself when run as root), or set "
                "CHROMIUM=/path/to/chrome. Do not run `playwright install`.", pytrace=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def site(quick_book):
    """Serve the quick build on 127.0.0.1 (port chosen by the OS); yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(quick_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def _launched(executable: str):
    """Headless Chromium (``executable``) with :data:`CHROMIUM_ARGS`, in a Playwright instance of this thread's own."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def browser():
    with _launched(_chromium()) as chromium:
        yield chromium


# Runs in the page once it has loaded: waits for MathJax and the images, then reports what it sees.
INSPECT = """async () => {
  // MathJax's script may be fetched but not yet run when the network goes idle (window.MathJax is then still the
  // config, with no startup): wait up to 30 s for it to start, then for its first typeset pass
  const started = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
  if (document.querySelector('.math')) {
    for (let t = 0; t < 300 && !started(); t++) { await new Promise(r => setTimeout(r, 100)); }
  }
  if (started()) { await MathJax.startup.promise; }
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  const views = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
  const drawn = () => views.every(s => s.parentElement.querySelector(':scope > .widget-subarea .jupyter-widgets'));
  for (let t = 0; t < 100 && !drawn(); t++) { await new Promise(r => setTimeout(r, 100)); }  // up to 10 s
  return {
    untypeset: Array.from(document.querySelectorAll('.math')).filter(e => !e.querySelector('mjx-container'))
                    .map(e => e.textContent.slice(0, 80)),
    mathCount: document.querySelectorAll('.math').length,
    badImages: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    imageCount: imgs.length,
    // one output may hold several views (e.g. two progress bars): each is drawn once, in an area of its own
    widgetViews: views.map(s => {
      const areas = Array.from(s.parentElement.querySelectorAll(':scope > .widget-subarea'));
      const siblings = s.parentElement.querySelectorAll(
        ':scope > script[type="application/vnd.jupyter.widget-view+json"]').length;
      return {areas: areas.length, drawn: areas.filter(a => a.querySelector('.jupyter-widgets')).length,
              views: siblings};
    }),
    title: document.title,
  };
}"""


# Issue 18: the launch buttons (Binder, Colab), the repository button and the licence footer of a page.
LAUNCH = """() => ({
  launch: Array.from(document.querySelectorAll('.dropdown-launch-buttons a.dropdown-item'))
               .map(a => [a.textContent.trim(), a.href]),
  repo: Array.from(document.querySelectorAll('a.btn-source-repository-button')).map(a => a.href),
  footer: (document.querySelector('.extra_footer') || {textContent: ''}).textContent,
})"""


@pytest.fixture(scope="session")
def launch_links():
    """What every page's launch buttons must say, derived from repository.url and .branch in _config.yml:
    ``(repository URL, function docname -> [[label, href], ...] for a notebook page)``."""
    import sys

    import yaml

    from notebooks import ROOT

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import launch

    repo = launch.repository_url()
    org, name = launch.github_parts(repo)
    branch = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["branch"]

    def expected(docname: str) -> list:
        return [["Binder", f"https://mybinder.org/v2/gh/{org}/{name}/{branch}?urlpath=lab/tree/{docname}.md"],
                ["Colab", f"https://colab.research.google.com/github/{org}/{name}/blob/notebooks/{docname}.ipynb"]]

    return repo, expected


def _check_launch_buttons(docname: str, seen: dict, launch_links, quick_book: Path) -> None:
    """Issue 18: every page has the repository button and the licence footer; every notebook page has exactly a
    Binder link (its .md on the branch, opened by binder/'s environment) and a Colab link (its executed .ipynb on
    the notebooks branch, which .github/workflows/book.yml fills from _build/html/_sources)."""
    import nbformat

    from notebooks import ROOT, is_notebook, source_of

    repo, expected = launch_links
    assert seen["repo"] == [repo], f"{docname}: repository button {seen['repo']}"
    assert "MIT" in seen["footer"] and "CC BY 4.0" in seen["footer"], f"{docname}: footer {seen['footer']!r}"
    if not is_notebook(source_of(docname)):
        assert seen["launch"] == [], f"{docname} is not a notebook but offers {seen['launch']}"
        return
    assert seen["launch"] == expected(docname), f"{docname}: launch buttons {seen['launch']}"
    assert (ROOT / f"{docname}.md").is_file()                       # what Binder opens
    # what the notebooks branch holds, and Colab runs: the install cell comes first
    first = next(c for c in nbformat.read(quick_book / "_sources" / f"{docname}.ipynb", as_version=4).cells
                 if c.cell_type == "code")
    assert "google.colab" in first.source and f"git+{repo}" in first.source, f"{docname}: {first.source}"


#: pages loaded at once by ``page_visits``, each thread with a Chromium of its own (Playwright's sync API is one
#: instance per thread): on the 2-core machine two at a time took 97 s for the book against 130 s one after another
BROWSER_JOBS = max(1, min(2, os.cpu_count() or 1))


def _visit(browser, site: str, docname: str) -> dict:
    """Load one page; return what it showed (``seen``: :data:`INSPECT`, ``buttons``: :data:`LAUNCH`) and the
    ``problems`` seen on the way: JavaScript errors, console errors, requests off the site, failed requests, HTTP
    errors (fonts aside). An exception while loading is a problem of that page, not of the run."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"JavaScript error: {err}"))
    page.on("console", lambda msg: problems.append(f"console.error: {msg.text}")
            if msg.type == "error" and "Failed to load resource" not in msg.text else None)
    page.on("request", lambda req: None if req.url.startswith(site) or req.url.startswith("data:")
            or FONT.search(req.url) else problems.append(f"external request: {req.url}"))
    page.on("requestfailed", lambda req: None if FONT.search(req.url)
            else problems.append(f"failed request: {req.url} ({req.failure})"))
    page.on("response", lambda res: problems.append(f"HTTP {res.status}: {res.url}")
            if res.status >= 400 and not FONT.search(res.url) else None)
    seen = buttons = None
    try:
        page.goto(f"{site}/{docname}.html", wait_until="networkidle")
        seen = page.evaluate(INSPECT)
        buttons = page.evaluate(LAUNCH)
        page.wait_for_timeout(200)  # let late errors (widget rendering) arrive
    except Exception as err:  # noqa: BLE001 -- reported by the page's test
        problems.append(f"loading the page failed: {type(err).__name__}: {err}")
    finally:
        page.close()
    return {"seen": seen, "buttons": buttons, "problems": problems}


@pytest.fixture(scope="session")
def page_visits(site) -> dict:
    """Every page of _toc.yml loaded once in Chromium, :data:`BROWSER_JOBS` at a time: ``{docname: _visit(...)}``."""
    from concurrent.futures import ThreadPoolExecutor

    docnames = toc_docnames()
    executable = _chromium()

    def worker(names: list[str]) -> dict:
        with _launched(executable) as chromium:
            return {d: _visit(chromium, site, d) for d in names}

    with ThreadPoolExecutor(max_workers=BROWSER_JOBS) as pool:
        parts = list(pool.map(worker, [docnames[i::BROWSER_JOBS] for i in range(BROWSER_JOBS)]))
    return {d: v for part in parts for d, v in part.items()}


@pytest.mark.parametrize("docname", toc_docnames())
def test_page_in_browser(page_visits, quick_book, launch_links, docname):
    """The page loads with nothing off the site and no errors, all math typeset, every image loaded, every widget
    drawn once; and its launch buttons, repository button and footer are right (one page load checks both)."""
    visit = page_visits[docname]
    problems, seen = visit["problems"], visit["seen"]
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)
    assert "404" not in seen["title"], f"{docname}: page title says {seen['title']!r}"
    assert not seen["untypeset"], f"{docname}: math not typeset by MathJax: {seen['untypeset'][:5]}"
    assert not seen["badImages"], f"{docname}: images that did not load: {seen['badImages']}"
    for i, view in enumerate(seen["widgetViews"]):
        assert view["areas"] == view["views"] and view["drawn"] == view["views"], \
            f"{docname}: widget view #{i}: {view['views']} view(s) in its output drawn {view['drawn']} times " \
            f"in {view['areas']} areas (want each drawn exactly once)"
    _check_launch_buttons(docname, visit["buttons"], launch_links, quick_book)


def test_widgets_and_math_are_really_there(browser, site):
    """Guard against the page checks passing vacuously: Chapter 1 has math, figures (some inside a widget) and two sliders."""
    page = browser.new_page()
    try:
        page.goto(f"{site}/book/partI_singular/why_singular.html", wait_until="networkidle")
        seen = page.evaluate(INSPECT)
        sliders = page.locator(".widget-slider").count()
    finally:
        page.close()
    assert seen["mathCount"] > 20 and seen["imageCount"] >= 2
    assert len(seen["widgetViews"]) >= 1 and sliders == 2


def test_offline_search_finds_a_late_chapter(browser, site):
    """Sphinx's client-side search works without a network and indexes the later chapters."""
    page = browser.new_page()
    try:
        page.goto(f"{site}/search.html?q=susceptibility", wait_until="networkidle")
        page.wait_for_selector("#search-results ul.search li", timeout=15000)
        hrefs = page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(e => e.href)")
    finally:
        page.close()
    # "susceptibility" is the subject of the first Part IV chapter, one of the last in the book
    assert any("partIV_horizons/data_shapes_structure" in h for h in hrefs), \
        f"search for 'susceptibility' found only {hrefs}"


def test_code_cells_have_copy_buttons(browser, site):
    page = browser.new_page()
    try:
        page.goto(f"{site}/book/partI_singular/why_singular.html", wait_until="networkidle")
        cells = page.locator("div.cell_input div.highlight").count()
        buttons = page.locator("div.cell_input button.copybtn").count()
    finally:
        page.close()
    assert cells > 5 and buttons == cells, f"{buttons} copy buttons for {cells} code cells"


# ---- issue 18: the launch menu, version and release notes --------------------------------------
def test_the_launch_menu_opens_and_loads_nothing_off_the_site(browser, site, launch_links):
    """A reader opens the rocket menu of the last notebook page: the Binder and Colab links show, and nothing is
    requested off the site. (Every page's buttons are checked by ``test_page_in_browser``.)"""
    from notebooks import is_notebook, source_of

    notebooks = [d for d in toc_docnames() if is_notebook(source_of(d))]
    assert notebooks, "no notebook page in _toc.yml"
    page = browser.new_page()
    off_site: list[str] = []
    page.on("request", lambda req: None if req.url.startswith((site, "data:")) or FONT.search(req.url)
            else off_site.append(req.url))
    try:
        page.goto(f"{site}/{notebooks[-1]}.html", wait_until="networkidle")
        page.click(".dropdown-launch-buttons button.dropdown-toggle", timeout=10_000)
        for label in ("Binder", "Colab"):
            page.wait_for_selector(f".dropdown-launch-buttons a.dropdown-item:has-text('{label}')", state="visible",
                                   timeout=10_000)
        page.wait_for_timeout(300)
        seen = page.evaluate(LAUNCH)
    finally:
        page.close()
    assert seen["launch"] == launch_links[1](notebooks[-1]), seen["launch"]
    assert not off_site, f"requests off the site: {off_site}"


def test_front_page_shows_version_release_notes_and_how_to_cite(browser, site):
    import slt_companion

    page = browser.new_page()
    try:
        page.goto(f"{site}/book/intro.html", wait_until="networkidle")
        text = page.inner_text("main")
        notes = page.eval_on_selector_all("main a", "els => els.filter(e => e.textContent.trim() === 'release notes')"
                                                    ".map(e => e.href)")
        page.goto(notes[0], wait_until="networkidle")
        changelog = page.inner_text("main")
    finally:
        page.close()
    assert f"version {slt_companion.__version__}" in text and "How to cite" in text and "CC BY 4.0" in text
    assert notes and notes[0].endswith("/book/changelog.html")
    assert f"{slt_companion.__version__} (" in changelog and "Release notes" in changelog
