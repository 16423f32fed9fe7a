"""slt_companion.distributed (sharding over torch.distributed ranks) and the ``llc_trajectory`` CLI, including real
2- and 3-process ``torchrun`` runs on gloo (CPU): the same numbers as one process, a failing rank, a dying rank,
more ranks than checkpoints, and checkpoint files that must be refused before any sampling."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slt_companion import llc_trajectory
from slt_companion.distributed import context, run_sharded, shard

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

# the model, losses and data of the CLI tests: a module written into tmp_path and put on PYTHONPATH
HELPER = '''
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def make_model():
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))


_calls = 0


def _rank1_after_a_few_calls():
    global _calls
    _calls += 1
    return dist.is_initialized() and dist.get_rank() == 1 and _calls > 50   # mid-run: 300 steps, a call each


def loss_raising_on_rank1(out, y):
    if _rank1_after_a_few_calls():
        raise RuntimeError("injected failure in the loss")
    return F.mse_loss(out, y)


def loss_dying_on_rank1(out, y):
    if _rank1_after_a_few_calls():
        os._exit(17)                     # the process dies outright: no exception, no report
    return F.mse_loss(out, y)
'''

SAMPLER = ["--num-chains", "2", "--num-draws", "200", "--num-burnin", "100", "--step-size", "1e-4",
           "--batch-size", "64", "--seed", "3"]


class NotTensors:
    """Saved with torch.save, this needs weights_only=False to load."""

    def __init__(self):
        self.weights = torch.zeros(3)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Three checkpoints of a short training run (step_10 < step_50 < step_150 only in natural order), data."""
    root = tmp_path_factory.mktemp("llc_traj")
    (root / "traj_helper.py").write_text(HELPER)
    spec = importlib.util.spec_from_file_location("traj_helper_for_training", root / "traj_helper.py")
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y = torch.tanh(x[:, :1] - 0.5 * x[:, 1:]) + 0.1 * torch.randn(256, 1, generator=g)
    torch.save({"x": x, "y": y}, root / "data.pt")
    torch.manual_seed(0)
    model = helper.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    ckpts = root / "ckpts"
    ckpts.mkdir()
    for step in range(1, 151):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if step in (10, 50, 150):
            torch.save(model.state_dict(), ckpts / f"step_{step}.pt")
    return root


