"""λ̂ at the checkpoints of a training run: one at a time against batched, and one process against two.

    .venv/bin/python benchmarks/llc_checkpoints.py [--quick] [--checkpoints 8] [--threads 1] [--repeats 2]

Both sides are this package, on this CPU, with the same fixed sampler settings (chains, burn-in, draws, step size,
nβ, seed) for every checkpoint:

(a) in one process, ``[estimate_llc(m, ...) for m in checkpoints]`` against ``estimate_llcs(checkpoints, ...)``
    (checkpoints as chains): the faster of ``--repeats`` alternating measurements of each, the ratio
    *loop / batched* (above 1: batched faster) and the largest difference between their means (the two must agree;
    on a CPU they are equal bit for bit);
(b) the command-line tool ``python -m slt_companion.llc_trajectory`` on the same checkpoints saved as state dicts,
    launched with ``torchrun --standalone --nproc-per-node P`` for P = 1 and 2 (gloo, one thread per process): wall
    time including each process's start-up (importing torch, forming the process group), the ratio *one process /
    two*, and the largest difference between their means and (a)'s;
(c) the same as (a) for a *refined* LLC: only the last layer sampled (``params=``), every other weight held at its
    checkpoint's values (each chain of the batched run carries its checkpoint's frozen weights).

(d) ``chunk_size``: Part III's transformers (the cases of ``fast_paths.py``: the in-context regression transformer,
    the language model, and the language model with one head sampled), 8 untrained checkpoints x 4 chains at the
    chapters' settings, sampled 8 checkpoints to a run (``CHECKPOINTS_PER_RUN``) against the default
    (``chunk_size=None``: :func:`~slt_companion.llc.auto_chunk_size`, 1 on a CPU for these): milliseconds per
    chain-step of each, from the difference of a short and a long run, the faster of ``--repeats`` alternating
    measurements, and the ratio *8 per run / default* (above 1: the default is faster).

The model of (a)-(c) is an MLP trained briefly on teacher-student data; the checkpoints are log-spaced steps of its
training. Writes ``benchmarks/results/llc_checkpoints.json`` and prints a table.
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

# the model, as a module the CLI can import (--model bench_model:build); this script trains it too
MODEL_SOURCE = '''
from torch import nn

WIDTHS = {widths!r}


def build():
    layers = []
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)
'''


def make_checkpoints(work: Path, *, widths, n, num_checkpoints, train_steps, seed):
    """Train the MLP with full-batch Adam and save ``num_checkpoints`` log-spaced steps (state dicts), and the data."""
    import numpy as np
    import torch

    from slt_companion.data import teacher_student

    (work / "bench_model.py").write_text(MODEL_SOURCE.format(widths=list(widths)))
    sys.path.insert(0, str(work))
    import bench_model

    d = teacher_student(n, widths[0], widths[-1], 2, seed=seed)
    torch.save({"x": d.x, "y": d.y}, work / "data.pt")
    torch.manual_seed(seed)
    model = bench_model.build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = np.unique(np.geomspace(10, train_steps, num_checkpoints).round().astype(int)).tolist()
    if len(steps) < num_checkpoints:                         # too many for log spacing: evenly spaced instead
        steps = np.linspace(train_steps / num_checkpoints, train_steps, num_checkpoints).round().astype(int).tolist()
    (work / "ckpts").mkdir()
    models = []
    from slt_companion.llc import half_mse

    for step in range(1, train_steps + 1):
        opt.zero_grad()
        half_mse(model(d.x), d.y).backward()
        opt.step()
        if step in steps:
            torch.save(model.state_dict(), work / "ckpts" / f"step_{step}.pt")
            m = bench_model.build()
            m.load_state_dict(model.state_dict())
            models.append(m)
    return models, d, steps


def chunk_ratios(quick: bool, repeats: int) -> dict:
    """(d): per Part III transformer, ms per chain-step with the default ``chunk_size`` and with 8 to a run."""
    sys.path.insert(0, str(HERE))
    from fast_paths import alternating_per_step, cases, timed_run

    from slt_companion.llc import CHECKPOINTS_PER_RUN, auto_chunk_size

    short, long = (2, 6) if quick else (4, 24)
    out = {}
    for name, (make, loss, xy, kw) in cases(quick).items():
        models = make()
        auto = auto_chunk_size(models[0], loss, xy, num_chains=kw["num_chains"], batch_size=kw["batch_size"],
                               params=kw.get("params"))

        def run(side, steps):
            return timed_run(models, loss, xy, dict(kw, chunk_size=None if side == "default" else CHECKPOINTS_PER_RUN),
                             steps)

        for side in ("default", "eight"):                          # warm-up: the losses at the centres
            run(side, 1)
        per_step, means = alternating_per_step(run, ["default", "eight"], short=short, long=long, repeats=repeats)
        chain_steps = len(models) * kw["num_chains"]
        out[name] = {"auto_chunk": auto, "checkpoints": len(models),
                     "ms_per_chain_step_default": 1000 * per_step["default"] / chain_steps,
                     "ms_per_chain_step_8": 1000 * per_step["eight"] / chain_steps,
                     "ratio_8_over_default": per_step["eight"] / per_step["default"],
                     "max_abs_diff_means": max(abs(a - b) for a, b in zip(means["default"], means["eight"]))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    ap.add_argument("--checkpoints", type=int, default=None, help="number of checkpoints (default 8, quick 4)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in this process (default 1)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating measurements of (a), the faster kept")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        os.environ["SLT_QUICK"] = "1"
    import torch

    from slt_companion.convergence import LLCConvergenceWarning
    from slt_companion.diagnostics import NegativeLLCWarning
    from slt_companion.llc import estimate_llc, estimate_llcs, half_mse
    from slt_companion.sampling import clear_center_losses

    warnings.simplefilter("ignore", LLCConvergenceWarning)   # fixed short runs: convergence is reported, not warned
    warnings.simplefilter("ignore", NegativeLLCWarning)
    torch.set_num_threads(args.threads)
    M = args.checkpoints or (4 if args.quick else 8)
    size = dict(widths=[5, 8, 5], n=2_000, train_steps=200) if args.quick else \
        dict(widths=[5, 16, 16, 5], n=10_000, train_steps=2_000)
    L = dict(num_chains=4, num_draws=100 if args.quick else 1000, num_burnin=20 if args.quick else 200,
             step_size=1e-4, localization=1.0, batch_size=500, seed=0)

    with tempfile.TemporaryDirectory(prefix="slt-bench-ckpts-") as tmp:
        work = Path(tmp)
        models, d, steps = make_checkpoints(work, num_checkpoints=M, seed=0, **size)
        print(f"{M} checkpoints (steps {steps}) of an MLP {size['widths']} on n = {size['n']}; "
              f"{L['num_chains']} chains x ({L['num_burnin']} + {L['num_draws']}) steps each, "
              f"step size {L['step_size']:g}", flush=True)

        def loop_and_batched(**kw):
            """Alternating timings (a change in load hits both) of the loop and the batched call, their results."""
            t_loop, t_batch = [], []
            for _ in range(args.repeats):
                clear_center_losses()      # each way pays its own pass over the data at every checkpoint
                t = time.perf_counter()
                loop = [estimate_llc(m, half_mse, d.xy, progress=False, **kw, **L) for m in models]
                t_loop.append(time.perf_counter() - t)
                clear_center_losses()
                t = time.perf_counter()
                batched = estimate_llcs(models, half_mse, d.xy, progress=False, **kw, **L)
                t_batch.append(time.perf_counter() - t)
            return t_loop, t_batch, loop, batched, max(abs(a.mean - b.mean) for a, b in zip(loop, batched))

        # (a) one process: a loop of estimate_llc against estimate_llcs
        t_loop, t_batch, loop, batched, diff_a = loop_and_batched()
        # (c) a refined LLC (the last layer only) over the checkpoints: loop against batched
        last = [n for n, _ in models[0].named_parameters()][-2:]          # the last Linear's weight and bias
        t_rloop, t_rbatch, _, _, diff_c = loop_and_batched(params=last)

        # (b) the CLI under torchrun, one and two processes
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in [str(work), str(ROOT), os.environ.get("PYTHONPATH")] if p)}
        cli = ["-m", "slt_companion.llc_trajectory", "--model", "bench_model:build", "--checkpoints", "ckpts",
               "--data", "data.pt", "--loss", "half_mse", "--num-chains", str(L["num_chains"]),
               "--num-draws", str(L["num_draws"]), "--num-burnin", str(L["num_burnin"]),
               "--step-size", str(L["step_size"]), "--localization", str(L["localization"]),
               "--batch-size", str(L["batch_size"]), "--seed", str(L["seed"])]
        runs = {}
        for procs in (1, 2):
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
            t = time.perf_counter()
            proc = subprocess.run([*launcher, *cli, "--out", f"llc_{procs}.json"], cwd=work, env=env,
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - t
            if proc.returncode != 0:
                print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"the CLI failed with {procs} process(es)")
            result = json.loads((work / f"llc_{procs}.json").read_text())
            runs[procs] = {"seconds": seconds, "world_size": result["world_size"],
                           "means": [r["mean"] for r in result["checkpoints"]]}
        diff_b = max(abs(a - b) for a, b in zip(runs[1]["means"], runs[2]["means"]))
        diff_cli_vs_a = max(abs(a - e.mean) for a, e in zip(runs[1]["means"], batched))

    chunks = chunk_ratios(args.quick, args.repeats)

    ratio_a = min(t_loop) / min(t_batch)
    ratio_b = runs[1]["seconds"] / runs[2]["seconds"]
    ratio_c = min(t_rloop) / min(t_rbatch)
    rows = [{"checkpoint_step": s, "loop": a.mean, "batched": b.mean, "cli_1": c1, "cli_2": c2,
             "rhat": b.rhat, "ess": b.ess, "converged": b.converged}
            for s, a, b, c1, c2 in zip(steps, loop, batched, runs[1]["means"], runs[2]["means"])]
    print(f"\n{'step':>6} {'loop':>10} {'batched':>10} {'CLI, 1 proc':>12} {'CLI, 2 procs':>13} {'R-hat':>7} "
          f"{'ESS':>6}")
    for r in rows:
        print(f"{r['checkpoint_step']:>6} {r['loop']:>10.4f} {r['batched']:>10.4f} {r['cli_1']:>12.4f} "
              f"{r['cli_2']:>13.4f} {r['rhat']:>7.3f} {r['ess']:>6.0f}")
    print(f"\n(a) one process, {args.threads} thread(s): loop of estimate_llc {min(t_loop):.2f} s, estimate_llcs "
          f"{min(t_batch):.2f} s: ratio loop / batched = {ratio_a:.2f}; max |difference of means| = {diff_a:.3g}")
    print(f"(c) refined LLC of {last}, one process: loop {min(t_rloop):.2f} s, batched {min(t_rbatch):.2f} s: "
          f"ratio loop / batched = {ratio_c:.2f}; max |difference of means| = {diff_c:.3g}")
    print(f"(b) CLI under torchrun, start-up included: 1 process {runs[1]['seconds']:.1f} s, 2 processes "
          f"{runs[2]['seconds']:.1f} s: ratio 1 / 2 = {ratio_b:.2f}; max |difference of means| 1 vs 2 = "
          f"{diff_b:.3g}, CLI vs (a) = {diff_cli_vs_a:.3g}")

    for name, r in chunks.items():
        print(f"(d) {name}: default chunk_size {r['auto_chunk']}: {r['ms_per_chain_step_default']:.2f} ms per "
              f"chain-step; 8 per run: {r['ms_per_chain_step_8']:.2f}; ratio 8 / default = {r['ratio_8_over_default']:.2f}; "
              f"max |difference of means| = {r['max_abs_diff_means']:.3g}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": args.threads, "quick": args.quick,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "llc_checkpoints.json").write_text(json.dumps({
        "meta": meta, "model_widths": size["widths"], "n": size["n"], "checkpoint_steps": steps, "settings": L,
        "in_process": {"seconds_loop": t_loop, "seconds_batched": t_batch, "ratio_loop_over_batched": ratio_a,
                       "max_abs_diff_means": diff_a},
        "refined_in_process": {"params": last, "seconds_loop": t_rloop, "seconds_batched": t_rbatch,
                               "ratio_loop_over_batched": ratio_c, "max_abs_diff_means": diff_c},
        "cli": {"seconds_1_process": runs[1]["seconds"], "seconds_2_processes": runs[2]["seconds"],
                "ratio_1_over_2": ratio_b, "world_sizes": [runs[1]["world_size"], runs[2]["world_size"]],
                "max_abs_diff_means_1_vs_2": diff_b, "max_abs_diff_means_cli_vs_in_process": diff_cli_vs_a},
        "chunk_size": chunks, "checkpoints": rows}, indent=1))
    print(f"wrote {out / 'llc_checkpoints.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
