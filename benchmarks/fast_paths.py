"""The transformers' batched fast paths against ``vmap``: time per SGLD step, same process, same chains.

    .venv/bin/python benchmarks/fast_paths.py [--quick] [--repeats 3] [--threads 1] [--cases icl,lm,lm-head]

Both sides are this package. For Part III's two transformers at the chapters' sampler settings (checkpoints as
chains, as ``llc_over_trajectory`` runs them), ``estimate_llcs`` runs once with the model's ``forward_batched``
(and ``lm_loss.batched``) and once with them switched off, so that the sampler calls the model through
``torch.func.functional_call`` under ``vmap``:

- ``icl``: :class:`ICLTransformer` (53k parameters), 8 checkpoints x 4 chains, minibatch 12 sequences, every
  parameter sampled (the in-context regression chapters);
- ``lm``: :class:`AttentionOnlyLM` (vocabulary 98, context 32), 8 checkpoints x 4 chains, minibatch 32, every
  parameter sampled (the language-model chapter);
- ``lm-head``: the same with one head sampled (``params="blocks.1.heads.2"``, the refined LLC of the heads
  chapter): the other weights reach the fast path as shared matrices.

Time per step is the difference between runs of ``long`` and ``short`` steps divided by the difference in steps
(start-up and the losses at the centres cancel), the faster of ``--repeats`` alternating measurements; the ratio is
*vmap / fast* (above 1: the fast path is faster). The two sides must agree: the largest difference between their
λ̂ is reported (same noise and minibatches; only the rounding of the arithmetic differs; above 1e-3 of λ̂ the
script fails). The fast path is timed a third time through :func:`torch.compile` (``sampling.COMPILE = True``): the
ratio *fast / compiled* (above 1: compiled faster) and the seconds of the first, compiling run. Writes
``benchmarks/results/fast_paths.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def cases(quick: bool):
    import torch

    from slt_companion.data import icl_regression
    from slt_companion.models import AttentionOnlyLM, ICLTransformer
    from slt_companion.train import icl_settings, lm_loss

    L = icl_settings()["llc"]
    icl_data = icl_regression(512 if quick else 4096, seed=1)

    def mse(out, y):
        return ((out - y) ** 2).mean()

    gen = torch.Generator().manual_seed(0)
    n = 256 if quick else 2048
    lm_xy = (torch.randint(0, 98, (n, 32), generator=gen), torch.randint(0, 98, (n, 32), generator=gen))
    lm_kw = dict(batch_size=32, step_size=1e-3, nbeta=30.0, localization=200.0)
    M = 2 if quick else 8
    return {
        "icl": (lambda: [ICLTransformer(seed=s) for s in range(M)], mse, icl_data.xy,
                dict(num_chains=4, batch_size=L["batch_size"], step_size=L["step_size"], nbeta=L["nbeta"],
                     localization=L["localization"])),
        "lm": (lambda: [AttentionOnlyLM(98, n_ctx=32, seed=s) for s in range(M)], lm_loss, lm_xy,
               dict(num_chains=4, **lm_kw)),
        "lm-head": (lambda: [AttentionOnlyLM(98, n_ctx=32, seed=s) for s in range(M)], lm_loss, lm_xy,
                    dict(num_chains=4, params="blocks.1.heads.2", **lm_kw)),
    }


def timed_run(models, loss, xy, kw, steps):
    from slt_companion.llc import estimate_llcs

    start = time.perf_counter()
    ests = estimate_llcs(models, loss, xy, num_burnin=0, num_draws=steps, seed=0, progress=False, **kw)
    return time.perf_counter() - start, [e.mean for e in ests]


def alternating_per_step(run, sides, *, short, long, repeats):
    """Seconds per step of each side, the faster of ``repeats`` alternating measurements of
    ``(t(long) - t(short)) / (long - short)``, where ``run(side, steps)`` returns ``(seconds, λ̂ means)``.
    Returns ``(per_step, means)``, the means of each side's last long run."""
    per_step = {side: float("inf") for side in sides}
    means = {}
    for _ in range(repeats):
        for side in sides:
            t_short, _ = run(side, short)
            t_long, means[side] = run(side, long)
            per_step[side] = min(per_step[side], (t_long - t_short) / (long - short))
    return per_step, means


def common_args(argv, description, cases_default):
    """The options every timing script here shares; returns ``(args, (short, long))`` and sets torch's threads."""
    import torch

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", default=cases_default, help=f"comma-separated subset of {cases_default}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")            # untrained checkpoints: λ̂ is not an estimate here, only the time is
    return args, ((2, 6) if args.quick else (4, 24))