def cli(root: Path, *args: str, nproc: int | None = None, loss: str = "mse", timeout: float = 120):
    """Run the CLI in a child process (under torchrun with ``nproc`` processes), one torch thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)])}
    launcher = [*TORCHRUN, "--nproc-per-node", str(nproc), "-m"] if nproc else [sys.executable, "-m"]
    base = ["slt_companion.llc_trajectory", "--model", "traj_helper:make_model", "--data", str(root / "data.pt"),
            "--loss", loss, *SAMPLER]
    return subprocess.run([*launcher, *base, *args], env=env, cwd=root, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------------------------- shard, run_sharded

@pytest.mark.parametrize("n, world", [(1, 1), (5, 1), (5, 2), (6, 3), (7, 3), (10, 4), (9, 9), (100, 7)])
def test_shard_is_balanced_contiguous_and_covers_every_item_once(n, world):
    blocks = [shard(n, r, world) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))                 # contiguous, in order, exactly once
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)                             # the first n % world ranks get more
    assert sum(s > n // world for s in sizes) == n % world


def test_shard_refuses_more_ranks_than_items_and_names_the_fix():
    with pytest.raises(ValueError, match=r"3 ranks for 2 work item.*torchrun --nproc-per-node 2"):
        shard(2, 0, 3)
    with pytest.raises(ValueError, match="rank must be < world_size"):
        shard(4, 2, 2)
    for bad in [dict(num_items=2.5), dict(rank=-1), dict(world_size=0), dict(world_size=True)]:
        kw = {"num_items": 4, "rank": 0, "world_size": 2, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            shard(**kw)


def test_run_sharded_without_a_process_group_runs_everything_here():
    assert context() == (0, 1)
    seen = []

    def fn(indices):
        seen.append(indices)
        return [i * i for i in indices]

    assert run_sharded(fn, 5) == [0, 1, 4, 9, 16] and seen == [[0, 1, 2, 3, 4]]
    assert run_sharded(fn, 3, distributed=False) == [0, 1, 4]
    with pytest.raises(ValueError, match="torchrun.*init"):
        run_sharded(fn, 3, distributed=True)
    with pytest.raises(ValueError, match="one per index"):
        run_sharded(lambda idx: idx[:-1], 3)
    with pytest.raises(ZeroDivisionError):                  # one process: the exception itself, unchanged
        run_sharded(lambda idx: [1 / 0], 1)


# -------------------------------------------------------------------------------------------- torchrun, gloo, CPU

def test_two_processes_give_the_numbers_of_one(problem):
    one = cli(problem, "--checkpoints", "ckpts", "--out", "one.json")
    assert one.returncode == 0, one.stderr
    two = cli(problem, "--checkpoints", "ckpts", "--out", "two.json", nproc=2)
    assert two.returncode == 0, two.stderr
    assert "2 process(es)" in two.stdout
    a, b = (json.loads((problem / name).read_text()) for name in ("one.json", "two.json"))
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["settings"] == b["settings"] and a["settings"]["num_draws"] == 200
    assert [r["path"] for r in a["checkpoints"]] == [f"ckpts/step_{s}.pt" for s in (10, 50, 150)]   # natural order
    for ra, rb in zip(a["checkpoints"], b["checkpoints"], strict=True):
        assert ra.keys() == rb.keys() == {"path", "mean", "sem", "std", "rhat", "ess", "converged", "stop_reason",
                                          "step_size", "num_draws"}
        for key, va in ra.items():
            if isinstance(va, float):
                assert rb[key] == pytest.approx(va, rel=0, abs=1e-9), (ra["path"], key)
            else:
                assert rb[key] == va, (ra["path"], key)
    assert not list(problem.glob(".*.tmp"))                 # the atomic write left no temporary file behind


@pytest.mark.parametrize("loss", ["loss_raising_on_rank1", "loss_dying_on_rank1"])
def test_a_failing_rank_fails_the_run_and_nothing_is_written(problem, loss):
    res = cli(problem, "--checkpoints", "ckpts", "--out", f"{loss}.json", nproc=2, loss=f"traj_helper:{loss}")
    assert res.returncode != 0
    assert not (problem / f"{loss}.json").exists()
    out = res.stdout + res.stderr
    if loss == "loss_raising_on_rank1":                     # reported by rank 0, with rank 1's traceback
        assert "rank(s) 1 of 2" in out and "injected failure in the loss" in out and "nothing written" in out
    else:                                                   # died outright: torchrun's agent tears the job down
        assert "exitcode" in out and "17" in out


def test_more_processes_than_checkpoints_is_refused_with_the_fix(problem):
    res = cli(problem, "--checkpoints", "ckpts/step_10.pt", "ckpts/step_50.pt", "--out", "three.json", nproc=3)
    assert res.returncode != 0
    assert "3 ranks for 2 work item(s)" in res.stderr and "torchrun --nproc-per-node 2" in res.stderr
    assert not (problem / "three.json").exists()


# ------------------------------------------------------------------------------------- bad inputs: exit code 2

def _run_in_process(problem, capsys, checkpoint: Path, data: Path | None = None) -> str:
    code = llc_trajectory.main(["--model", "traj_helper:make_model", "--checkpoints", str(checkpoint),
                                "--data", str(data or problem / "data.pt"), "--loss", "mse",
                                "--out", str(problem / "bad.json"), *SAMPLER])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(checkpoint) in err and "Traceback" not in err
    assert not (problem / "bad.json").exists()
    return err


@pytest.fixture
def on_path(problem, monkeypatch):
    monkeypatch.syspath_prepend(str(problem))
    return problem


@pytest.mark.parametrize("content", ["text", "truncated"])
def test_a_file_that_is_not_a_torch_file_is_refused(on_path, capsys, tmp_path, content):
    bad = tmp_path / "notes.pt"
    if content == "text":
        bad.write_text("these are not weights")
    else:
        whole = (on_path / "ckpts" / "step_10.pt").read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    assert "not a readable torch file" in _run_in_process(on_path, capsys, bad)


def test_a_state_dict_of_the_wrong_shape_is_refused(on_path, capsys, tmp_path):
    sd = torch.load(on_path / "ckpts" / "step_10.pt", weights_only=True)
    sd["0.weight"] = torch.zeros(5, 2)
    torch.save(sd, tmp_path / "wrong_shape.pt")
    err = _run_in_process(on_path, capsys, tmp_path / "wrong_shape.pt")
    assert "does not fit the --model template" in err and "0.weight" in err


def test_a_pickle_that_needs_unsafe_loading_is_refused(on_path, capsys, tmp_path):
    torch.save({"model": NotTensors()}, tmp_path / "pickled_object.pt")
    err = _run_in_process(on_path, capsys, tmp_path / "pickled_object.pt")
    assert "cannot be loaded safely" in err and "model.state_dict()" in err


def test_a_file_that_is_not_a_state_dict_is_refused(on_path, capsys, tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "a_list.pt")
    assert "not a state dict" in _run_in_process(on_path, capsys, tmp_path / "a_list.pt")


def test_a_checkpoint_holding_nan_is_refused(on_path, capsys, tmp_path):
    sd = torch.load(on_path / "ckpts" / "step_10.pt", weights_only=True)
    sd["2.bias"] = torch.full_like(sd["2.bias"], float("nan"))
    torch.save(sd, tmp_path / "diverged.pt")
    assert "2.bias hold NaN/inf" in _run_in_process(on_path, capsys, tmp_path / "diverged.pt")


def test_data_that_does_not_fit_the_model_is_refused_before_sampling(on_path, capsys, tmp_path):
    torch.save((torch.randn(16, 3), torch.randn(16, 1)), tmp_path / "three_features.pt")
    err = _run_in_process(on_path, capsys, on_path / "ckpts" / "step_10.pt", data=tmp_path / "three_features.pt")
    assert "model(x) failed" in err


def test_an_out_path_that_cannot_be_written_is_refused_before_sampling(on_path, capsys, tmp_path, monkeypatch):
    import slt_companion.llc

    def no_sampling(*_, **__):
        raise AssertionError("sampling started")

    monkeypatch.setattr(slt_companion.llc, "estimate_llcs", no_sampling)
    (tmp_path / "a_file").write_text("")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_mkstemp = llc_trajectory.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):          # a folder that refuses files (chmod does not stop root)
        if Path(dir) == read_only:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kw)

    monkeypatch.setattr(llc_trajectory.tempfile, "mkstemp", mkstemp)
    for out, says in [(tmp_path / "a_file" / "llc.json", "is a file, not a folder"),
                      (read_only / "llc.json", r"cannot write in its folder \(Permission denied\)"),
                      (read_only / "new" / "llc.json", "where its folder .*new would be created"),
                      (tmp_path, "is a folder")]:
        code = llc_trajectory.main(["--model", "traj_helper:make_model", "--checkpoints", str(on_path / "ckpts"),
                                    "--data", str(on_path / "data.pt"), "--loss", "mse", "--out", str(out), *SAMPLER])
        err = capsys.readouterr().err
        assert code == 2 and "--out" in err and "Traceback" not in err, err
        assert re.search(says, err), err
    assert sorted(p.name for p in read_only.iterdir()) == [] and not (read_only / "new").exists()


# ------------------------------------------------------------------------------------------- torchrun, NCCL, GPU

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nccl_ranks_on_gpus_give_the_numbers_of_one_gpu_process(problem):
    """Under torchrun with --device cuda the process group is NCCL, one GPU per rank (as many ranks as GPUs, at most
    the 3 checkpoints). One rank repeats the one-process run exactly; several ranks batch other checkpoints
    together, and the GPU's kernels round differently for other shapes, so they agree within chain noise."""
    nproc = min(torch.cuda.device_count(), 3)
    one = cli(problem, "--checkpoints", "ckpts", "--out", "gpu_one.json", "--device", "cuda")
    assert one.returncode == 0, one.stderr
    ranks = cli(problem, "--checkpoints", "ckpts", "--out", "gpu_nccl.json", "--device", "cuda", nproc=nproc)
    assert ranks.returncode == 0, ranks.stderr
    a, b = (json.loads((problem / name).read_text()) for name in ("gpu_one.json", "gpu_nccl.json"))
    assert (a["world_size"], b["world_size"]) == (1, nproc)
    for ra, rb in zip(a["checkpoints"], b["checkpoints"], strict=True):
        tol = 1e-6 * (1 + abs(ra["mean"])) if nproc == 1 else 0.5 * ra["sem"]
        assert abs(rb["mean"] - ra["mean"]) <= tol, (ra, rb)


@pytest.mark.parametrize("bad", [["--num-chains", "0"], ["--batch-size", "0"], ["--localization", "-1"]])
def test_bad_sampler_numbers_exit_2_naming_them(problem, capsys, bad):
    code = llc_trajectory.main(["--model", "traj_helper:make_model", "--checkpoints", str(problem / "ckpts"),
                                "--data", str(problem / "data.pt"), "--loss", "mse",
                                "--out", str(problem / "bad.json"), *SAMPLER, *bad])
    err = capsys.readouterr().err
    assert code == 2 and bad[0][2:].replace("-", "_") in err and "Traceback" not in err, err
    assert not (problem / "bad.json").exists()
