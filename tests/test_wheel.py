"""The package as readers get it (issue 18.3): ``python -m build`` makes an sdist and a wheel from a copy of the
package's files, the wheel is installed (no ``-e``) into a fresh virtual environment, and the README's library
example and a small ``estimate_llc`` run from that environment, giving the same numbers as the source tree.

How the fresh environment gets its dependencies, and why: installing torch and the rest from scratch into a new
venv costs about a minute and 1.3 GB on every ``make test``. Instead the new venv (``python -m venv
--without-pip``) sees *the pinned set already installed in the project's .venv* through one ``.pth`` file, which
adds a folder of links to every distribution of .venv's site-packages **except slt_companion** (its editable
finder, ``.pth`` and dist-info are left out). pip then installs the wheel with ``--no-index``, so the wheel's
declared dependencies must be satisfied by the pinned set or the install fails, and ``pip check`` must pass.
The tests assert that ``slt_companion`` is imported from the new venv's site-packages, never from the source
tree (scripts run with ``python -I`` from a temporary folder). The build runs with ``--no-isolation`` (the
pinned setuptools of requirements.txt; an isolated build would download setuptools).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import slt_companion
from notebooks import ROOT

#: what an sdist is built from; everything else in the repository (the book, tests, ...) stays out of it
PACKAGE_FILES = ["pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md", "CITATION.cff", "slt_companion"]
VERSION = slt_companion.__version__

SMALL_LLC = """
import json, slt_companion
from slt_companion.data import teacher_student
from slt_companion.llc import estimate_llc
from slt_companion.models import DeepLinearNetwork

d = teacher_student(2000, 3, 3, 1, seed=0)
m = DeepLinearNetwork([3, 2, 3]).fit_least_squares(d.x, d.y)
est = estimate_llc(m, lambda out, y: 0.5 * ((out - y) ** 2).sum(-1).mean(), d.xy, num_chains=2, num_draws=60,
                   num_burnin=20, step_size=1e-4, seed=0, progress=False)
print(json.dumps({"file": slt_companion.__file__, "version": slt_companion.__version__,
                  "mean": est.mean, "per_chain": est.per_chain.tolist()}))
"""


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Path:
    """``python -m build`` (sdist, then the wheel from the sdist) of a copy of the package's files."""
    src = tmp_path_factory.mktemp("src")
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src])
    return out


@pytest.fixture(scope="module")
def wheel_venv(dists, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no -e), its dependencies from the pinned set of .venv."""
    root = tmp_path_factory.mktemp("wheel-venv")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the pinned set, minus this package
    pinned = Path(sysconfig.get_paths()["purelib"])
    deps = root / "pinned-deps"
    deps.mkdir()
    for entry in pinned.iterdir():
        if entry.name.startswith(("slt_companion", "__editable__")) or entry.name == "__pycache__":
            continue
        (deps / entry.name).symlink_to(entry)
    (site / "pinned_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    [wheel] = dists.glob("*.whl")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-index", "--no-cache-dir", wheel])
    _run([sys.executable, "-m", "pip", "--python", py, "check"])
    return venv


def test_build_makes_an_sdist_and_a_wheel(dists):
    names = sorted(p.name for p in dists.iterdir())
    assert names == [f"slt_companion-{VERSION}-py3-none-any.whl", f"slt_companion-{VERSION}.tar.gz"], names
    with tarfile.open(dists / f"slt_companion-{VERSION}.tar.gz") as sdist:
        files = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "CITATION.cff", "pyproject.toml", "slt_companion/llc.py"} <= files
    assert not any(f.startswith(("book/", "tests/")) for f in files)
    with zipfile.ZipFile(dists / f"slt_companion-{VERSION}-py3-none-any.whl") as whl:
        files = set(whl.namelist())
        meta = whl.read(f"slt_companion-{VERSION}.dist-info/METADATA").decode()
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "slt_companion").rglob("*.py")}
    assert source <= files, f"modules missing from the wheel: {sorted(source - files)}"
    assert f"slt_companion-{VERSION}.dist-info/licenses/LICENSE" in files


def test_wheel_metadata_is_what_an_index_shows(dists):
    with zipfile.ZipFile(dists / f"slt_companion-{VERSION}-py3-none-any.whl") as whl:
        meta = whl.read(f"slt_companion-{VERSION}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in meta
    assert "Classifier: Topic :: Scientific/Engineering :: Artificial Intelligence" in meta
    for extra in ("notebooks", "book", "bench"):
        assert f"Provides-Extra: {extra}" in meta
    assert "Project-URL: Source, https://github.com/" in meta and "Project-URL: Homepage, https://" in meta
    assert "Requires-Dist: torch>=2.0" in meta and "Description-Content-Type: text/markdown" in meta


def test_readme_example_and_a_small_llc_run_from_the_installed_wheel(wheel_venv, tmp_path):
    import re

    py = wheel_venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["SLT_CACHE_DIR"] = str(tmp_path / "cache")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    out = _run([py, "-I", "-c", blocks[0]], cwd=tmp_path, env=env).stdout
    assert out.strip() == "1", out
    # the LLC example: λ = 6 for RRR 4-3-4 with a rank-1 teacher; it converges with the defaults and says so
    out = _run([py, "-I", "-c", blocks[1]], cwd=tmp_path, env={**env, "SLT_QUICK": "0"}).stdout
    mean = float(re.search(r"LLCEstimate\(mean=([0-9.]+)", out).group(1))
    assert abs(mean / 6 - 1) < 0.1 and "\n  converged: R̂" in out, out

    got = json.loads(_run([py, "-I", "-c", SMALL_LLC], cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert Path(got["file"]).resolve().is_relative_to(wheel_venv.resolve()), \
        f"slt_companion was imported from {got['file']}, not from the wheel installed in {wheel_venv}"
    assert got["version"] == VERSION
    # the same code from the source tree (this process) gives the same numbers
    here = json.loads(_run([sys.executable, "-I", "-c", SMALL_LLC], cwd=tmp_path, env=env).stdout.strip()
                      .splitlines()[-1])
    assert Path(here["file"]).resolve().is_relative_to(ROOT)
    assert got["per_chain"] == here["per_chain"] and got["mean"] == here["mean"]
    assert 0 < got["mean"] < 20
