"""What drawing the SGLD noise in the model's dtype buys: time per step, same process, same chains.

    .venv/bin/python benchmarks/noise_dtype.py [--quick] [--repeats 3] [--threads 1] [--cases icl,lm]

Both sides are this package. The sampler draws each chain's Gaussian noise in the model's dtype (float32 for the
book's models; ``slt_companion.sampling.FLOAT64_NOISE = False``, the default since 2026-12-01); ``True`` draws it in
float64 and rounds it once (the stream before). For Part III's two transformers at the chapters' sampler settings (the cases
of ``fast_paths.py``: checkpoints as chains, every parameter sampled) ``estimate_llcs`` runs with each setting in
turn. Time per step is the difference between runs of ``long`` and ``short`` steps divided by the difference in
steps, the faster of ``--repeats`` alternating measurements; the ratio is *float64 / float32* (above 1: drawing in float32 is faster).
Also timed alone: one chain's noise for a block of 64 steps of the 53k-parameter transformer, in ns per number.
The two sides draw different random numbers, so their λ̂ differ by chain noise (reported, not checked: these are
untrained checkpoints). Writes ``benchmarks/results/noise_dtype.json`` and prints a table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def per_number_ns(dtype, rows: int, cols: int, repeats: int) -> float:
    """ns per normal of ``normal_`` into a reused ``(rows, cols)`` block (float64 draws then rounded to float32)."""
    import torch

    g = torch.Generator().manual_seed(0)
    out = torch.empty(rows, cols, dtype=torch.float32)
    buf = torch.empty(rows, cols, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        if dtype == torch.float32:
            out.normal_(generator=g)
        else:
            out.copy_(buf.normal_(generator=g))
        best = min(best, time.perf_counter() - start)
    return 1e9 * best / (rows * cols)


def measure(make, loss, xy, kw, *, short, long, repeats):
    from fast_paths import alternating_per_step, timed_run

    from slt_companion import sampling

    models = make()

    def run(side, steps):
        sampling.FLOAT64_NOISE = side == "float64"
        return timed_run(models, loss, xy, kw, steps)

    old = sampling.FLOAT64_NOISE
    try:
        timed_run(models, loss, xy, kw, 1)                          # warm-up: the losses at the centres
        per_step, means = alternating_per_step(run, ("float32", "float64"), short=short, long=long, repeats=repeats)
    finally:
        sampling.FLOAT64_NOISE = old
    return {"ms_per_step_float32": 1000 * per_step["float32"], "ms_per_step_float64": 1000 * per_step["float64"],
            "ratio_float64_over_float32": per_step["float64"] / per_step["float32"],
            "max_abs_llc_difference": max(abs(a - b) for a, b in zip(means["float32"], means["float64"])),
            "checkpoints": len(models), "settings": dict(kw)}


def main(argv):
    import torch

    from fast_paths import cases, common_args, write_results

    args, (short, long) = common_args(argv, __doc__.split("\n")[0], "icl,lm")
    repeats = 1 if args.quick else args.repeats
    alone = {name: per_number_ns(dt, 64, 53_057, repeats) for name, dt in (("float32", torch.float32),
                                                                            ("float64", torch.float64))}
    print(f"noise alone, 64 x 53,057 block: float32 {alone['float32']:.1f} ns/number, float64 rounded "
          f"{alone['float64']:.1f} ns/number", flush=True)
    results = {}
    for name, (make, loss, xy, kw) in cases(args.quick).items():
        if name not in args.cases.split(","):
            continue
        results[name] = r = measure(make, loss, xy, kw, short=short, long=long, repeats=repeats)
        print(f"{name:8s} float64 noise {r['ms_per_step_float64']:7.1f} ms/step  float32 noise "
              f"{r['ms_per_step_float32']:7.1f} ms/step  ratio {r['ratio_float64_over_float32']:.2f}", flush=True)
    return write_results("noise_dtype", args, (short, long), results, noise_alone_ns_per_number=alone)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
