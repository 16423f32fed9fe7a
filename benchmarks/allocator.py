"""The book's CPU work on glibc's malloc against tcmalloc (``LD_PRELOAD``): time, and the numbers bit for bit.

    .venv/bin/python benchmarks/allocator.py [--quick] [--repeats 3] [--cases train,icl_llc,lm_head,ground_truth]

An allocator cannot be changed inside a running process, so each measurement is a fresh worker process of this
file (``--worker CASE``), started once with the environment as it is and once with
:func:`slt_companion.allocator.preload_env`, alternating, ``--repeats`` times; the faster of each side's runs
counts. Only the work is timed, inside the worker (not the interpreter's start or the imports). Each worker also
prints a SHA-256 of its result's bytes: the two allocators must give the same bits (the script fails otherwise).

Cases, the chapters' own models and settings (untrained weights where a checkpoint would need a training run):

- ``train``: 1,500 eager Adam steps of the transient-ridge chapter's ``ICLTransformer`` (``train``);
- ``icl_llc``: SGLD at 8 checkpoints at once (4 chains each, 128 steps) with the in-context-regression chapter's
  sampler (``estimate_llcs``);
- ``lm_head``: the refined LLC of one head of the language-model chapter's ``AttentionOnlyLM`` at 2 checkpoints
  (4 chains, 96 steps);
- ``ground_truth``: the first 10 cases of the validation suite (``run_ground_truth``, cache off).

The ratio is *glibc / tcmalloc* (above 1: tcmalloc faster). Writes ``benchmarks/results/allocator.json``.
Exit code 3 (reported by ``run_all.py`` as "not run on this machine") where tcmalloc is not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from run_all import NOT_HERE  # noqa: E402  (the exit code run_all.py reports as "not run on this machine")

CASES = ("train", "icl_llc", "lm_head", "ground_truth")


def _digest(*arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes())
    return h.hexdigest()[:16]


def work(case: str, quick: bool):
    """Run ``case`` once; returns ``(seconds, digest)``."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")             # untrained checkpoints: λ̂ is not an estimate here
    if case == "train":
        from slt_companion.data import ICLTaskSampler
        from slt_companion.models import ICLTransformer
        from slt_companion.predictors import transient_settings
        from slt_companion.train import log_checkpoint_steps, train

        S = transient_settings()
        T = S["task"]
        D, K = T["task_dim"], T["num_examples"]
        steps = 150 if quick else 1500
        smp = ICLTaskSampler(D, K, noise_var=T["noise_var"], num_tasks=4, task_seed=0)
        model = ICLTransformer(D, K, seed=0, **S["model"])
        t = time.perf_counter()
        tr = train(model, lambda out, y: ((out - y) ** 2).mean(), smp.batch_fn(S["batch_size"]), num_steps=steps,
                   lr=S["lr"], schedule="constant", checkpoints=log_checkpoint_steps(steps, 8), seed=0, device="cpu",
                   progress=False)
        return time.perf_counter() - t, _digest(tr.params, tr.train_loss)
    if case == "icl_llc":
        from slt_companion.data import icl_regression
        from slt_companion.llc import estimate_llcs
        from slt_companion.models import ICLTransformer
        from slt_companion.train import icl_settings

        S = icl_settings()
        T = S["task"]
        L = {k: v for k, v in S["llc"].items() if k not in ("num_draws", "num_burnin")}
        data = icl_regression(S["llc_data"], seed=1)
        models = [ICLTransformer(T["task_dim"], T["num_examples"], seed=s) for s in range(2 if quick else 8)]
        t = time.perf_counter()
        ests = estimate_llcs(models, lambda out, y: ((out - y) ** 2).mean(), data.xy, num_burnin=0,
                             num_draws=16 if quick else 128, progress=False, **L)
        return time.perf_counter() - t, _digest([e.mean for e in ests], [e.std for e in ests])
    if case == "lm_head":
        from slt_companion.data import char_corpus
        from slt_companion.llc import estimate_llcs
        from slt_companion.models import AttentionOnlyLM
        from slt_companion.train import lm_loss, lm_settings

        S = lm_settings()
        corpus = char_corpus(**S["corpus"])
        x, y = corpus.batch(S["llc_data"], S["seq_len"], torch.Generator().manual_seed(11),
                            repeat_span=S["repeat_span"])
        models = [AttentionOnlyLM(corpus.vocab_size, **dict(S["model"], seed=s)) for s in range(2)]
        L = {k: v for k, v in S["llc"].items() if k not in ("num_draws", "num_burnin")}
        t = time.perf_counter()
        ests = estimate_llcs(models, lm_loss, (x, y), params=models[0].head_names()[-1], num_burnin=0,
                             num_draws=12 if quick else 96, progress=False, **L)
        return time.perf_counter() - t, _digest([e.mean for e in ests], [e.std for e in ests])
    if case == "ground_truth":
        import shutil
        import tempfile

        from slt_companion import groundtruth

        names = list(groundtruth.GROUND_TRUTH)[:3 if quick else 10]
        os.environ["SLT_CACHE_DIR"] = folder = tempfile.mkdtemp(prefix="slt-bench-")     # an empty cache: computed
        try:
            t = time.perf_counter()
            rows = groundtruth.run_ground_truth(names, seed=0, progress=False)
            seconds = time.perf_counter() - t
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return seconds, _digest([r["mean"] for r in rows], [r["std"] for r in rows])
    raise ValueError(f"unknown case {case!r}; the cases are {', '.join(CASES)}")


def _run_worker(case: str, quick: bool, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {case} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        from slt_companion.allocator import tcmalloc_active

        seconds, digest = work(args.worker, args.quick)
        print(json.dumps({"seconds": seconds, "digest": digest, "tcmalloc": tcmalloc_active()}))
        return 0

    from slt_companion.allocator import preload_env, tcmalloc_path

    if tcmalloc_path() is None:
        print("tcmalloc is not installed here (Debian/Ubuntu: apt-get install -y libtcmalloc-minimal4): nothing to "
              "compare")
        return NOT_HERE
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain["SLT_MALLOC"] = "system"
    sides = {"glibc": plain, "tcmalloc": preload_env({**plain, "SLT_MALLOC": ""})}
    repeats = 1 if args.quick else args.repeats
    results = {}
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        runs = {side: [] for side in sides}
        for _ in range(repeats):
            for side, env in sides.items():
                runs[side].append(_run_worker(case, args.quick, env))
        assert not any(r["tcmalloc"] for r in runs["glibc"]) and all(r["tcmalloc"] for r in runs["tcmalloc"])
        best = {side: min(r["seconds"] for r in rs) for side, rs in runs.items()}
        digests = {r["digest"] for rs in runs.values() for r in rs}
        same = len(digests) == 1
        results[case] = {"seconds": best, "all_seconds": {s: [r["seconds"] for r in rs] for s, rs in runs.items()},
                         "ratio": best["glibc"] / best["tcmalloc"], "agree": same, "digests": sorted(digests)}
        print(f"{case:>13}: glibc {best['glibc']:7.2f} s   tcmalloc {best['tcmalloc']:7.2f} s   "
              f"ratio {results[case]['ratio']:.2f}   {'same bits' if same else 'BITS DIFFER'}", flush=True)
    from fast_paths import write_results

    args.threads = 1                                   # each worker runs on one thread
    return write_results("allocator", args, (), results, disagree="the allocators gave different numbers",
                         tcmalloc=tcmalloc_path())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
