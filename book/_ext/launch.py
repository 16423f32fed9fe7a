"""Launch buttons that open a chapter in Colab or Binder, and the Colab install cell of every notebook page.

Everything here derives from ``repository.url`` in ``_config.yml`` (the one place that names the repository):

- **Binder**: sphinx-book-theme links ``https://mybinder.org/v2/gh/<org>/<repo>/<branch>?urlpath=lab/tree/<page>.md``.
  The environment comes from ``binder/`` (the pinned packages the chapters import, jupytext, and the package
  itself in ``binder/postBuild``, which also makes JupyterLab open MyST ``.md`` notebooks as notebooks).
- **Colab** opens only ``.ipynb`` files from GitHub, but the theme links the page's ``.md``. The workflow
  ``.github/workflows/book.yml`` publishes the executed notebooks of every build (``_build/html/_sources/**.ipynb``,
  outputs included) to the ``notebooks`` branch, and this extension points the Colab button there:
  ``https://colab.research.google.com/github/<org>/<repo>/blob/notebooks/<page>.ipynb``.
- **The install cell**: the first code cell of every notebook page is :func:`colab_cell` (tagged
  ``remove-cell``: never in the HTML). In Colab it pip-installs ``slt_companion[notebooks]`` from the
  repository; anywhere else it is one ``sys.modules`` look-up. The build warns (so ``-W`` fails) when a page's
  cell is missing or names another repository; ``python book/_ext/launch.py`` writes it into every page.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: branch of the repository that holds the executed .ipynb of every page (written by .github/workflows/book.yml)
NOTEBOOKS_BRANCH = "notebooks"
ROOT = Path(__file__).resolve().parents[2]

_CELL = '''```{{code-cell}} ipython3
:tags: [remove-cell]

# In Colab: install the companion library first. Anywhere else this cell does nothing.
import subprocess, sys
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "slt_companion[notebooks] @ git+{repo_url}"], check=True)
```'''
_ANY_CELL = re.compile(r"```\{code-cell\} ipython3\n:tags: \[remove-cell\]\n\n# In Colab: install the companion "
                       r"library first\..*?\n```\n\n", re.S)


def colab_cell(repo_url: str) -> str:
    """The MyST source of the install cell for the repository at ``repo_url``."""
    return _CELL.format(repo_url=repo_url.rstrip("/"))


def repository_url(root: Path = ROOT) -> str:
    import yaml

    return yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def github_parts(repo_url: str) -> tuple[str, str]:
    """``(org, repo)`` of a ``https://github.com/<org>/<repo>`` URL."""
    m = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", repo_url)
    if not m:
        raise ValueError(f"repository.url must be https://github.com/<org>/<repo> (Colab and Binder need GitHub), "
                         f"not {repo_url!r}")
    return m.group(1), m.group(2)


def pages_url(repo_url: str) -> str:
    """Where GitHub Pages serves the book built by .github/workflows/book.yml."""
    org, repo = github_parts(repo_url)
    return f"https://{org.lower()}.github.io/{repo}/"


def colab_url(repo_url: str, pagename: str, colab: str = "https://colab.research.google.com") -> str:
    org, repo = github_parts(repo_url)
    return f"{colab.rstrip('/')}/github/{org}/{repo}/blob/{NOTEBOOKS_BRANCH}/{pagename}.ipynb"


def with_cell(text: str, repo_url: str) -> str:
    """``text`` (a MyST notebook page) with the install cell right after its title, replacing an old one."""
    text = _ANY_CELL.sub("", text, count=1)
    title = re.search(r"^# .*\n", text, flags=re.M)
    if title is None:
        raise ValueError("a notebook page needs a '# Title' line")
    end = title.end()
    return f"{text[:end]}\n{colab_cell(repo_url)}\n\n{text[end:].lstrip(chr(10))}"


def has_cell(text: str, repo_url: str) -> bool:
    """The page's first code cell is the install cell for ``repo_url``."""
    first = text.find("```{code-cell}")
    return first >= 0 and text[first:].startswith(colab_cell(repo_url))


# ---- Sphinx ------------------------------------------------------------------------------------------------
def _fix_colab_and_check_cell(app, pagename, templatename, context, doctree):
    from sphinx.util import logging

    options = app.config.html_theme_options
    repo_url = options.get("repository_url", "").rstrip("/")
    colab = options.get("launch_buttons", {}).get("colab_url", "")
    if not repo_url or "kernelspec" not in app.env.metadata.get(pagename, {}):
        return
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []):
            if button.get("text") == "Colab":
                button["url"] = colab_url(repo_url, pagename, colab)
    source = Path(app.env.doc2path(pagename))
    if source.suffix == ".md" and not has_cell(source.read_text(encoding="utf-8"), repo_url):
        logging.getLogger(__name__).warning(
            f"{pagename}: the first code cell is not the Colab install cell for {repo_url} "
            f"(run `python book/_ext/launch.py` to write it into every page)", location=pagename)


def _substitutions(app, config):
    """``{{ book_link }}`` and ``{{ repository_link }}`` in any page: the online book and the repository."""
    repo_url = config.html_theme_options.get("repository_url", "").rstrip("/")
    if repo_url:
        config.myst_substitutions = {**(config.myst_substitutions or {}),
                                     "book_link": f"<{pages_url(repo_url)}>", "repository_link": f"<{repo_url}>"}


def setup(app):
    app.connect("config-inited", _substitutions)
    # after sphinx-book-theme has built its launch buttons (priority 501)
    app.connect("html-page-context", _fix_colab_and_check_cell, priority=510)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ---- command line: write the cell into every notebook page of _toc.yml ---------------------------------------
def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from notebooks import is_notebook, source_of, toc_docnames

    repo_url = repository_url()
    changed = []
    for docname in toc_docnames():
        path = source_of(docname)
        if path.suffix != ".md" or not is_notebook(path):
            continue
        text = path.read_text(encoding="utf-8")
        new = with_cell(text, repo_url)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(str(path.relative_to(ROOT)))
    print(f"launch: install cell for {repo_url} written into {len(changed)} page(s)" +
          "".join(f"\n  {p}" for p in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
