"""Runs devinterp 1.3.2's LLC estimate on a problem saved by llc_vs_devinterp.py (inside .venv-devinterp).

    python _devinterp_worker.py PROBLEM.pt OUT.json

PROBLEM.pt (loaded with weights_only=True) holds x, y, the layer weights of a bias-free linear network and
the sampler settings. Only the call to ``estimate_learning_coeff_with_summary`` is timed.
"""

import importlib.metadata
import json
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def linear_stack(weights) -> nn.Sequential:
    """A bias-free linear network (devinterp's ReducedRankRegressor and deeper) with the given layer weights."""
    layers = []
    for w in weights:
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
        layers.append(lin)
    return nn.Sequential(*layers)


def main(problem_path: str, out_path: str) -> None:
    warnings.filterwarnings("ignore")  # devinterp 1.3.2 warns on every SGLD construction
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    p = torch.load(problem_path, weights_only=True)
    model = linear_stack(p["weights"])
    x, y = p["x"], p["y"]
    s = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in p["settings"].items()}
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    torch.manual_seed(int(s["seed"]))
    loader = DataLoader(TensorDataset(x, y), batch_size=int(s["batch_size"]), shuffle=True)

    def evaluate(model, data):
        xb, yb = data
        return 0.5 * ((model(xb) - yb) ** 2).sum(-1).mean(), {}

    start = time.perf_counter()
    out = estimate_learning_coeff_with_summary(
        model, loader, evaluate=evaluate, sampling_method=SGLD,
        optimizer_kwargs=dict(lr=float(s["step_size"]), localization=float(s["localization"]),
                              nbeta=float(s["nbeta"])),
        num_chains=int(s["num_chains"]), num_draws=int(s["num_draws"]),
        num_burnin_steps=int(s["num_burnin"]), seed=int(s["seed"]), device="cpu", verbose=False)
    seconds = time.perf_counter() - start
    trace = out["loss/trace"]  # (chains, draws): the minibatch loss at each draw
    with torch.no_grad():
        full_init = float(0.5 * ((model(x) - y) ** 2).sum(-1).mean())
    result = {
        "devinterp_version": importlib.metadata.version("devinterp"),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "seconds": seconds,
        "llc_mean": float(out["llc/mean"]),
        "llc_std": float(out["llc/std"]),
        "llc_mean_full_init_loss": float(s["nbeta"]) * (float(trace.mean()) - full_init),
        "init_loss_full": full_init,
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
