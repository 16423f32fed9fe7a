"""This package's LLC estimator vs devinterp 1.3.2, side by side on the same problems (CPU).

    python benchmarks/llc_vs_devinterp.py [--quick] [--out benchmarks/results]

Both estimators get the same model (weights at the empirical minimiser), data, step size ε, localisation
γ, nβ, batch size, chains, burn-in and draws; the loss is ½‖y − f(x)‖² per sample. devinterp runs in its
own virtual environment, benchmarks/.venv-devinterp, created on first use from
benchmarks/requirements-devinterp.txt (exact pins, torch==2.13.0); it runs its chains one after another
(``cores=1``, its default), on one thread: its faster setting for problems this small (this package also
runs them on one thread, see ``slt_companion.sampling.auto_threads``). For the 4-chain RRR it is also run
with torch's default thread count, to show what that costs. The speed-up is against the one-thread run. Only the estimation call is timed on each side (data generation, imports and
the venv start-up are not). ε is chosen once by ``step_size="auto"`` of this package (not timed) and
then given to both.

Problems: the reduced-rank regression of issue 5 (in 5, hidden 4, out 5, true rank 2, λ = 21/2;
n = 10,000; batch 500; 200 burn-in + 1000 draws) at 4 and 16 chains, and a deep linear network with
widths [5, 4, 3, 4, 5], true rank 2 (λ = 9). Writes results/llc_vs_devinterp.json and .png and prints
a table: wall-time ratio and both estimates against theory. devinterp's estimate is reported as
shipped (initial loss from ``num_chains`` minibatches) and recomputed from its own loss trace with the
full-data initial loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv-devinterp"
REQS = HERE / "requirements-devinterp.txt"


def devinterp_python() -> Path:
    """The devinterp venv's python, creating the venv from the pinned requirements if needed."""
    py = VENV / "bin" / "python"
    stamp = VENV / ".requirements-hash"
    want = hashlib.sha256(REQS.read_bytes()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    print(f"creating {VENV.relative_to(ROOT)} from {REQS.relative_to(ROOT)} (first run only, about a minute)",
          flush=True)
    if not py.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQS)],
                   check=True)
    stamp.write_text(want)
    return py


def make_problem(widths, rank, n, seed):
    from slt_companion.data import teacher_student
    from slt_companion.models import DeepLinearNetwork

    d = teacher_student(n, widths[0], widths[-1], rank, seed=seed)
    model = DeepLinearNetwork(widths).fit_least_squares(d.x, d.y)
    return model, d


def run_case(name, widths, rank, *, n, batch_size, num_burnin, num_draws, chains_list, localization, seed,
             dv_python, default_threads_for=()):
    from slt_companion.llc import default_nbeta, estimate_llc, half_mse
    from slt_companion.sampling import clear_center_losses
    from slt_companion.theory import dln_rlct

    model, d = make_problem(widths, rank, n, seed)
    lam = float(dln_rlct(widths, rank).lam)
    nbeta = default_nbeta(n)
    pilot = estimate_llc(model, half_mse, d.xy, num_chains=2, num_draws=10, num_burnin=0, batch_size=batch_size,
                         localization=localization, seed=seed, progress=False)
    eps = float(pilot.config.step_size)
    rows = []
    for chains in chains_list:
        default_threads = chains in default_threads_for
        settings = dict(step_size=eps, localization=localization, nbeta=nbeta, num_chains=chains,
                        num_draws=num_draws, num_burnin=num_burnin, batch_size=batch_size, seed=seed)
        clear_center_losses()          # the timed run pays for its pass over the data, as devinterp's does
        t0 = time.perf_counter()
        ours = estimate_llc(model, half_mse, d.xy, num_chains=chains, num_draws=num_draws, num_burnin=num_burnin,
                            step_size=eps, localization=localization, nbeta=nbeta, batch_size=batch_size,
                            seed=seed, device="cpu", progress=False)
        ours_s = time.perf_counter() - t0
        dv = run_devinterp(dv_python, model, d, settings, threads=1)
        dvd = run_devinterp(dv_python, model, d, settings, threads=None) if default_threads else None
        row = {
            "case": name, "widths": widths, "true_rank": rank, "n": n, "theory": lam, "chains": chains,
            "settings": settings,
            "ours": {"seconds": ours_s, "mean": ours.mean, "std": ours.std, "ess": ours.ess, "rhat": ours.rhat,
                     "rel_error": ours.mean / lam - 1},
            "devinterp": {**dv, "rel_error": dv["llc_mean"] / lam - 1,
                          "rel_error_full_init_loss": dv["llc_mean_full_init_loss"] / lam - 1},
            "devinterp_default_threads": dvd,
            "speedup": dv["seconds"] / ours_s,
            "speedup_vs_devinterp_default_threads": dvd["seconds"] / ours_s if dvd else None,
        }
        rows.append(row)
        print(f"{name:28s} chains {chains:3d}  ours {ours_s:6.2f} s  devinterp {dv['seconds']:7.2f} s  "
              f"speed-up {row['speedup']:5.1f}x" + (f" (devinterp on {dvd['torch_threads']} threads: "
              f"{dvd['seconds']:.1f} s, {row['speedup_vs_devinterp_default_threads']:.1f}x)" if dvd else "")
              + f" | λ = {lam:g}: ours {ours.mean:6.2f} ± {ours.std:4.2f} "
              f"({100 * row['ours']['rel_error']:+5.1f}%), devinterp {dv['llc_mean']:6.2f} "
              f"({100 * row['devinterp']['rel_error']:+5.1f}%; with full-data L(w*): "
              f"{dv['llc_mean_full_init_loss']:6.2f})", flush=True)
    return rows


