"""Runs devinterp 1.3.2 on one ground-truth case saved by ground_truth_vs_devinterp.py (inside .venv-devinterp).

    python _devinterp_gt_worker.py PROBLEM.pt OUT.json

PROBLEM.pt (loaded with ``weights_only=True``) holds ``x``, ``y``, the model (``{"kind": "linear", "weights":
[...]}``: bias-free linear layers, or ``{"kind": "polynomial", "powers": [...]}``: devinterp's own test model
``devinterp.test_utils.Polynomial``), the centres to estimate at (one, or two for an ordinality case), the loss
(``"mse"``: devinterp's ``evaluate_mse``; ``"half_mse"``: ½‖y − f‖² averaged over the batch) and the sampler
settings. The sampling follows devinterp's own tests: ``SGLD`` with the given ``lr``, ``nbeta`` and optional
``localization`` / ``bounding_box_size``, an ``LLCEstimator`` callback whose initial loss comes from
``get_init_loss_multi_batch``, chains one after another (``cores=1``). Only the ``sample`` calls are timed.
Besides devinterp's estimate, the worker recomputes it from devinterp's own loss trace with the full-data loss
at the centre as the initial loss (``llc_mean_full_init_loss``).
"""

import importlib.metadata
import json
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _devinterp_worker import linear_stack  # same folder: run as a script from benchmarks/


def _plain(v):
    return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v


def main(problem_path: str, out_path: str) -> None:
    warnings.filterwarnings("ignore")  # devinterp 1.3.2 warns on every SGLD construction and seeded run
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.llc import LLCEstimator
    from devinterp.slt.sampler import sample
    from devinterp.test_utils import Polynomial
    from devinterp.utils import evaluate_mse, get_init_loss_multi_batch

    p = torch.load(problem_path, weights_only=True)
    s = {k: _plain(v) for k, v in p["settings"].items()}
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    torch.manual_seed(int(s["torch_seed"]))   # as the tests do before building the model
    np.random.seed(int(s["torch_seed"]))
    spec = p["model"]
    if spec["kind"] == "linear":
        model = linear_stack(spec["weights"])
    else:
        model = Polynomial([int(k) for k in spec["powers"]])
    x, y = p["x"], p["y"]
    loader = DataLoader(TensorDataset(x, y), batch_size=int(s["batch_size"]), shuffle=True)

    if p["loss"] == "mse":
        evaluate = evaluate_mse
    else:
        def evaluate(model, data):
            xb, yb = data
            return 0.5 * ((model(xb) - yb) ** 2).sum(-1).mean()

    optimizer_kwargs = dict(lr=float(s["lr"]), nbeta=float(s["nbeta"]))
    if s.get("localization") is not None:
        optimizer_kwargs["localization"] = float(s["localization"])
    if s.get("bounding_box_size") is not None:
        optimizer_kwargs["bounding_box_size"] = float(s["bounding_box_size"])
    seed = None if s.get("seed") is None else int(s["seed"])
    num_chains, num_draws = int(s["num_chains"]), int(s["num_draws"])

    results = []
    for center in p["centers"]:
        if spec["kind"] == "polynomial":   # the ordinality test's way of moving the centre
            model.weights = nn.Parameter(torch.tensor([float(c) for c in center], dtype=torch.float32))
        init_loss = get_init_loss_multi_batch(loader, num_chains, model, evaluate, device="cpu")
        est = LLCEstimator(num_chains=num_chains, num_draws=num_draws, nbeta=float(s["nbeta"]), init_loss=init_loss)
        start = time.perf_counter()
        sample(model, loader, evaluate=evaluate, optimizer_kwargs=optimizer_kwargs, sampling_method=SGLD,
               num_chains=num_chains, num_draws=num_draws, num_burnin_steps=int(s["num_burnin"]),
               callbacks=[est], verbose=False, seed=seed, device="cpu")
        seconds = time.perf_counter() - start
        out = est.get_results()
        with torch.no_grad():   # the full-data loss at the centre: separates the sampler from the initial-loss choice
            full = evaluate(model, (x, y))
            full_init = float(full[0] if isinstance(full, tuple) else full)   # evaluate_mse returns (loss, {})
        trace_mean = float(np.mean(out["loss/trace"]))
        results.append({"center": [float(c) for c in center] if spec["kind"] == "polynomial" else "given",
                        "seconds": seconds, "llc_mean": float(out["llc/mean"]), "llc_std": float(out["llc/std"]),
                        "llc_per_chain": [float(out[f"llc-chain/{i}"]) for i in range(num_chains)],
                        "init_loss": float(est.init_loss), "init_loss_full": full_init,
                        "llc_mean_full_init_loss": float(s["nbeta"]) * (trace_mean - full_init),
                        "finite": bool(np.isfinite(float(out["llc/mean"])))})
    with open(out_path, "w") as fh:
        json.dump({"devinterp_version": importlib.metadata.version("devinterp"), "torch_version": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "optimizer_kwargs": optimizer_kwargs,
                   "results": results}, fh, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
