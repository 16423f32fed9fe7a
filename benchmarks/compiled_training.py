"""Training steps of Part III's transformers, eager against ``train(..., compile=True)``: time per step, same process.

    .venv/bin/python benchmarks/compiled_training.py [--quick] [--repeats 3] [--threads 1] [--cases transient,icl,lm]

Both sides are this package's :func:`slt_companion.train.train`, with the chapters' model, optimiser and batch:

- ``transient``: the transient-ridge chapter's :class:`ICLTransformer` (D = 2, K = 8, 2 layers, width 32), Adam,
  batch 32, 8 tasks;
- ``icl``: the in-context regression chapter's :class:`ICLTransformer` (D = 4, K = 16, width 64), Adam, batch 64;
- ``lm``: the language-model chapter's :class:`AttentionOnlyLM` (vocabulary 98, context 32, width 64), AdamW with
  weight decay 0.05 and gradient clipping at 1, batch 64 (random tokens: only the time is measured).

Time per step is ``(t(long) - t(short)) / (long - short)``, the faster of ``--repeats`` alternating measurements
(the compilation, paid once per process and shape, is timed separately on a first run). The ratio is
*eager / compiled* (above 1: compiled faster). The two sides round differently, so their runs drift apart; the
relative difference of the parameters after ``long`` steps is reported, not checked. The chapters' main runs train
eagerly (compiling them would move every trajectory and every number built on them); the transient-ridge and
language-model reruns compile. Writes
``benchmarks/results/compiled_training.json`` and prints a table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fast_paths import alternating_per_step, common_args, run_cases, write_results  # noqa: E402


def cases():
    import torch

    from slt_companion.data import ICLTaskSampler
    from slt_companion.models import AttentionOnlyLM, ICLTransformer
    from slt_companion.predictors import transient_settings
    from slt_companion.train import lm_loss

    def mse(out, y):
        return ((out - y) ** 2).mean()

    S = transient_settings()
    t = S["task"]
    tr = ICLTaskSampler(t["task_dim"], t["num_examples"], noise_var=t["noise_var"], num_tasks=8, task_seed=1)
    icl = ICLTaskSampler(4, 16, noise_var=0.125, num_tasks=None, task_seed=1)

    def tokens(gen):
        return torch.randint(0, 98, (64, 32), generator=gen), torch.randint(0, 98, (64, 32), generator=gen)

    return {
        "transient": (lambda: ICLTransformer(t["task_dim"], t["num_examples"], seed=1, **S["model"]), mse,
                      tr.batch_fn(S["batch_size"]), dict(lr=S["lr"], schedule="constant")),
        "icl": (lambda: ICLTransformer(seed=1), mse, icl.batch_fn(64), dict(lr=3e-3)),
        "lm": (lambda: AttentionOnlyLM(98, n_ctx=32, seed=0), lm_loss, tokens,
               dict(lr=3e-3, optimizer="adamw", weight_decay=0.05, grad_clip=1.0, schedule="constant")),
    }


def measure(make, loss, batch_fn, kw, *, short, long, repeats):
    from slt_companion.train import train

    finals = {}

    def run(side, n):
        start = time.perf_counter()
        tr = train(make(), loss, batch_fn, num_steps=n, checkpoints=[0, n], seed=0, progress=False,
                   compile=side == "compiled", **kw)
        finals[side, n] = tr.params[-1]
        return time.perf_counter() - start, None

    t0 = time.perf_counter()
    run("compiled", 2)                                   # compiles (once per process and shape)
    compile_seconds = time.perf_counter() - t0
    run("eager", 2)
    per_step, _ = alternating_per_step(run, ("eager", "compiled"), short=short, long=long, repeats=repeats)
    a, b = finals["eager", long], finals["compiled", long]
    return {"ms_per_step_eager": 1000 * per_step["eager"], "ms_per_step_compiled": 1000 * per_step["compiled"],
            "ratio_eager_over_compiled": per_step["eager"] / per_step["compiled"],
            "compile_seconds_first_run": compile_seconds,
            "relative_parameter_difference_after_long": float((a - b).norm() / a.norm()), "agree": True}


def main(argv):
    args, _ = common_args(argv, __doc__.split("\n")[0], "transient,icl,lm")
    short, long = (3, 12) if args.quick else (20, 120)
    results = run_cases(args, cases(), measure, lambda name, r: (
        f"{name:10s} eager {r['ms_per_step_eager']:6.2f} ms/step  compiled {r['ms_per_step_compiled']:6.2f}  "
        f"eager / compiled {r['ratio_eager_over_compiled']:.2f}  (compiling {r['compile_seconds_first_run']:.0f} s; "
        f"parameters {r['relative_parameter_difference_after_long']:.1e} apart after {long} steps)"),
        short=short, long=long)
    return write_results("compiled_training", args, (short, long), results)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