def run_devinterp(dv_python, model, d, settings, *, threads):
    """devinterp's estimate on the same problem, in its own venv; ``threads=None`` keeps torch's default."""
    with tempfile.TemporaryDirectory() as tmp:
        prob = Path(tmp) / "problem.pt"
        torch.save({"x": d.x, "y": d.y, "weights": [lay.weight.detach().clone() for lay in model.layers],
                    "settings": {**settings, "threads": threads or 0}}, prob)
        out = Path(tmp) / "out.json"
        subprocess.run([str(dv_python), str(HERE / "_devinterp_worker.py"), str(prob), str(out)], check=True)
        return json.loads(out.read_text())


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    from slt_companion import plot as slt_plot

    fig, (a1, a2) = slt_plot.new_figure(ncols=2, width=11, height=3.8)
    labels = [f"{r['case']}\n{r['chains']} chains" for r in rows]
    xs = range(len(rows))
    a1.bar([x - 0.2 for x in xs], [r["devinterp"]["seconds"] for r in rows], 0.4, label="devinterp 1.3.2",
           color=slt_plot.COLORS["muted"])
    a1.bar([x + 0.2 for x in xs], [r["ours"]["seconds"] for r in rows], 0.4, label="slt_companion",
           color=slt_plot.COLORS["estimate"])
    a1.set_xticks(list(xs), labels, fontsize=8)
    a1.set_ylabel("wall time (s, CPU)")
    a1.set_yscale("log")
    a1.legend()
    a2.bar([x - 0.27 for x in xs], [r["devinterp"]["llc_mean"] / r["theory"] for r in rows], 0.27,
           label="devinterp 1.3.2 (as shipped)", color=slt_plot.COLORS["muted"])
    a2.bar(list(xs), [r["devinterp"]["llc_mean_full_init_loss"] / r["theory"] for r in rows], 0.27,
           label="devinterp's draws, full-data $L(w^*)$", color=slt_plot.COLORS["muted"], alpha=0.5, hatch="//")
    a2.bar([x + 0.27 for x in xs], [r["ours"]["mean"] / r["theory"] for r in rows], 0.27,
           yerr=[r["ours"]["std"] / r["theory"] for r in rows], label="slt_companion",
           color=slt_plot.COLORS["estimate"])
    slt_plot.theory_line(a2, 1.0, "theory")
    a2.set_xticks(list(xs), labels, fontsize=8)
    a2.set_ylabel(r"$\hat\lambda$ / theory $\lambda$")
    a2.legend(fontsize=8, loc="lower right", framealpha=0.9, frameon=True)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer draws (a smoke test, not the benchmark)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from an existing JSON")
    args = ap.parse_args(argv)
    if args.plot_only:
        out = Path(args.out)
        plot(json.loads((out / "llc_vs_devinterp.json").read_text())["results"], out / "llc_vs_devinterp.png")
        return 0
    dv_python = devinterp_python()
    draws, burnin = (100, 20) if args.quick else (1000, 200)
    common = dict(n=10_000, batch_size=500, num_burnin=burnin, num_draws=draws, localization=1.0, seed=0,
                  dv_python=dv_python)
    rows = run_case("RRR 5-4-5, rank 2", [5, 4, 5], 2, chains_list=[4, 16], default_threads_for=(4,), **common)
    rows += run_case("DLN 5-4-3-4-5, rank 2", [5, 4, 3, 4, 5], 2, chains_list=[4], **common)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "quick": args.quick,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "llc_vs_devinterp.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    plot(rows, out / "llc_vs_devinterp.png")
    print(f"wrote {out / 'llc_vs_devinterp.json'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
