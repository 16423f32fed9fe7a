"""slt_companion.allocator: the environment that preloads tcmalloc, and that it changes no number."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slt_companion import allocator

FAKE = "/opt/fake/libtcmalloc_minimal.so.4"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_tcmalloc(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: FAKE)


def test_preload_env_prepends_tcmalloc_once(fake_tcmalloc):
    env = allocator.preload_env({"LD_PRELOAD": "/lib/other.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == f"{FAKE} /lib/other.so"
    assert env["PATH"] == "/bin"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 2 ** 40      # no "large alloc" lines in a page
    again = allocator.preload_env(env)
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"]                             # not twice
    assert allocator.preload_env({})["LD_PRELOAD"] == FAKE


def test_preload_env_copies_and_respects_opt_out(fake_tcmalloc):
    base = {"SLT_MALLOC": "system", "LD_PRELOAD": ""}
    out = allocator.preload_env(base)
    assert out == base and out is not base
    mine = {"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}                           # a tcmalloc already chosen: kept
    assert allocator.preload_env(mine)["LD_PRELOAD"] == "/usr/lib/libtcmalloc.so.4"


def test_preload_env_unchanged_without_tcmalloc(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_path", lambda: None)
    assert allocator.preload_env({"A": "1"}) == {"A": "1"}
    assert allocator._main(["--check"]) == 1
    assert allocator._main([]) == 1


def test_page_kernels_get_the_preload(fake_tcmalloc, monkeypatch):
    from nbexec import kernel_env

    monkeypatch.delenv("SLT_MALLOC", raising=False)
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setenv("SLT_SOMETHING", "kept")
    env = kernel_env()
    assert env["LD_PRELOAD"].split()[0] == FAKE and env["SLT_SOMETHING"] == "kept"
    monkeypatch.setenv("SLT_MALLOC", "system")
    assert kernel_env().get("LD_PRELOAD", "") == ""
    # progress bars off in the stored outputs (frozen mid-run they read as aborted runs), unless asked for
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert kernel_env()["TQDM_DISABLE"] == "1"
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert kernel_env()["TQDM_DISABLE"] == "0"


@pytest.mark.skipif(allocator.tcmalloc_path() is None, reason=allocator.INSTALL_HINT)
def test_a_page_runs_on_tcmalloc(tmp_path):
    from nbexec import execute_page

    page = tmp_path / "page.md"
    page.write_text("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
                    "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n# Page\n\n"
                    "```{code-cell} ipython3\nfrom slt_companion.allocator import tcmalloc_active\n"
                    "assert tcmalloc_active()\n```\n")
    run = execute_page(page, cache_dir=None, timeout=120)
    assert run.error is None, run.error


TRAIN = """
import hashlib, json, torch
from slt_companion.allocator import tcmalloc_active
from slt_companion.models import ICLTransformer
from slt_companion.data import ICLTaskSampler
from slt_companion.train import train
torch.set_num_threads(1)
smp = ICLTaskSampler(2, 8, noise_var=0.125, num_tasks=4, task_seed=0)
tr = train(ICLTransformer(2, 8, num_layers=2, num_heads=2, d_model=32, d_mlp=32, seed=0),
           lambda o, y: ((o - y) ** 2).mean(), smp.batch_fn(32), num_steps=60, schedule="constant",
           checkpoints=[0, 30, 60], progress=False, device="cpu")
print(json.dumps([tcmalloc_active(), hashlib.sha256(tr.params.numpy().tobytes()).hexdigest()]))
"""


@pytest.mark.skipif(allocator.tcmalloc_path() is None, reason=allocator.INSTALL_HINT)
def test_tcmalloc_runs_and_changes_no_bit():
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    outs = []
    for env in (dict(plain, SLT_MALLOC="system"), allocator.preload_env(dict(plain, SLT_MALLOC=""))):
        proc = subprocess.run([sys.executable, "-c", TRAIN], env=env, capture_output=True, text=True, cwd=str(ROOT))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "large alloc" not in proc.stderr
        outs.append(proc.stdout.strip().splitlines()[-1])
    (off, bits_off), (on, bits_on) = (__import__("json").loads(o) for o in outs)
    assert (off, on) == (False, True)
    assert bits_on == bits_off                     # the same trajectory, bit for bit
