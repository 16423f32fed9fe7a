"""Fetch the book's vendored front-end assets (MathJax, the ipywidgets embed manager, require.js).

The built book must work offline, so it serves these files itself. They are not committed: this script
runs ``npm pack NAME@VERSION`` for each package in ``assets.lock.json`` (npm's own cache makes reruns
cheap), checks the tarball's sha512 against the lock, and unpacks only the listed files into
``book/_assets/``. A stamp file records the lock's hash, so an unchanged lock is a no-op.

Usage: ``python book/_vendor/fetch_assets.py [--force]`` (``make book``/``make test`` call it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "assets.lock.json"
DEST = HERE.parent / "_assets"
STAMP = DEST / ".assets-stamp"


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _pack(name: str, version: str, workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("fetch_assets: `npm` is not on PATH. Install Node.js + npm (Debian: apt-get install -y npm) "
                 "so the book can vendor MathJax and the widget JavaScript.")
    proc = subprocess.run([npm, "pack", f"{name}@{version}", "--json", "--pack-destination", str(workdir)],
                          cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"fetch_assets: `npm pack {name}@{version}` failed:\n{proc.stderr.strip()}")
    filename = json.loads(proc.stdout)[0]["filename"]
    return workdir / filename.replace("@", "").replace("/", "-")


def _extract(tgz: Path, mapping: dict, dest: Path) -> set:
    """Unpack the members named by ``mapping`` (file -> file, or folder/ -> folder/); return the keys used."""
    used = set()
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            for src, dst in mapping.items():
                if member.name == src or (src.endswith("/") and member.name.startswith(src)):
                    rel = dst + member.name[len(src):] if src.endswith("/") else dst
                    target = (dest / rel).resolve()
                    if dest.resolve() not in target.parents:
                        sys.exit(f"fetch_assets: refusing to write outside {dest}: {member.name}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as fh:
                        target.write_bytes(fh.read())
                    used.add(src)
    return used


def main(force: bool = False) -> None:
    lock_text = LOCK.read_text()
    digest = hashlib.sha256(lock_text.encode()).hexdigest()
    if not force and STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    lock = json.loads(lock_text)
    if DEST.exists():
        shutil.rmtree(DEST)
    DEST.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in lock["packages"]:
            tgz = _pack(pkg["name"], pkg["version"], Path(tmp))
            got = _integrity(tgz)
            if got != pkg["integrity"]:
                sys.exit(f"fetch_assets: integrity mismatch for {pkg['name']}@{pkg['version']}:\n"
                         f"  lock: {pkg['integrity']}\n  got:  {got}")
            used = _extract(tgz, pkg["extract"], DEST)
            missing = sorted(set(pkg["extract"]) - used)
            if missing:
                sys.exit(f"fetch_assets: {pkg['name']}@{pkg['version']} has no {missing}")
            print(f"fetch_assets: {pkg['name']}@{pkg['version']}: {', '.join(sorted(used))}")
    STAMP.write_text(digest + "\n")


if __name__ == "__main__":
    main(force="--force" in sys.argv[1:])
