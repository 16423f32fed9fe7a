r"""Calibration sweeps: λ̂ over a grid of step sizes and localisations in one batched run per localisation.

Used in: Part II, "Estimating λ".
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import config as _config
from .llc import default_nbeta
from .sampling import SamplerConfig, _Problem, cpu_threads, sgld, threads_for

__all__ = ["calibration_sweep"]


def calibration_sweep(model: torch.nn.Module, loss_fn: Callable, data, step_sizes, localizations=(1.0,), *,
                      chains_per_setting: int = 2, num_draws: int | None = None, num_burnin: int | None = None,
                      nbeta: float | None = None, batch_size: int = 500, seed: int = 0) -> dict:
    r"""λ̂ over a grid of step sizes ε and localisations γ: one batched SGLD run per γ, with
    ``chains_per_setting`` chains for every ε (per-chain step sizes).

    Returns ``{"step_sizes", "localizations", "mean", "std", "diverged"}`` with ``mean``/``std`` of shape
    ``(len(localizations), len(step_sizes))`` (NaN where a chain diverged). Defaults: 1000 draws (200 in
    ``SLT_QUICK`` mode), burn-in as in :func:`estimate_llc`. Used in: Part II, "Estimating λ".
    """
    num_draws = _config.size(1000, 200) if num_draws is None else int(num_draws)
    num_burnin = max(_config.size(500, 100), num_draws // 2) if num_burnin is None else int(num_burnin)
    eps = [float(e) for e in step_sizes]
    prob = _Problem(model, loss_fn, data, None, next(model.parameters()).device)
    nbeta = default_nbeta(prob.n) if nbeta is None else float(nbeta)
    k = int(chains_per_setting)
    means = np.full((len(localizations), len(eps)), np.nan)
    stds = np.full_like(means, np.nan)
    div = np.zeros(means.shape, dtype=bool)
    with cpu_threads(threads_for(prob, k * len(eps), batch_size)):
        prob.check(batch_size)
        for i, gamma in enumerate(localizations):
            cfg = SamplerConfig(step_size=tuple(np.repeat(eps, k)), nbeta=nbeta, localization=float(gamma),
                                num_chains=k * len(eps), num_draws=num_draws, num_burnin=num_burnin,
                                batch_size=batch_size, seed=seed)
            res = sgld(model, loss_fn, None, cfg, progress=False, on_divergence="mark", num_threads=None,
                       _problem=prob)
            per_chain = nbeta * (res.draws - res.center_loss[:, num_burnin:]).mean(1).numpy().reshape(len(eps), k)
            bad = np.asarray(res.extras["diverged"]).reshape(len(eps), k).any(1) | ~np.isfinite(per_chain).all(1)
            means[i] = np.where(bad, np.nan, per_chain.mean(1))
            stds[i] = np.where(bad, np.nan, per_chain.std(1, ddof=1) if k > 1 else np.nan)
            div[i] = bad
    return {"step_sizes": np.asarray(eps), "localizations": np.asarray(localizations, dtype=float),
            "mean": means, "std": stds, "diverged": div}
