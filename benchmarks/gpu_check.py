"""What a CUDA GPU buys for the book's heaviest computations, measured against the CPU of the same machine.

    python benchmarks/gpu_check.py [--quick] [--sections abc] [--out DIR]

Needs a CUDA GPU (without one it exits with code 3, which ``run_all.py`` reports as "not run on this machine").
Both sides are this package in one process, with the same settings; every timing follows a warm-up on its device
and ends with ``torch.cuda.synchronize()``:

(a) **training**: the in-context-regression transformer of Part III (``ICLTransformer``, 53k parameters) trained
    with ``slt_companion.train.train`` for a fixed number of Adam steps at the chapter's batch size; ms per step;
(b) **λ̂ at checkpoints, batched** (``estimate_llcs``, checkpoints as chains): that model's checkpoints, 4 chains
    each, at two minibatch sizes -- the chapter's (12 sequences per chain and step) and the paper's (1,024) --
    fixed draws, the chapter's step size, nβ and γ; ms per SGLD step of all chains together (on the GPU twice:
    with the noise drawn there, the default, and drawn on the CPU and copied over, ``sampling.DEVICE_NOISE =
    False``), and the largest difference between the CPU's and the GPU's mean λ̂ in units of the larger chain
    standard deviation (the GPU draws its own noise and its kernels round differently, so the two agree in
    distribution, not digit for digit);
(c) **the command-line tool on the GPU**: ``python -m slt_companion.llc_trajectory --device cuda`` on the same
    checkpoints saved as state dicts, in one process and under ``torchrun --nproc-per-node 1`` (which forms an
    NCCL process group); the two must give the same numbers. With one GPU no collective runs across ranks: NCCL
    with several ranks is not exercised by this script.

Writes ``DIR/gpu_check.json`` (default ``benchmarks/results``) and prints a table. Ratios above 1: the GPU is
faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slt_companion import sampling  # noqa: E402
from slt_companion.convergence import LLCConvergenceWarning  # noqa: E402
from slt_companion.diagnostics import NegativeLLCWarning  # noqa: E402
from slt_companion.data import ICLTaskSampler, icl_regression  # noqa: E402
from slt_companion.llc import estimate_llcs  # noqa: E402
from slt_companion.models import ICLTransformer  # noqa: E402
from slt_companion.train import icl_settings, log_checkpoint_steps, train  # noqa: E402


def mse(out, y):
    """The chapter's per-token mean squared error (``torch.nn.functional.mse_loss``, the CLI's ``mse``)."""
    return ((out - y) ** 2).mean()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_training(device: str, sampler: ICLTaskSampler, batch_size: int, steps: int) -> float:
    """ms per training step on ``device`` after a 20-step warm-up (a fresh model each time, no cache)."""
    train(ICLTransformer(seed=0), mse, sampler.batch_fn(batch_size), num_steps=20, progress=False, device=device)
    sync(device)
    t0 = time.perf_counter()
    train(ICLTransformer(seed=0), mse, sampler.batch_fn(batch_size), num_steps=steps, progress=False, device=device)
    sync(device)
    return 1e3 * (time.perf_counter() - t0) / steps


def time_llcs(device: str, states: list[dict], data, settings: dict) -> tuple[float, list]:
    """ms per SGLD step (burn-in + draws of ``settings``) of ``estimate_llcs`` over ``states`` on ``device``, after
    a short warm-up, and the estimates."""
    template = ICLTransformer(seed=0).to(device)
    xy = tuple(t.to(device) for t in data.xy)
    models = []
    for s in states:
        m = ICLTransformer(seed=0)
        m.load_state_dict(s)
        models.append(m.to(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)    # fixed short runs: timing, not estimates
        warnings.simplefilter("ignore", NegativeLLCWarning)
        estimate_llcs(models, mse, xy, template=template, **{**settings, "num_burnin": 2, "num_draws": 3})
        sync(device)
        t0 = time.perf_counter()
        ests = estimate_llcs(models, mse, xy, template=template, **settings)
        sync(device)
    return 1e3 * (time.perf_counter() - t0) / (settings["num_burnin"] + settings["num_draws"]), ests


def run_cli(work: Path, device: str, nproc: int | None, out: str, settings: dict, timeout: float = 300) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m"]
                if nproc else [sys.executable, "-m"])
    args = ["slt_companion.llc_trajectory", "--model", "slt_companion.models:ICLTransformer",
            "--checkpoints", str(work / "ckpts"), "--data", str(work / "data.pt"), "--loss", "mse",
            "--out", str(work / out), "--device", device, "--num-chains", str(settings["num_chains"]),
            "--num-draws", str(settings["num_draws"]), "--num-burnin", str(settings["num_burnin"]),
            "--step-size", str(settings["step_size"]), "--nbeta", str(settings["nbeta"]),
            "--localization", str(settings["localization"]), "--batch-size", str(settings["batch_size"]),
            "--seed", "0"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([*launcher, *args], env=env, cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return {"ok": False, "timeout": timeout, "stdout": str(err.stdout)[-2000:], "stderr": str(err.stderr)[-3000:]}
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"ok": False, "returncode": proc.returncode, "stderr": proc.stderr[-3000:]}
    rows = json.loads((work / out).read_text())
    return {"ok": True, "seconds": seconds, "world_size": rows["world_size"],
            "means": [r["mean"] for r in rows["checkpoints"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--sections", default="abc", help="which of (a), (b), (c) to run (default all: abc)")
    ap.add_argument("--gpu", default="cuda",
                    help="the accelerator side (default cuda; 'cpu' only smoke-tests the script)")
    args = ap.parse_args()
    gpu = args.gpu
    if gpu.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to measure")
        from run_all import NOT_HERE

        return NOT_HERE
    q = args.quick
    S = icl_settings()
    task = S["task"]
    sampler = ICLTaskSampler(task["task_dim"], task["num_examples"], noise_var=task["noise_var"])
    env = {"gpu": torch.cuda.get_device_name(0) if gpu.startswith("cuda") else gpu, "torch": torch.__version__,
           "cuda": torch.version.cuda,
           "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d")}
    print(f"{env['gpu']}; torch {env['torch']} (CUDA {env['cuda']}); CPU side: {env['cpu_threads']} torch threads "
          f"of {env['cpu_count']} CPUs")
    results: dict = {"env": env, "quick": q}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))

    if "a" in args.sections:
        # (a) training
        steps = 20 if q else 200
        train_ms = {side: time_training(dev, sampler, 64, steps) for side, dev in (("cpu", "cpu"), ("gpu", gpu))}
        results["training"] = {"batch_size": 64, "steps": steps, "ms_per_step": train_ms,
                               "ratio_cpu_over_gpu": train_ms["cpu"] / train_ms["gpu"]}
        print(f"(a) training, batch 64: CPU {train_ms['cpu']:.1f} ms/step, GPU {train_ms['gpu']:.1f} ms/step, "
              f"ratio {train_ms['cpu'] / train_ms['gpu']:.1f}")

        save()

    # checkpoints: a short training run of the chapter's model, log-spaced
    num_ckpts = 4 if q else 8
    train_steps = 100 if q else 1000
    traj = train(ICLTransformer(seed=0), mse, sampler.batch_fn(64), num_steps=train_steps, lr=3e-3,
                 checkpoints=log_checkpoint_steps(train_steps, num_ckpts), seed=0, device=gpu, progress=False)
    states = [{k: v.cpu() for k, v in traj.model_at(i, ICLTransformer(seed=0)).state_dict().items()}
              for i in range(len(traj))]
    data = icl_regression(256 if q else 4096, seed=1)
    L = S["llc"]

    if "b" in args.sections:
        # (b) batched λ̂ at the chapter's and the paper's minibatch size
        results["llc"] = []
        for batch, cpu_steps, gpu_steps in [(12, 20 if q else 100, 20 if q else 400),
                                            (1024, 3 if q else 10, 10 if q else 100)]:
            row = {"checkpoints": len(states), "num_chains": L["num_chains"], "batch_size": batch}
            times, means, stds = {}, {}, {}
            # "gpu_host_noise": the GPU run with its noise drawn on the CPU and copied over (sampling.DEVICE_NOISE
            # = False, the sampler before 2026-11-30's change), beside the default (noise drawn on the GPU)
            sides = (("cpu", "cpu", cpu_steps), ("gpu_host_noise", gpu, gpu_steps), ("gpu", gpu, gpu_steps))
            for side, dev, n in sides:
                settings = dict(num_chains=L["num_chains"], num_burnin=0, num_draws=n, step_size=L["step_size"],
                                nbeta=L["nbeta"], localization=L["localization"], batch_size=batch, seed=0,
                                progress=False)
                before, sampling.DEVICE_NOISE = sampling.DEVICE_NOISE, side != "gpu_host_noise"
                try:
                    times[side], ests = time_llcs(dev, states, data, settings)
                finally:
                    sampling.DEVICE_NOISE = before
                means[side] = [e.mean for e in ests]
                stds[side] = [e.std for e in ests]
            row.update(steps={"cpu": cpu_steps, "gpu": gpu_steps}, ms_per_step=times,
                       ratio_cpu_over_gpu=times["cpu"] / times["gpu"],
                       ratio_host_noise_over_device_noise=times["gpu_host_noise"] / times["gpu"],
                       mean_lambda=means, std_lambda=stds)
            results["llc"].append(row)
            print(f"(b) λ̂ at {len(states)} checkpoints × {L['num_chains']} chains, batch {batch}: CPU "
                  f"{times['cpu']:.1f} ms/step, GPU {times['gpu']:.1f} ms/step, "
                  f"ratio {times['cpu'] / times['gpu']:.1f}; GPU with the noise drawn on the CPU "
                  f"{times['gpu_host_noise']:.1f} ms/step ({times['gpu_host_noise'] / times['gpu']:.1f}x the GPU's)")

        # agreement of the estimates in distribution: the same draws count on both devices
        settings = dict(num_chains=L["num_chains"], num_burnin=20 if q else 200, num_draws=40 if q else 300,
                        step_size=L["step_size"], nbeta=L["nbeta"], localization=L["localization"],
                        batch_size=L["batch_size"], seed=0, progress=False)
        agree = {}
        for side, dev in (("cpu", "cpu"), ("gpu", gpu)):
            _, ests = time_llcs(dev, states, data, settings)            # the estimates, not the time
            agree[side] = [(e.mean, e.std) for e in ests]
        z = max(abs(a[0] - b[0]) / max(a[1], b[1], 1e-12) for a, b in zip(agree["cpu"], agree["gpu"]))
        results["agreement"] = {"settings": {k: v for k, v in settings.items() if k != "progress"},
                                "cpu": agree["cpu"], "gpu": agree["gpu"], "max_diff_in_chain_sd": z}
        print(f"    CPU and GPU λ̂ ({settings['num_burnin']} + {settings['num_draws']} steps): largest difference "
              f"{z:.2f} chain standard deviations")
        for (mc, sc), (mg, sg) in zip(agree["cpu"], agree["gpu"]):
            print(f"      CPU {mc:10.4f} ± {sc:6.3f}   GPU {mg:10.4f} ± {sg:6.3f}")

        save()

    ok = True
    if "c" in args.sections:
        # (c) the CLI on the GPU, one process and under torchrun (NCCL)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "ckpts").mkdir()
            for i, s in enumerate(states):
                torch.save(s, work / "ckpts" / f"step_{i}.pt")
            x, y = data.xy
            torch.save({"x": x, "y": y}, work / "data.pt")
            cli_settings = dict(num_chains=L["num_chains"], num_burnin=10 if q else 50, num_draws=20 if q else 100,
                            step_size=L["step_size"], nbeta=L["nbeta"], localization=L["localization"],
                            batch_size=L["batch_size"])
            one = run_cli(work, gpu, None, "one.json", cli_settings)
            nccl = run_cli(work, gpu, 1, "nccl.json", cli_settings)
        results["cli"] = {"one_process": one, "torchrun_nccl_1": nccl}
        if one["ok"] and nccl["ok"]:
            diff = max(abs(a - b) for a, b in zip(one["means"], nccl["means"]))
            results["cli"]["max_abs_diff"] = diff
            print(f"(c) CLI on the GPU: one process {one['seconds']:.1f} s, torchrun + NCCL (1 rank) "
                  f"{nccl['seconds']:.1f} s; largest difference in λ̂ {diff:.3g}")
        else:
            print("(c) CLI on the GPU FAILED:", json.dumps({"one": one, "nccl": nccl}, indent=1)[:4000])

        ok = one["ok"] and nccl["ok"]
        save()

    print(f"wrote {out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
