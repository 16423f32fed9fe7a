"""Is the reported standard error honest? λ̂'s spread over sampler seeds against the ``sem`` each run reports.

    .venv/bin/python benchmarks/se_calibration.py [--quick] [--seeds 16] [--data-seed 2] [--cases NAME|NAME...]

For cases of the ground-truth suite (:data:`slt_companion.groundtruth.GROUND_TRUTH`; the data drawn once, with
``--data-seed``) ``estimate_llc`` runs with the library defaults and 4 chains on sampler seeds 100, 101, ... --
exactly as a reader re-running one estimate would. Reported per case: the mean of λ̂ and its standard deviation over
the seeds (the error a reader actually sees), the root-mean-square of the ``sem`` the runs report, the same for the
between-chain standard error ``std / sqrt(chains)``, their ratios, the range of the automatically chosen step size
and its correlation with λ̂ (``step_size="auto"`` runs a pilot with the same seed, so each seed picks its own step:
a part of the spread that ``sem``, an error *at* the step used, does not contain), and how many runs converged.
The statistics are over the converged runs (an unconverged run warns and is no result), over all runs where fewer
than three converged (``over`` in the JSON).
This package only: there is no peer to run side by side (devinterp reports no standard error). Writes
``benchmarks/results/se_calibration.json`` and prints a table. The ratios are estimates from ``--seeds`` runs: the
sd of 16 runs is itself uncertain by about 18 %.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

#: cases with different mixing: a noisy minimiser, a deep bottlenecked network, a one-parameter crossing, a
#: noise-free teacher point
CASES = ["RRR 6-3-2, rank 1", "DLN 4-2-4-2-4, rank 2 (bottlenecks)", "devinterp crossing [0, 1]",
         "RRR 5-4-5, rank 2, noise-free at the teacher"]
#: chains per estimate: the suite's (and a reader's default call's) 4
CHAINS = 4


def calibrate(name: str, *, seeds: int, data_seed: int) -> dict:
    import numpy as np

    from slt_companion.groundtruth import ground_truth_case
    from slt_companion.llc import LLCConvergenceWarning, estimate_llc

    case = ground_truth_case(name, seed=data_seed)
    runs = []
    for s in range(seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LLCConvergenceWarning)      # counted below
            est = estimate_llc(case["model"], case["loss_fn"], case["data"], num_chains=CHAINS, seed=100 + s,
                               localization=case["localization"], progress=False)
        runs.append({"seed": 100 + s, "mean": est.mean, "sem": est.sem, "std": est.std, "ess": est.ess,
                     "rhat": est.rhat, "converged": bool(est.converged), "step_size": float(est.config.step_size),
                     "draws": int(est.config.num_draws)})
    ok = np.array([r["converged"] for r in runs])
    # the converged runs: an unconverged one warns (LLCConvergenceWarning) and is no result; all runs if < 3 converged
    use = ok if ok.sum() >= 3 else np.ones_like(ok)
    mean = np.array([r["mean"] for r in runs])[use]
    sem = np.array([r["sem"] for r in runs])[use]
    between = np.array([r["std"] / math.sqrt(CHAINS) for r in runs])[use]
    eps = np.array([r["step_size"] for r in runs])[use]
    sd = float(mean.std(ddof=1))
    rms_sem, rms_between = float(np.sqrt(np.mean(sem ** 2))), float(np.sqrt(np.mean(between ** 2)))
    corr = float(np.corrcoef(eps, mean)[0, 1]) if np.ptp(eps) > 0 else float("nan")
    return {"case": name, "target": float(case["target"]), "seeds": seeds, "data_seed": data_seed,
            "mean": float(mean.mean()), "sd_over_seeds": sd, "rms_sem": rms_sem, "rms_between_chain_se": rms_between,
            "sd_over_rms_sem": sd / rms_sem, "sd_over_rms_between": sd / rms_between,
            "step_size_range": [float(eps.min()), float(eps.max())], "corr_step_size_llc": corr,
            "converged": int(ok.sum()), "over": "converged runs" if ok.sum() >= 3 else "all runs (< 3 converged)",
            "runs": runs}


def main(argv) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 seeds, 2 cases (a smoke test of the script)")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--data-seed", type=int, default=2)
    p.add_argument("--cases", default="|".join(CASES), help="ground-truth case names separated by |")
    args = p.parse_args(argv)
    seeds = 3 if args.quick else args.seeds
    names = args.cases.split("|")[:2] if args.quick else args.cases.split("|")
    torch.set_num_threads(1)          # small problems: one thread, as the library itself chooses for them
    rows = [calibrate(n, seeds=seeds, data_seed=args.data_seed) for n in names]
    print(f"{'case':<46} {'mean':>7} {'sd':>7} {'rms sem':>8} {'sd/sem':>7} {'sd/btw':>7} {'eps range':>21} "
          f"{'corr':>5} conv")
    for r in rows:
        lo, hi = r["step_size_range"]
        print(f"{r['case']:<46} {r['mean']:7.3f} {r['sd_over_seeds']:7.3f} {r['rms_sem']:8.3f} "
              f"{r['sd_over_rms_sem']:7.2f} {r['sd_over_rms_between']:7.2f} {lo:10.3g}-{hi:<10.3g} "
              f"{r['corr_step_size_llc']:5.2f} {r['converged']}/{r['seeds']}")
    out = HERE / "results" / "se_calibration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "torch": torch.__version__, "cases": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