def run_cases(args, cases: dict, measure, describe, *, short: int, long: int) -> dict:
    """``measure(*case, short=, long=, repeats=)`` for each case named in ``--cases``, printing ``describe(name,
    result)`` as each finishes; returns ``{name: result}``."""
    results = {}
    for name, case in cases.items():
        if name not in args.cases.split(","):
            continue
        results[name] = measure(*case, short=short, long=long, repeats=1 if args.quick else args.repeats)
        print(describe(name, results[name]), flush=True)
    return results


def write_results(name: str, args, steps, results: dict, *, disagree: str | None = None, **extra) -> int:
    """Write ``benchmarks/results/{name}.json`` (the settings, the machine, ``extra`` and ``results``); return 1,
    printing ``disagree`` and the cases, if any case's ``agree`` is false (``disagree=None``: no such check), else 0."""
    import torch

    out = {"quick": args.quick, "threads": args.threads, "repeats": 1 if args.quick else args.repeats,
           "steps": list(steps), "python": platform.python_version(), "torch": torch.__version__,
           "cpus": os.cpu_count(), "machine": platform.machine(), **extra, "cases": results}
    dest = HERE / "results"
    dest.mkdir(exist_ok=True)
    (dest / f"{name}.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {dest / f'{name}.json'}")
    bad = [k for k, r in results.items() if disagree is not None and not r["agree"]]
    if bad:
        print(f"{disagree}: {', '.join(bad)}")
        return 1
    return 0


def measure(make, loss, xy, kw, *, short, long, repeats):
    models = make()
    slow_models = make()
    for m in slow_models:
        m.forward_batched = None                                   # the sampler then vmaps model.forward

    def slow_loss(out, y):                                         # the loss without a batched attribute
        return loss(out, y)

    from slt_companion import sampling

    sides = {"fast": (models, loss), "vmap": (slow_models, slow_loss), "compiled": (models, loss)}

    def run(side, n):
        sampling.COMPILE = side == "compiled"                     # the fast path through torch.compile, or eager
        try:
            return timed_run(*sides[side], xy, kw, n)
        finally:
            sampling.COMPILE = "auto"

    for side in sides:                       # warm-up: the losses at the centres (and the compilation, timed)
        t0 = time.perf_counter()
        run(side, 1)
        if side == "compiled":
            compile_seconds = time.perf_counter() - t0
    per_step, means = alternating_per_step(run, sides, short=short, long=long, repeats=repeats)
    diff = max(abs(a - b) for a, b in zip(means["fast"], means["vmap"]))
    diff_c = max(abs(a - b) for a, b in zip(means["fast"], means["compiled"]))
    scale = max([1.0] + [abs(v) for v in means["vmap"]])
    return {"agree": diff <= 1e-3 * scale and diff_c <= 1e-3 * scale and not sampling._COMPILE_FAILED,
            "ms_per_step_fast": 1000 * per_step["fast"], "ms_per_step_vmap": 1000 * per_step["vmap"],
            "ms_per_step_compiled": 1000 * per_step["compiled"],
            "ratio_vmap_over_fast": per_step["vmap"] / per_step["fast"],
            "ratio_fast_over_compiled": per_step["fast"] / per_step["compiled"],
            "compile_seconds_first_run": compile_seconds, "max_abs_llc_difference": diff,
            "max_abs_llc_difference_compiled": diff_c,
            "checkpoints": len(models), "settings": {k: v for k, v in kw.items()}}


def main(argv):
    import torch

    args, (short, long) = common_args(argv, __doc__.split("\n")[0], "icl,lm,lm-head")
    results = run_cases(args, cases(args.quick), measure, lambda name, r: (
        f"{name:8s} vmap {r['ms_per_step_vmap']:7.1f} ms/step  fast {r['ms_per_step_fast']:7.1f} ms/step  "
        f"ratio {r['ratio_vmap_over_fast']:.2f}  max |Δλ̂| {r['max_abs_llc_difference']:.1e}  |  compiled "
        f"{r['ms_per_step_compiled']:7.1f} ms/step, fast / compiled {r['ratio_fast_over_compiled']:.2f} "
        f"(compiling: {r['compile_seconds_first_run']:.0f} s), max |Δλ̂| {r['max_abs_llc_difference_compiled']:.1e}"),
        short=short, long=long)
    return write_results("fast_paths", args, (short, long), results,
                         disagree="the fast path and vmap disagree beyond rounding on")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
