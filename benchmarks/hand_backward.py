"""Small models' hand-written backward passes against autograd (and ``vmap``): time per SGLD step, same process.

    .venv/bin/python benchmarks/hand_backward.py [--quick] [--repeats 3] [--threads 1] [--cases dln,monomial,...]

Both sides are this package. For each case ``estimate_llcs`` runs one model with a fixed number of draws three ways:
with the model's ``forward_batched_vjp`` and the loss's ``batched_vjp`` (**hand**: the gradient without autograd),
with them switched off (**autograd**: the batched fast path ``forward_batched`` and ``torch.autograd.grad``), and
with ``forward_batched`` switched off too (**vmap**: ``functional_call`` under ``vmap``). Cases, 4 chains each:

- ``dln``: the validation chapter's RRR 5-4-5 rank 2 (a :class:`DeepLinearNetwork` of 40 parameters, ``half_mse``);
- ``monomial``: the normal crossing :math:`w_1w_2` (:class:`MonomialModel`, ``half_mse``);
- ``polynomial``: devinterp's crossing [1, 2] (:class:`~slt_companion.groundtruth.Polynomial`, ``mse_loss``);
- ``tms``: the 5⁻-gon of the TMS chapters at their LLC settings (:class:`ToyModelOfSuperposition`, ``tms_loss``,
  n = 20,000, minibatch 500).

Time per step is ``(t(long) - t(short)) / (long - short)``, the faster of ``--repeats`` alternating measurements.
Ratios *autograd / hand* and *vmap / hand* (above 1: the hand backward is faster). The sides must agree: the
largest |Δλ̂| between hand and autograd is reported (0 for the DLN, whose hand backward is autograd's to the bit);
above 1e-4 of λ̂ the script fails. Writes ``benchmarks/results/hand_backward.json`` and prints a table.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fast_paths import alternating_per_step, common_args, run_cases, timed_run, write_results  # noqa: E402


def cases():
    from slt_companion import tms
    from slt_companion.data import tms_data
    from slt_companion.groundtruth import ground_truth_case

    out = {}
    for key, name in (("dln", "RRR 5-4-5, rank 2"), ("monomial", "normal crossing w₁w₂"),
                      ("polynomial", "devinterp crossing [1, 2]")):
        c = ground_truth_case(name)
        out[key] = (lambda name=name: ground_truth_case(name)["model"], c["loss_fn"], c["data"],
                    dict(num_chains=4, localization=c["localization"], step_size=1e-3))
    S = tms.LLC_SETTINGS
    data = tms_data(S["n"], 6, seed=0)
    out["tms"] = (lambda: tms.kgon_at_minimum("5-", data.x), tms.tms_loss, data.xy,
                  dict(num_chains=4, step_size=S["step_size"], nbeta=S["nbeta"], localization=S["localization"],
                       batch_size=S["batch_size"]))
    return out


def measure(make, loss, xy, kw, *, short, long, repeats):
    hand, auto, vm = make(), make(), make()
    auto.forward_batched_vjp = None                     # the sampler then takes autograd's gradient
    vm.forward_batched_vjp = None
    vm.forward_batched = None                           # ... of the vmapped model

    def plain(out, y):                                  # the loss without its batched attributes (for vmap)
        return loss(out, y)

    sides = {"hand": (hand, loss), "autograd": (auto, loss), "vmap": (vm, plain)}

    def run(side, n):
        model, lf = sides[side]
        return timed_run([model], lf, xy, kw, n)

    for side in sides:
        run(side, 1)
    per_step, means = alternating_per_step(run, sides, short=short, long=long, repeats=repeats)
    diff = abs(means["hand"][0] - means["autograd"][0])
    return {"agree": diff <= 1e-4 * max(1.0, abs(means["autograd"][0])),
            **{f"us_per_step_{s}": 1e6 * per_step[s] for s in sides},
            "ratio_autograd_over_hand": per_step["autograd"] / per_step["hand"],
            "ratio_vmap_over_hand": per_step["vmap"] / per_step["hand"],
            "max_abs_llc_difference": diff, "settings": {k: v for k, v in kw.items()}}


def main(argv):
    args, _ = common_args(argv, __doc__.split("\n")[0], "dln,monomial,polynomial,tms")
    short, long = (20, 80) if args.quick else (200, 1200)
    results = run_cases(args, cases(), measure, lambda name, r: (
        f"{name:10s} hand {r['us_per_step_hand']:7.0f} µs/step  autograd {r['us_per_step_autograd']:7.0f}  "
        f"vmap {r['us_per_step_vmap']:7.0f}  |  autograd / hand {r['ratio_autograd_over_hand']:.2f}, "
        f"vmap / hand {r['ratio_vmap_over_hand']:.2f}  |  |Δλ̂| {r['max_abs_llc_difference']:.1e}"),
        short=short, long=long)
    return write_results("hand_backward", args, (short, long), results,
                         disagree="the hand backward and autograd disagree beyond rounding on")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
