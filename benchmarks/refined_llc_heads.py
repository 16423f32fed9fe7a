"""Refined LLC of every attention head: one batched run (``estimate_refined_llcs``) against one run per head
(``estimate_llc(params=head)``), same sampler settings, on the final checkpoint of the Part III language model.

Prints the wall times (the faster of ``--repeats`` alternating measurements each) and the ratio
``one-at-a-time / joint`` (above 1: the joint run is faster), and the per-head estimates of both, which must agree
within chain noise. Writes ``benchmarks/results/refined_llc_heads.json``.

    .venv/bin/python benchmarks/refined_llc_heads.py [--quick] [--device cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="SLT_QUICK sizes (a smoke test, not a measurement)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        os.environ["SLT_QUICK"] = "1"
    import torch

    from slt_companion.llc import estimate_llc, estimate_refined_llcs
    from slt_companion.sampling import clear_center_losses
    from slt_companion.train import lm_run

    torch.set_num_threads(args.threads)
    run = lm_run(progress=False)
    S = run.settings
    model = run.trajectory.model_at(len(run.trajectory) - 1, run.make_model()).to(args.device)
    x, y = run.corpus.batch(S["llc_data"], S["seq_len"], torch.Generator().manual_seed(11),
                            repeat_span=S["repeat_span"])
    data = (x.to(args.device), y.to(args.device))
    L = dict(S["llc"], progress=False)
    heads = model.head_names()

    def joint():
        return estimate_refined_llcs(model, run.loss_fn, data, {h: h for h in heads}, **L)

    def one_at_a_time():
        return {h: estimate_llc(model, run.loss_fn, data, params=h, **L) for h in heads}

    t_joint, t_one = [], []
    for _ in range(args.repeats):           # alternate, so that a change in machine load hits both
        clear_center_losses()      # each way pays its own pass over the data
        t = time.perf_counter(); rj = joint(); t_joint.append(time.perf_counter() - t)
        clear_center_losses()
        t = time.perf_counter(); ro = one_at_a_time(); t_one.append(time.perf_counter() - t)
    ratio = min(t_one) / min(t_joint)
    rows = []
    for h in heads:
        se = math.sqrt((rj[h].std ** 2 + ro[h].std ** 2) / L["num_chains"])
        rows.append({"head": h, "joint": rj[h].mean, "joint_std": rj[h].std, "one": ro[h].mean,
                     "one_std": ro[h].std, "z": (rj[h].mean - ro[h].mean) / se if se > 0 else float("nan")})
        print(f"{h}: joint {rj[h].mean:.3f} ± {rj[h].std:.3f}   one at a time {ro[h].mean:.3f} ± {ro[h].std:.3f}"
              f"   difference {rows[-1]['z']:+.1f} s.e.")
    print(f"{len(heads)} heads x {L['num_chains']} chains x {L['num_draws']} draws on {args.device} "
          f"({args.threads} thread(s)): joint {min(t_joint):.1f} s, one at a time {min(t_one):.1f} s; "
          f"ratio one-at-a-time / joint = {ratio:.2f} ({'joint faster' if ratio > 1 else 'one at a time faster'})")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "refined_llc_heads.json").write_text(json.dumps(
        {"device": args.device, "threads": args.threads, "quick": args.quick, "settings": L,
         "seconds_joint": t_joint, "seconds_one_at_a_time": t_one, "ratio_one_over_joint": ratio, "heads": rows},
        indent=1))


if __name__ == "__main__":
    main()
