"""The README's example runs and prints what its comment says; its figure exists."""

from __future__ import annotations

import contextlib
import io
import re

from notebooks import ROOT


def test_readme_example_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    assert out.getvalue().strip() == "1"


def test_readme_figure_exists():
    readme = (ROOT / "README.md").read_text()
    for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        assert (ROOT / src).is_file(), f"README.md shows {src}, which does not exist"
