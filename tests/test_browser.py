"""The built book in a real browser: every page of _toc.yml loads in Debian's Chromium (driven by Playwright)
with no JavaScript errors, no failed or external requests (fonts aside), all math typeset, every image
loaded and every widget drawn exactly once.

Chromium comes from Debian (`apt-get install -y chromium`; `make test` installs it when it runs as root);
never `playwright install`. Without Chromium these tests FAIL with that instruction; they never skip.
"""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# Runs in the page once it has loaded: waits for MathJax and the images, then reports what it sees.
INSPECT = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
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


@pytest.mark.parametrize("docname", toc_docnames())
def test_page_in_browser(browser, site, docname):
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
    try:
        page.goto(f"{site}/{docname}.html", wait_until="networkidle")
        seen = page.evaluate(INSPECT)
        page.wait_for_timeout(200)  # let late errors (widget rendering) arrive
    finally:
        page.close()

    assert "404" not in seen["title"], f"{docname}: page title says {seen['title']!r}"
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)
    assert not seen["untypeset"], f"{docname}: math not typeset by MathJax: {seen['untypeset'][:5]}"
    assert not seen["badImages"], f"{docname}: images that did not load: {seen['badImages']}"
    for i, view in enumerate(seen["widgetViews"]):
        assert view["areas"] == view["views"] and view["drawn"] == view["views"], \
            f"{docname}: widget view #{i}: {view['views']} view(s) in its output drawn {view['drawn']} times " \
            f"in {view['areas']} areas (want each drawn exactly once)"


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
