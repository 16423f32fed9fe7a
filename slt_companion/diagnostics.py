r"""MCMC diagnostics for SGLD chains: rank-normalised effective sample size and split :math:`\hat R`.

Implemented here (NumPy only) after Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), *Rank-normalization,
folding, and localization: an improved* :math:`\hat R` *for assessing convergence of MCMC*, the algorithms
Stan and ArviZ use:

- :func:`ess` -- bulk ESS: split each chain in two, replace every draw by the normal score of its rank,
  estimate the autocorrelation with Geyer's initial monotone sequence, :math:`\text{ESS} = MN/\hat\tau`.
- :func:`rhat` -- rank-normalised split :math:`\hat R`: the larger of the bulk value and the value on
  folded draws :math:`|x - \text{median}|` (which detects chains with equal means but different spreads).
  Values above about 1.01--1.05 mean the chains disagree; run longer or check the step size.

And :func:`z_change`, the change between two independent estimates in units of their combined standard error,
:math:`(b - a)/\sqrt{s_a^2 + s_b^2}`: how the book compares two λ̂ (a change of more than 3 is called a rise or
a fall).

Also :class:`SGLDDivergenceError`, raised by :mod:`slt_companion.sampling` when a chain blows up.

Used in: Part II, "Estimating λ and knowing when to trust it".
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["ess", "rhat", "split_chains", "rank_normalize", "autocovariance", "z_change", "SGLDDivergenceError",
           "NegativeLLCWarning"]


class NegativeLLCWarning(RuntimeWarning):
    """An LLC estimate came out negative beyond its error, or negative from chains that disagree (R̂ > 1.1): not an
    estimate of λ ≥ 0. A page that shows such a value on purpose can filter this class alone."""


class SGLDDivergenceError(RuntimeError):
    """An SGLD chain produced a non-finite or exploding loss. Attributes: ``step``, ``chain``, ``loss``, ``step_size``;
    from :func:`~slt_companion.llc.estimate_llcs` and :func:`~slt_companion.dynamics.llc_over_trajectory` also
    ``checkpoint`` (the index of the checkpoint that diverged) and ``completed`` (``{index: LLCEstimate}`` of the
    checkpoints finished before it); elsewhere those are ``None`` and ``{}``."""

    def __init__(self, *, step: int, chain: int, loss: float, step_size: float, what: str = "a non-finite loss",
                 checkpoint: int | None = None, where: str = "", completed: dict | None = None):
        self.step, self.chain, self.loss, self.step_size, self.what = step, chain, loss, step_size, what
        self.checkpoint, self.where, self.completed = checkpoint, where, dict(completed or {})
        smaller = step_size / 10
        kept = (f" The estimates of the {len(self.completed)} checkpoint(s) finished before it are kept in this "
                "error's .completed ({index: LLCEstimate}).") if self.completed else ""
        super().__init__(
            f"{where + ': ' if where else ''}SGLD diverged at step {step} (chain {chain}): {what} (loss = {loss:.6g}). "
            f"The step size ε = {step_size:.3g} is too large for this model and temperature; "
            f"try step_size={smaller:.3g} (10× smaller), or a larger localization.{kept}"
        )

    def __reduce__(self):
        """Pickle through the keyword arguments (a keyword-only ``__init__`` does not unpickle by default): the error
        and its ``completed`` estimates cross process boundaries intact (torch.distributed, multiprocessing)."""
        return (_rebuild_divergence, (dict(step=self.step, chain=self.chain, loss=self.loss, step_size=self.step_size,
                                           what=self.what, checkpoint=self.checkpoint, where=self.where,
                                           completed=self.completed),))

    def at_checkpoint(self, checkpoint: int, where: str, completed: dict | None = None) -> "SGLDDivergenceError":
        """This error, said of checkpoint ``checkpoint`` (``where`` names it in the message), with ``completed``."""
        return SGLDDivergenceError(step=self.step, chain=self.chain, loss=self.loss, step_size=self.step_size,
                                   what=self.what, checkpoint=checkpoint, where=where, completed=completed)


def _rebuild_divergence(kwargs: dict) -> SGLDDivergenceError:
    return SGLDDivergenceError(**kwargs)


def _as_2d(draws, name: str = "draws") -> np.ndarray:
    if isinstance(draws, torch.Tensor):
        draws = draws.detach().cpu().double().numpy()
    ary = np.asarray(draws, dtype=float)
    if ary.ndim == 1:
        ary = ary[None, :]
    if ary.ndim != 2:
        raise ValueError(f"{name} must have shape (chains, draws), got {ary.shape}")
    if ary.shape[0] < 1:
        raise ValueError(f"{name} holds no chains: shape (chains, draws) = {ary.shape}; pass at least one chain")
    if ary.shape[1] < 4:
        raise ValueError(f"{name} needs at least 4 draws per chain, got {ary.shape[1]} (shape (chains, draws) = "
                         f"{ary.shape})")
    if not np.isfinite(ary).all():
        raise ValueError(f"{name} contains NaN or inf")
    return ary


def split_chains(ary: np.ndarray) -> np.ndarray:
    """Split each chain into its first and last halves (the middle draw of an odd chain is dropped)."""
    half = ary.shape[1] // 2
    return np.vstack((ary[:, :half], ary[:, ary.shape[1] - half:]))


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of a flat array, ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=float)
    xs = x[order]
    # boundaries of runs of equal values
    starts = np.concatenate(([0], np.nonzero(np.diff(xs))[0] + 1))
    ends = np.concatenate((starts[1:], [x.size]))
    avg = (starts + ends + 1) / 2.0  # average of ranks start+1..end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def rank_normalize(ary: np.ndarray) -> np.ndarray:
    r"""Normal scores of the pooled ranks: :math:`z = \Phi^{-1}\big((r - 3/8)/(S + 1/4)\big)` (Blom)."""
    ranks = _rankdata(ary.ravel()).reshape(ary.shape)
    u = (ranks - 0.375) / (ary.size + 0.25)
    return torch.special.ndtri(torch.from_numpy(u)).numpy()


def autocovariance(ary: np.ndarray) -> np.ndarray:
    """Biased autocovariance of each row (lags 0..N-1), by FFT."""
    n = ary.shape[-1]
    x = ary - ary.mean(axis=-1, keepdims=True)
    m = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(x, n=m, axis=-1)
    return np.fft.irfft(f * np.conj(f), n=m, axis=-1)[..., :n] / n


def _ess_raw(ary: np.ndarray) -> float:
    n_chain, n_draw = ary.shape
    acov = autocovariance(ary)
    chain_mean = ary.mean(axis=1)
    mean_var = acov[:, 0].mean() * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus += np.var(chain_mean, ddof=1)
    if var_plus <= 0:
        return float("nan")
    rho = np.zeros(n_draw)
    rho_even, rho_odd = 1.0, 1.0 - (mean_var - acov[:, 1].mean()) / var_plus
    rho[0], rho[1] = rho_even, rho_odd
    t = 1
    while t < n_draw - 3 and rho_even + rho_odd > 0.0:   # Geyer's initial positive sequence
        rho_even = 1.0 - (mean_var - acov[:, t + 1].mean()) / var_plus
        rho_odd = 1.0 - (mean_var - acov[:, t + 2].mean()) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t + 1], rho[t + 2] = rho_even, rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:                                  # ... made monotone
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
        t += 2
    total = n_chain * n_draw
    tau = -1.0 + 2.0 * rho[: max_t + 1].sum() + rho[max_t + 1: max_t + 2].sum()
    tau = max(tau, 1.0 / math.log10(total))
    return float(total / tau)


def ess(draws) -> float:
    """Bulk effective sample size of ``draws`` (chains × draws), rank-normalised and split (Vehtari et al. 2021).

    For independent draws it is close to the number of draws (it can exceed it for anti-correlated chains);
    for a sticky chain it is much smaller. Returns ``nan`` if all draws are equal.
    """
    ary = _as_2d(draws)
    if np.ptp(ary) == 0:
        return float("nan")
    return _ess_raw(rank_normalize(split_chains(ary)))


def _rhat_raw(ary: np.ndarray) -> float:
    n = ary.shape[1]
    between = n * np.var(ary.mean(axis=1), ddof=1)
    within = np.mean(np.var(ary, axis=1, ddof=1))
    if within == 0:
        return float("nan")
    return float(np.sqrt((between / within + n - 1) / n))


def rhat(draws) -> float:
    r"""Rank-normalised split :math:`\hat R` (max of bulk and folded), Vehtari et al. (2021).

    1 for well-mixed chains; larger when chains (or the halves of one chain) sit at different levels or
    spreads. Needs at least 4 draws per chain; with one chain it compares its two halves.
    """
    ary = _as_2d(draws)
    if np.ptp(ary) == 0:
        return float("nan")
    split = split_chains(ary)
    bulk = _rhat_raw(rank_normalize(split))
    folded = _rhat_raw(rank_normalize(np.abs(split - np.median(split))))
    return max(bulk, folded)


def z_change(mean_from, sem_from, mean_to, sem_to):
    r"""The change from one estimate to another in units of their combined standard error,
    :math:`z = (b - a)/\sqrt{s_a^2 + s_b^2}` for independent estimates :math:`a \pm s_a` and :math:`b \pm s_b`
    (e.g. :attr:`LLCEstimate.mean` and :attr:`LLCEstimate.sem` at two checkpoints). Positive for a rise.

    Scalars give a ``float``; arrays broadcast (NumPy) and give an array. A zero combined error gives ``±inf`` for a
    change and ``nan`` for none; a NaN (an estimate not made) gives ``nan``; a negative standard error is refused
    (``ValueError``), since it is not one.
    """
    a, sa, b, sb = (np.asarray(v, dtype=float) for v in (mean_from, sem_from, mean_to, sem_to))
    for name, s in (("sem_from", sa), ("sem_to", sb)):
        if np.any(s < 0):
            raise ValueError(f"{name} must be standard errors (≥ 0), got {s!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (b - a) / np.hypot(sa, sb)
    return float(z) if z.ndim == 0 else z
