r"""The two idealised in-context regression predictors of finite task diversity, in one place.

A transformer trained on in-context linear regression with tasks drawn from a fixed set of :math:`M` task
vectors :math:`t_1, \dots, t_M` (:class:`slt_companion.data.ICLTaskSampler` with ``num_tasks=M``) can end up
near one of two Bayes predictors (Raventós et al. 2023; Carroll et al. 2025, "Transient structure in in-context
linear regression transformers"):

- **ridge** (:func:`ridge_predictions`): the posterior mean under the Gaussian task prior
  :math:`t \sim \mathcal N(0, I_D)`, :math:`\hat w_k = (X_{<k}^\top X_{<k} + \sigma^2 I)^{-1} X_{<k}^\top y_{<k}`.
  It *generalises*: it is Bayes-optimal for new tasks;
- **dMMSE** (:func:`dmmse_predictions`): the posterior mean under the *discrete* prior uniform on the
  :math:`M` training tasks, :math:`\hat w_k = \sum_m \mathrm{softmax}_m\big(-\sum_{i<k}(y_i - t_m^\top x_i)^2
  / 2\sigma^2\big)\, t_m`. It *memorises*: it is Bayes-optimal on the training distribution.

At position :math:`k` both predict :math:`\hat y_k = x_k^\top \hat w_k` from the :math:`k - 1` earlier pairs only.
:func:`prediction_distance` measures how far a model's predictions are from either, on a fixed probe set.

Used in: Part III, "The transient ridge".
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch

from ._checks import check_positive

__all__ = ["ridge_predictions", "dmmse_predictions", "dmmse_weights", "prediction_distance",
           "distances_over_trajectory", "segment_coordinate", "classify_run", "RunVerdict", "crossover_n",
           "transient_settings"]


def _check_xy(xs, ys) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(xs, torch.Tensor) or not isinstance(ys, torch.Tensor):
        raise ValueError(f"xs and ys must be torch tensors (e.g. data.xs, data.ys of an ICLData), got "
                         f"{type(xs).__name__} and {type(ys).__name__}")
    if xs.ndim != 3 or ys.shape != xs.shape[:2]:
        raise ValueError(f"xs must be (B, K, D) and ys (B, K); got xs {tuple(xs.shape)} and ys {tuple(ys.shape)}. "
                         "Pass a batch of sequences, e.g. icl_regression(n).xs and .ys")
    if not (xs.is_floating_point() and ys.is_floating_point()):
        raise ValueError(f"xs and ys must be floating-point tensors (the predictions come back in xs's dtype), got "
                         f"{xs.dtype} and {ys.dtype}; convert with .double()")
    return xs, ys


def ridge_predictions(xs: torch.Tensor, ys: torch.Tensor, noise_var: float = 0.125) -> torch.Tensor:
    r"""Ridge (Bayes-optimal for :math:`t \sim \mathcal N(0, I_D)`) in-context predictions, ``(B, K)``.

    .. math:: \hat y_k = x_k^\top (X_{<k}^\top X_{<k} + \sigma^2 I)^{-1} X_{<k}^\top y_{<k}, \qquad \hat y_1 = 0.

    A thin, validated entry point to :func:`slt_companion.data.bayes_ridge_predictions` (the one implementation).

    Parameters
    ----------
    xs : tensor (B, K, D)
        Inputs :math:`x_k`.
    ys : tensor (B, K)
        Targets :math:`y_k`.
    noise_var : float
        :math:`\sigma^2`, the ridge parameter.

    Returns
    -------
    tensor (B, K)
        Predictions, in ``xs.dtype``.
    """
    from .data import bayes_ridge_predictions

    xs, ys = _check_xy(xs, ys)
    return bayes_ridge_predictions(xs, ys, check_positive("noise_var", noise_var))


def _check_tasks(tasks, D: int) -> torch.Tensor:
    if not isinstance(tasks, torch.Tensor):
        tasks = torch.as_tensor(np.asarray(tasks, dtype=np.float64))
    if tasks.ndim != 2 or tasks.shape[1] != D or tasks.shape[0] < 1:
        raise ValueError(f"tasks must be (M ≥ 1, D = {D}), the training task bank (ICLTaskSampler(...).task_bank); "
                         f"got shape {tuple(tasks.shape)}")
    if not torch.all(torch.isfinite(tasks)):
        raise ValueError("tasks contain NaN or inf")
    return tasks


def dmmse_weights(xs: torch.Tensor, ys: torch.Tensor, tasks, noise_var: float = 0.125) -> torch.Tensor:
    r"""Posterior weights of the :math:`M` training tasks at every position, ``(B, K, M)``, float64.

    .. math:: \pi_{k,m} = \mathrm{softmax}_m\Big(-\tfrac{1}{2\sigma^2}\sum_{i<k}(y_i - t_m^\top x_i)^2\Big),

    uniform at :math:`k = 1` (no examples yet). ``tasks`` is the ``(M, D)`` task bank.
    """
    xs, ys = _check_xy(xs, ys)
    s2 = check_positive("noise_var", noise_var)
    T = _check_tasks(tasks, xs.shape[2]).double()
    fits = torch.einsum("bkd,md->bkm", xs.double(), T)                 # t_m^T x_k
    res = (ys.double()[..., None] - fits) ** 2
    before = torch.cumsum(res, dim=1).roll(1, dims=1)                  # sum over i < k only (not cumsum − res:
    before[:, 0] = 0.0                                                 # a huge y_k would cancel the earlier sum)
    return torch.softmax(-before / (2 * s2), dim=-1)


def dmmse_predictions(xs: torch.Tensor, ys: torch.Tensor, tasks, noise_var: float = 0.125) -> torch.Tensor:
    r"""dMMSE in-context predictions (the posterior mean for the uniform prior on the ``tasks``), ``(B, K)``.

    .. math:: \hat w_k = \sum_{m=1}^M \pi_{k,m}\, t_m, \qquad \hat y_k = x_k^\top \hat w_k,

    with the weights :math:`\pi_{k,m}` of :func:`dmmse_weights` (Raventós et al. 2023; Carroll et al. 2025).
    With one task it returns that task's predictions :math:`t_1^\top x_k`; at :math:`k = 1` it predicts with the
    mean task.

    Parameters
    ----------
    xs : tensor (B, K, D)
        Inputs.
    ys : tensor (B, K)
        Targets.
    tasks : tensor (M, D)
        The training task bank, e.g. ``ICLTaskSampler(..., num_tasks=M).task_bank``.
    noise_var : float
        :math:`\sigma^2`.

    Returns
    -------
    tensor (B, K)
        Predictions, in ``xs.dtype``.
    """
    w = dmmse_weights(xs, ys, tasks, noise_var)
    fits = torch.einsum("bkd,md->bkm", xs.double(), _check_tasks(tasks, xs.shape[2]).double())
    return (w * fits).sum(-1).to(xs.dtype)


def prediction_distance(pred, reference) -> float:
    r"""Mean squared difference of two sets of predictions, :math:`\frac{1}{BK}\sum_{b,k}(\hat y_{bk} - \hat y'_{bk})^2`.

    The distance of a model to a predictor on a probe set (Carroll et al. 2025 use the same quantity). Raises a
    ``ValueError`` if the shapes differ or a value is not finite.
    """
    a = torch.as_tensor(pred).double()
    b = torch.as_tensor(reference).double()
    if a.shape != b.shape:
        raise ValueError(f"pred and reference must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("pred is empty")
    if not (torch.all(torch.isfinite(a)) and torch.all(torch.isfinite(b))):
        raise ValueError("pred or reference contains NaN or inf (a diverged model?)")
    return float(((a - b) ** 2).mean())


@torch.no_grad()
def distances_over_trajectory(trajectory, template: torch.nn.Module, probe, references: dict) -> dict:
    r"""Distance of every checkpoint's predictions to each reference predictor, on a fixed probe set.

    Parameters
    ----------
    trajectory : :class:`slt_companion.train.Trajectory`
        The training run.
    template : nn.Module
        A model of the trained architecture (:meth:`~slt_companion.train.Trajectory.model_at`).
    probe : ICLData
        The probe sequences (anything with ``.tokens`` and ``.ys``).
    references : dict
        ``name -> (B, K)`` predictions on ``probe`` (e.g. ``{"ridge": ..., "dmmse": ...}``).

    Returns
    -------
    dict
        ``{"steps": (C,), "loss": (C,), name: (C,) ...}``: the checkpoint steps, the MSE to the probe targets
        and the :func:`prediction_distance` to each reference.
    """
    if not hasattr(probe, "tokens") or not hasattr(probe, "ys"):
        raise ValueError("probe must be an ICLData (from icl_regression or ICLTaskSampler.sample)")
    if not isinstance(references, dict) or not references:
        raise ValueError("references must be a non-empty dict name -> (B, K) predictions on the probe")
    for name, ref in references.items():
        if tuple(ref.shape) != tuple(probe.ys.shape):
            raise ValueError(f"references[{name!r}] has shape {tuple(ref.shape)}, the probe targets "
                             f"{tuple(probe.ys.shape)}; compute it on the same probe")
    out = {"steps": np.asarray(trajectory.steps, dtype=np.int64), "loss": []}
    out.update({name: [] for name in references})
    for i in range(len(trajectory)):
        pred = trajectory.model_at(i, template)(probe.tokens)
        out["loss"].append(prediction_distance(pred, probe.ys))
        for name, ref in references.items():
            out[name].append(prediction_distance(pred, ref))
    return {k: np.asarray(v) for k, v in out.items()}


def segment_coordinate(d_ridge, d_dmmse, d_between):
    r"""Where a model sits between ridge and dMMSE, from its two squared distances: ``(s, residual)``.

    Mean squared differences on a probe set are squared Euclidean distances (over :math:`BK` numbers, divided
    by :math:`BK`). Write the model's prediction vector as :math:`p = r + s\,(d - r) + e` with :math:`e \perp d - r`
    (:math:`r` ridge, :math:`d` dMMSE, :math:`\delta = \lVert d - r\rVert^2` = ``d_between``). Then
    :math:`d_{\rm ridge} = s^2\delta + \lVert e\rVert^2` and :math:`d_{\rm dMMSE} = (1-s)^2\delta + \lVert e\rVert^2`, so

    .. math:: s = \tfrac12\Big(1 + \frac{d_{\rm ridge} - d_{\rm dMMSE}}{\delta}\Big), \qquad
              \lVert e\rVert^2 = d_{\rm ridge} - s^2\delta.

    :math:`s = 0` is ridge, :math:`s = 1` dMMSE, whatever the error :math:`e` off the segment. Arrays broadcast.

    Parameters
    ----------
    d_ridge, d_dmmse : float or array
        :func:`prediction_distance` of the model to ridge and to dMMSE.
    d_between : float
        :func:`prediction_distance` between ridge and dMMSE on the same probe (> 0).

    Returns
    -------
    tuple of arrays
        ``s`` and the squared residual :math:`\lVert e\rVert^2` (clipped at 0).
    """
    a, b = np.asarray(d_ridge, dtype=np.float64), np.asarray(d_dmmse, dtype=np.float64)
    if np.ndim(d_between) != 0:
        raise ValueError(f"d_between must be one number (the distance between ridge and dMMSE on the probe), got an "
                         f"array of shape {np.shape(d_between)}")
    if not (np.isfinite(d_between) and d_between > 0):
        raise ValueError(f"d_between must be a finite number > 0 (the distance between ridge and dMMSE), got "
                         f"{d_between!r}; with one task per sequence it vanishes only if ridge = dMMSE")
    if a.shape != b.shape:
        raise ValueError(f"d_ridge and d_dmmse must have the same shape, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"d_ridge and d_dmmse must be finite, got {int((~np.isfinite(a)).sum())} and "
                         f"{int((~np.isfinite(b)).sum())} NaN/inf entries")
    s = 0.5 * (1 + (a - b) / d_between)
    return s, np.maximum(a - s ** 2 * d_between, 0.0)


@dataclass
class RunVerdict:
    """The result of :func:`classify_run`.

    - ``verdict``: ``"transient"``, ``"memorises"``, ``"ridge"`` or ``"undecided"``;
    - ``ridge_like``, ``dmmse_like``: boolean arrays over checkpoints;
    - ``ridge_index``: the ridge-like checkpoint closest to ridge (or ``None``); ``leave_index``: for a transient
      run, the first checkpoint after it from which the run stays dMMSE-like (else ``None``).
    """

    verdict: str
    ridge_like: np.ndarray
    dmmse_like: np.ndarray
    ridge_index: int | None
    leave_index: int | None


def classify_run(d_ridge, d_dmmse, d_between, ridge_scale: float, steps, *, late_from: float,
                 closeness: float = 1 / 3) -> RunVerdict:
    r"""Classify a training run from its distances to ridge and dMMSE at each checkpoint.

    With :math:`s` from :func:`segment_coordinate`, a checkpoint is **ridge-like** if :math:`s < 1/2` and
    :math:`d_{\rm ridge} <` ``closeness`` × ``ridge_scale`` (close to ridge in absolute terms, so that a model that
    still predicts about 0 does not count), and **dMMSE-like** if :math:`s > 1/2`. The run is

    - ``"transient"`` if a ridge-like checkpoint is followed by a checkpoint from which on every checkpoint is
      dMMSE-like (the transient ridge of Carroll et al. 2025);
    - ``"memorises"`` if no checkpoint is ridge-like and all checkpoints with ``steps >= late_from`` are dMMSE-like;
    - ``"ridge"`` if the last checkpoint is ridge-like; else ``"undecided"``.

    Parameters
    ----------
    d_ridge, d_dmmse : array (C,)
        Distances of each checkpoint to ridge and to dMMSE (:func:`distances_over_trajectory`).
    d_between : float
        Distance between ridge and dMMSE on the same probe.
    ridge_scale : float
        The mean square of ridge's predictions (its distance to the zero predictor), > 0.
    steps : array (C,)
        The checkpoint steps, increasing.
    late_from : float
        Start of the late phase (a step).
    closeness : float
        Fraction of ``ridge_scale`` within which a checkpoint counts as close to ridge.

    Returns
    -------
    RunVerdict
    """
    steps = np.asarray(steps)
    dr = np.asarray(d_ridge, dtype=np.float64)
    if steps.shape != dr.shape or dr.ndim != 1:
        raise ValueError(f"steps and d_ridge must be 1-D of the same length, got {steps.shape} and {dr.shape}")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must increase (the checkpoints in training order): the verdict reads the run forwards")
    if not (np.isfinite(ridge_scale) and ridge_scale > 0):
        raise ValueError(f"ridge_scale must be > 0 (the mean square of ridge's predictions), got {ridge_scale!r}")
    if not 0 < closeness < 1:
        raise ValueError(f"closeness must lie in (0, 1), got {closeness!r}")
    s, _ = segment_coordinate(dr, d_dmmse, d_between)
    rl = (s < 0.5) & (dr < closeness * ridge_scale)
    dl = s > 0.5
    ridge_index = leave_index = None
    if rl.any():
        first = int(np.argmax(rl))
        later = [j for j in range(first + 1, len(s)) if dl[j:].all()]
        if later:
            ridge_index = int(np.argmin(np.where(rl, dr, np.inf)))
            leave_index = later[0]
            return RunVerdict("transient", rl, dl, ridge_index, leave_index)
    late = steps >= late_from
    if not late.any():
        raise ValueError(f"late_from={late_from!r} is after the last checkpoint (step {steps[-1]}): no checkpoint is "
                         "late enough to judge where the run ends; pass a step within the run")
    if not rl.any() and dl[late].all():
        return RunVerdict("memorises", rl, dl, None, None)
    return RunVerdict("ridge" if rl[-1] else "undecided", rl, dl,
                      int(np.argmin(np.where(rl, dr, np.inf))) if rl.any() else None, None)


def crossover_n(delta_loss: float, delta_lambda: float) -> float:
    r"""The sample size :math:`n^*` where two solutions' free energies :math:`F_n \approx nL + \lambda\log n` cross.

    With :math:`\Delta L = L_1 - L_2 > 0` (solution 2 fits better) and :math:`\Delta\lambda = \lambda_2 - \lambda_1 > 0`
    (solution 2 is more complex), :math:`F_n(2) < F_n(1)` iff :math:`n\Delta L > \Delta\lambda\log n`; returns the
    larger root of :math:`n\Delta L = \Delta\lambda\log n` (Newton's method from above, to relative 1e-13; at the
    double root :math:`\Delta\lambda/\Delta L = e` to about 1e-8), or ``nan`` when solution 2 never overtakes solution
    1: a difference is ≤ 0 (with both negative the roles are swapped: solution 1 overtakes solution 2 at
    ``crossover_n(-delta_loss, -delta_lambda)``), or :math:`\Delta\lambda/\Delta L < e`, so that solution 2 wins at
    every :math:`n`.
    """
    for name, v in (("delta_loss", delta_loss), ("delta_lambda", delta_lambda)):
        if np.ndim(v) != 0 or not np.isfinite(v):
            raise ValueError(f"{name} must be one finite number, got {v!r}")
    if delta_loss <= 0 or delta_lambda <= 0:
        return float("nan")
    c = float(delta_lambda / delta_loss)            # n* solves f(n) = n − c log n = 0
    if c < np.e:
        return float("nan")
    n = 2 * c * math.log(c)                         # f(n) > 0 and f'(n) > 0 here: Newton decreases monotonically to n*
    for _ in range(2000):                           # (at c = e, a double root: linear convergence)
        step = (n - c * math.log(n)) / (1 - c / n)
        if not step > 1e-13 * n:                    # converged (or round-off at the double root)
            break
        n -= step
    return float(n)


def transient_settings() -> dict:
    r"""Sizes of the task-diversity sweep of Part III, "The transient ridge" (``SLT_QUICK=1`` shrinks them).

    Task: :math:`D = 2`, :math:`K = 8`, :math:`\sigma^2 = 0.125` (the paper: :math:`D = 8`, :math:`K = 16`).
    Model: :class:`~slt_companion.models.ICLTransformer` with 2 layers, 2 heads, width 32. Training: Adam at a
    constant learning rate 3e-3, batch 32, one run per task diversity :math:`M` in ``Ms``. LLC: the settings of
    "Stages in in-context linear regression" (:math:`n\beta = 60`, :math:`\gamma = 6`) at step size 1e-4.
    """
    from .config import size

    return {
        "task": {"task_dim": 2, "num_examples": 8, "noise_var": 0.125},
        "model": {"num_layers": 2, "num_heads": 2, "d_model": 32, "d_mlp": 32},
        "Ms": size([1, 2, 4, 8, 32], [1, 4, 32]), "task_seed": 0,
        "num_steps": size(8000, 80), "batch_size": 32, "lr": 3e-3, "schedule": "constant",
        "num_checkpoints": size(32, 6), "seed": 0,
        "probe": size(512, 64), "probe_seed": 2,
        "llc": {"num_chains": size(4, 2), "num_burnin": size(400, 5), "num_draws": size(200, 10),
                "batch_size": 16, "step_size": 1e-4, "nbeta": 60.0, "localization": 6.0, "seed": 0},
        "llc_data": size(2048, 128),
    }
