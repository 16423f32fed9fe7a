r"""Interventions on the training distribution of the toy model of superposition (TMS).

The book's TMS data (:func:`slt_companion.data.tms_data`) draw the active feature :math:`a` uniformly. Here the
feature *frequencies* are a knob: :math:`x = \mu e_a` with :math:`a\sim\mathrm{Categorical}(p_1,\dots,p_c)`,
:math:`\mu\sim U[0,1]` (the high-sparsity limit of Chen et al. 2023 with non-uniform feature probabilities;
Elhage et al. 2022 vary feature importance and sparsity in the same spirit). :func:`train_tms` trains many TMS
models at once on given data sets with plain SGD, and :func:`feature_slice` cuts out the data where one
feature is active (the data slices whose up-weighting :func:`slt_companion.llc.susceptibility` measures).

Used in: Part IV, "You are what you eat: data shapes structure".
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_int, check_positive
from .data import RegressionData
from .sampling import cpu_threads
from .tms import _batched_forward, _sgd_loop

__all__ = ["tms_data_frequencies", "feature_slice", "train_tms"]


def _frequencies(frequencies, n_features=None) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(frequencies, dtype=np.float64))
    if p.ndim != 1 or p.numel() < 1:
        raise ValueError(f"frequencies must be a 1-D sequence (one weight per feature), got shape {tuple(p.shape)}")
    if n_features is not None and p.numel() != n_features:
        raise ValueError(f"frequencies has {p.numel()} entries but n_features={n_features}; give one per feature")
    total = float(p.sum())
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or total <= 0:
        raise ValueError(f"frequencies must be finite, ≥ 0 and not all 0, got {p.tolist()}")
    if not math.isfinite(total):                   # weights near the largest float: their sum overflows
        p = p / p.max()
        total = float(p.sum())
    return p / total


def tms_data_frequencies(n: int, frequencies, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> RegressionData:
    r"""TMS inputs :math:`x = \mu e_a` with feature :math:`a` drawn with probabilities ``frequencies`` (normalised).

    ``frequencies`` has one non-negative weight per feature (its length is the number of features :math:`c`);
    uniform weights give the distribution of :func:`slt_companion.data.tms_data` (not the same draws). The target
    is the input (``y = x``). Deterministic for a fixed ``seed``.
    """
    n = check_int("n", n)
    p = _frequencies(frequencies)
    c = p.numel()
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.multinomial(p, n, replacement=True, generator=gen)
    mu = torch.rand(n, generator=gen, dtype=torch.float64)
    x = torch.zeros(n, c, dtype=torch.float64)
    x[torch.arange(n), a] = mu
    x = x.to(dtype)
    return RegressionData(x, x.clone(), None, 0.0)


def feature_slice(data, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``(x, y)`` of TMS data (``(x, y)`` or an object with ``.xy``) whose feature ``feature`` is active."""
    x, y = data.xy if hasattr(data, "xy") else data
    if not 0 <= check_int("feature", feature, 0) < x.shape[-1]:
        raise ValueError(f"feature must lie in 0..{x.shape[-1] - 1}, got {feature!r}")
    rows = x[:, int(feature)] != 0
    if int(rows.sum()) < 2:
        raise ValueError(f"feature {feature} is active in {int(rows.sum())} rows; need at least 2 (draw more data)")
    return x[rows], y[rows]


def train_tms(X, *, steps: int = 10_000, lr: float = 0.05, batch_size: int = 100, init_scale: float = 0.5,
              seed: int = 0, progress: bool = False) -> dict:
    r"""Train one TMS (:math:`f(x) = \mathrm{ReLU}(W^\top W x + b)`, ``n_hidden = 2``) per data set, all at once.

    ``X`` has shape ``(R, n, c)``: run ``j`` trains on inputs ``X[j]`` (targets = inputs) with the loss
    :func:`slt_companion.tms.tms_loss`, from :math:`W_{ij}\sim\mathcal N(0, \text{init\_scale}^2)` (``seed``),
    :math:`b = 0`, taking ``steps`` plain SGD steps of size ``lr`` on minibatches of ``batch_size`` drawn with
    replacement -- the recipe of :func:`slt_companion.tms.train_sgd`, on data the caller chooses. Float64, CPU,
    deterministic for a fixed ``seed``. Returns ``{"W": (R, 2, c), "b": (R, c), "train_loss": (R,)}`` (arrays).
    """
    X = torch.as_tensor(X).double()
    if X.ndim != 3:
        raise ValueError(f"X must have shape (runs, n, n_features), got {tuple(X.shape)}")
    steps, batch_size = check_int("steps", steps), check_int("batch_size", batch_size)
    lr, init_scale = check_positive("lr", lr), check_positive("init_scale", init_scale)
    R, n, c = X.shape
    if R < 1 or n < 1 or c < 1:
        raise ValueError(f"X must hold at least one run, one row and one feature, got shape {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X holds NaN or inf; make the data again (tms_data_frequencies)")
    gen = torch.Generator().manual_seed(int(seed))
    W = (torch.randn(R, 2, c, generator=gen, dtype=torch.float64) * init_scale).requires_grad_(True)
    b = torch.zeros(R, c, dtype=torch.float64, requires_grad=True)
    ar = torch.arange(R)[:, None]
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"SGD, {R} runs", mininterval=1.0)
    with cpu_threads(1):
        _sgd_loop(it, set(), R, n, batch_size, gen, X, W, b, lr, ar, record=None)   # tms.train_sgd's loop, no checkpoints
        with torch.no_grad():
            train_loss = ((_batched_forward(W, b, X) - X) ** 2).sum(-1).mean(-1)
    return {"W": W.detach().numpy().copy(), "b": b.detach().numpy().copy(), "train_loss": train_loss.numpy().copy()}
