r"""The local learning coefficient (LLC) estimator of Lau, Furman, Wang, Murfet & Wei (2025).

.. math::
    \hat\lambda(w^*) = n\beta\,\Big(\E_{w\sim p_{\beta,\gamma}}[L_n(w)] - L_n(w^*)\Big),\qquad
    p_{\beta,\gamma}(w) \propto \exp\Big\{-n\beta L_n(w) - \frac\gamma2\|w-w^*\|^2\Big\},

with :math:`n\beta = n/\log n` by default (the WBIC temperature :math:`\beta^* = 1/\log n`, Watanabe 2013)
and the expectation taken over SGLD draws (:mod:`slt_companion.sampling`) after burn-in.

**The paired estimate.** Each draw's minibatch loss :math:`L_{B_t}(w_t)` is paired with the centre's loss on
the *same* minibatch, :math:`L_{B_t}(w^*)`, and :math:`\hat\lambda = n\beta\cdot\overline{L_{B_t}(w_t) - L_{B_t}(w^*)}`.
Both terms are unbiased for their full-data values, so the estimate targets the same quantity, but the
minibatch-to-minibatch noise (which is large: the loss of a batch of 500 fluctuates by far more than
:math:`\lambda/n\beta`) cancels. ``baseline="full"`` uses :math:`L_n(w^*)` on the full data instead, and
``baseline="batch"`` the centre's loss on a single minibatch (the choice that makes other tools' estimates
swing); both exist to show the difference (Part II, "Estimating λ"). ``init_loss`` always reports :math:`L_n(w^*)`
on the full data.

**step_size="auto"**: see :func:`auto_step_size` (a pilot run; documented there).

**Susceptibilities** (:func:`susceptibility`): the response of a posterior expectation to up-weighting a slice
of data, :math:`\chi = -n\beta\,\mathrm{Cov}(\phi, \Delta L)`, from the same local posterior and sampler
(Baker et al. 2025; Part IV, "You are what you eat").

Used in: Part II (all chapters), Part III (LLC curves over training).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from . import config as _config
from .convergence import (TARGET_ESS, TARGET_RHAT, ConvergenceRule, LLCConvergenceWarning, is_converged,
                          mostly_ties, warn_unconverged)
from .diagnostics import NegativeLLCWarning, SGLDDivergenceError, ess as _ess, rhat as _rhat
from ._checks import user_stacklevel
from .sampling import SamplerConfig, SGLDResult, _Problem, cpu_threads, sgld, threads_for

from .stepsize import AUTO_STEP_FACTOR, StepTooLarge, auto_step_size, curvature_check

__all__ = ["estimate_llc", "estimate_llcs", "auto_chunk_size", "estimate_refined_llcs", "LLCEstimate", "LLCConvergenceWarning", "auto_step_size", "default_nbeta", "AUTO_STEP_FACTOR", "half_mse",
           "GROUND_TRUTH", "ground_truth_problem", "run_ground_truth", "calibration_sweep",
           "PAPER_TOY_POTENTIALS", "toy_potential_exact", "susceptibility", "SusceptibilityEstimate",
           "loss_observable"]

#: names that live in modules of their own (one idea per module) and are still importable from here
_MOVED = {"GROUND_TRUTH": "groundtruth", "ground_truth_problem": "groundtruth", "run_ground_truth": "groundtruth",
          "PAPER_TOY_POTENTIALS": "groundtruth", "toy_potential_exact": "groundtruth",
          "calibration_sweep": "calibration",
          "susceptibility": "susceptibility", "SusceptibilityEstimate": "susceptibility",
          "loss_observable": "susceptibility"}


def __getattr__(name):   # PEP 562: `from slt_companion.llc import run_ground_truth` keeps working
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f".{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_nbeta(n: int) -> float:
    r""":math:`n\beta = n/\log n`, the WBIC inverse temperature times the sample size (Watanabe 2013)."""
    if n < 2:
        raise ValueError(f"n must be at least 2 for n/log n, got {n}")
    return n / math.log(n)


def _fmt_eps(eps) -> str:
    return "(" + ", ".join(f"{e:.3g}" for e in eps) + ")" if isinstance(eps, tuple) else f"{eps:.3g}"


def _config_to_dict(config: SamplerConfig) -> dict:
    """A sampler configuration as cacheable numbers (a per-chain step size becomes a list; unset entries dropped)."""
    cfg = config.to_dict()
    if isinstance(cfg["step_size"], tuple):
        cfg["step_size"] = list(cfg["step_size"])
    return {k: v for k, v in cfg.items() if v is not None}


def _config_from_dict(d: dict) -> SamplerConfig:
    cfg = dict(d)
    if isinstance(cfg.get("step_size"), list):
        cfg["step_size"] = tuple(cfg["step_size"])
    return SamplerConfig(**cfg)


def _extras_to_json(extras: dict) -> str:
    """An estimate's ``extras`` (diagnostics: nested dicts and lists of numbers and strings) as one JSON string, so
    that ``to_dict`` stays cacheable; arrays and tensors become lists, anything else its ``str``."""

    def plain(obj):
        if isinstance(obj, torch.Tensor):
            obj = obj.detach().cpu().numpy()
        return obj.tolist() if isinstance(obj, (np.ndarray, np.generic)) else str(obj)

    return json.dumps(extras, default=plain)


def _extras_from_json(text) -> dict:
    return json.loads(str(text)) if text is not None else {}


@dataclass
class LLCEstimate:
    r"""The result of :func:`estimate_llc`.

    - ``mean``: :math:`\hat\lambda`, the average over all chains and draws;
    - ``std``: the standard deviation of the per-chain estimates across chains (the spread a reader sees
      between independent runs of one chain); ``sem``: the Monte Carlo standard error of ``mean``,
      :math:`\mathrm{sd}(\text{draws})/\sqrt{\mathrm{ESS}}`, at the step size used. With ``step_size="auto"``
      a pilot run of the same ``seed`` chooses the step, so another seed also picks another step (up to ±7 % on
      the suite's RRR and DLN cases) and λ̂ moves with it. Over 16 seeds (4 chains, defaults;
      ``benchmarks/se_calibration.py``) the spread of converged λ̂ was 1.6 times the rms ``sem`` on RRR 6-3-2
      rank 1, 1.2 on DLN 4-2-4-2-4 and 0.9 on devinterp's crossing [0, 1] (another 16 seeds on the float64 noise
      stream: 1.4, 0.5, 1.1); compare estimates over seeds, not by ``sem`` alone;
    - ``per_chain``: per-chain estimates ``(chains,)``; ``llc_trace``: per-draw values
      :math:`n\beta(L_{B_t}(w_t) - L_{B_t}(w^*))` ``(chains, draws)``;
    - ``trace``: the minibatch loss :math:`L_{B_t}(w_t)` ``(chains, burn-in + draws)``;
    - ``burnin_llc_trace``: the same per-step values as ``llc_trace`` along the burn-in ``(chains, burn-in)``, so
      that ``np.concatenate([est.burnin_llc_trace, est.llc_trace], axis=1)`` follows :math:`\hat\lambda` from
      :math:`w^*` to the end of the run (how long the chains took to relax); not used by any estimate (``None`` for
      the per-group results of :func:`estimate_refined_llcs`);
    - ``init_loss``: :math:`L_n(w^*)` on the full data; ``ess``, ``rhat``: bulk ESS and rank-normalised split
      :math:`\hat R` of ``llc_trace`` (:mod:`slt_companion.diagnostics`); ``config``: the :class:`SamplerConfig` used
      (with the step size actually chosen, and the burn-in and draws actually run); ``seconds``: sampling wall time;
    - ``stop_reason``: why sampling ended -- ``"converged"`` (``num_draws="auto"`` reached its targets),
      ``"max_draws"`` / ``"max_seconds"`` (its budget ran out first) or ``"fixed"`` (a number of draws was given);
    - ``converged``: ``rhat`` ≤ 1.01 and ``ess`` ≥ 400, with chains that move (:mod:`slt_companion.convergence`); an
      estimate that is not converged is not a result, and :func:`estimate_llc` warns (:class:`LLCConvergenceWarning`).
    """

    mean: float
    std: float
    sem: float
    per_chain: np.ndarray
    llc_trace: np.ndarray
    trace: np.ndarray
    init_loss: float
    ess: float
    rhat: float
    config: SamplerConfig
    baseline: str = "paired"
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)
    stop_reason: str = "fixed"
    burnin_llc_trace: np.ndarray | None = None

    @property
    def converged(self) -> bool:
        """R̂ ≤ 1.01 and bulk ESS ≥ 400 (:func:`slt_companion.convergence.is_converged`), and chains that move: a
        trace that repeats one value in most of a chain's draws is not converged, whatever its R̂ and ESS
        (:func:`slt_companion.convergence.mostly_ties`)."""
        return is_converged(self.rhat, self.ess) and not mostly_ties(self.llc_trace)

    def status(self) -> str:
        """One line: converged or not, with R̂, ESS and why sampling stopped."""
        head = "converged" if self.converged else "NOT CONVERGED, not a result" + (
            " (the chains barely move: most draws repeat one value)" if mostly_ties(self.llc_trace) else "")
        return (f"{head}: R̂ = {self.rhat:.3f} (target ≤ {TARGET_RHAT}), ESS = {self.ess:.0f} (target ≥ "
                f"{TARGET_ESS:.0f}), stopped: {self.stop_reason} after {self.config.num_burnin} + "
                f"{self.config.num_draws} steps")

    def __repr__(self) -> str:
        return (f"LLCEstimate(mean={self.mean:.4g}, std={self.std:.3g}, sem={self.sem:.3g}, ess={self.ess:.0f}, "
                f"rhat={self.rhat:.3f}, chains={self.config.num_chains}, draws={self.config.num_draws}, "
                f"step_size={_fmt_eps(self.config.step_size)}, nbeta={self.config.nbeta:.4g}, "
                f"localization={self.config.localization:g})\n  {self.status()}")

    def to_arviz(self):
        """The draws as an ArviZ object (``az.summary``, ``az.plot_trace``): :func:`slt_companion.arviz_interop.to_arviz`."""
        from .arviz_interop import to_arviz

        return to_arviz(self)

    def to_dict(self) -> dict:
        """Numbers and arrays only (for :func:`slt_companion.cache.cached`)."""
        return {"mean": self.mean, "std": self.std, "sem": self.sem, "per_chain": self.per_chain,
                "llc_trace": self.llc_trace, "trace": self.trace, "init_loss": self.init_loss,
                "ess": self.ess, "rhat": self.rhat, "baseline": self.baseline, "seconds": self.seconds,
                "config": _config_to_dict(self.config), "stop_reason": self.stop_reason,
                "extras_json": _extras_to_json(self.extras), "burnin_llc_trace": self.burnin_llc_trace}

    @classmethod
    def from_dict(cls, d: dict) -> "LLCEstimate":
        burnin = d.get("burnin_llc_trace")
        return cls(mean=float(d["mean"]), std=float(d["std"]), sem=float(d["sem"]),
                   per_chain=np.asarray(d["per_chain"]), llc_trace=np.asarray(d["llc_trace"]),
                   trace=np.asarray(d["trace"]), init_loss=float(d["init_loss"]), ess=float(d["ess"]),
                   rhat=float(d["rhat"]), config=_config_from_dict(d["config"]), baseline=str(d["baseline"]),
                   seconds=float(d["seconds"]), stop_reason=str(d.get("stop_reason", "fixed")),
                   extras=_extras_from_json(d.get("extras_json")),
                   burnin_llc_trace=None if burnin is None else np.asarray(burnin))

    def plot(self, ax=None, *, theory: float | None = None, title: str | None = None):
        """Per-chain running λ̂ over draws (burn-in excluded), the overall estimate, and ``theory`` if given."""
        from . import plot as slt_plot

        if ax is None:
            _, ax = slt_plot.new_figure(width=6.0, height=3.6)
        draws = np.arange(1, self.llc_trace.shape[1] + 1)
        running = np.cumsum(self.llc_trace, axis=1) / draws
        for c, row in enumerate(running):
            ax.plot(draws, row, lw=1.0, alpha=0.8, color=slt_plot.COLORS["muted"] if c else slt_plot.COLORS["estimate"],
                    label="running mean, per chain" if c == 0 else None)
        ax.axhline(self.mean, color=slt_plot.COLORS["estimate"], lw=1.2,
                   label=rf"$\hat\lambda = {self.mean:.3g} \pm {self.std:.2g}$")
        if theory is not None:
            slt_plot.theory_line(ax, float(theory), rf"theory $\lambda = {float(theory):.4g}$")
        ax.set_xlabel("draw (after burn-in)")
        ax.set_ylabel(r"running $\hat\lambda$")
        ax.set_title(title or ("LLC estimate: " if self.converged else "LLC estimate, NOT CONVERGED: ")
                     + f"ESS {self.ess:.0f}, $\\hat R$ {self.rhat:.3f}",
                     color="black" if self.converged else "#B00020")
        ax.legend(fontsize=8.5)
        return ax


def _sampling_defaults(model, num_draws, num_burnin, device, *, auto_ok: bool = True):
    """The estimators' shared defaults: ``num_draws="auto"`` (convergence-driven; burn-in is the first half of the
    run, :mod:`slt_companion.convergence`), or for a fixed ``num_draws`` a burn-in of max(500 (100 quick),
    num_draws / 2); and the device of the model's parameters. Without ``auto_ok`` the default is 1000 draws (200
    quick)."""
    if num_draws is None:
        num_draws = "auto" if auto_ok else _config.size(1000, 200)
    if isinstance(num_draws, str):
        if num_draws != "auto" or not auto_ok:
            alts = " or 'auto'" if auto_ok else ""
            raise ValueError(f"num_draws must be a positive integer{alts}, got {num_draws!r}")
        if num_burnin is not None:
            raise ValueError("num_burnin must be None with num_draws='auto': the burn-in is the first half of the run "
                             "(slt_companion.convergence); give a number of draws to fix the burn-in")
    elif num_burnin is None:
        num_burnin = max(_config.size(500, 100), int(num_draws) // 2)
    if device is None:
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            device = None
    return num_draws, num_burnin, device


def _check_sampler_args(num_draws, num_burnin, *, nbeta, localization, num_chains, batch_size, seed,
                        preconditioner=None, step_size=None) -> None:
    """Check the sampler's arguments before any computation (raises what :class:`SamplerConfig` raises);
    ``nbeta=None`` (n / log n, which waits for the data) and a ``step_size`` that is neither a float nor a tuple or
    list of one per chain ("auto", or none given) are not checked."""
    SamplerConfig(step_size=step_size if isinstance(step_size, (float, tuple, list)) else 1.0,
                  nbeta=1.0 if nbeta is None else nbeta, localization=localization,
                  num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin, batch_size=batch_size, seed=seed,
                  preconditioner=preconditioner)


def _plan(num_draws, num_burnin, max_draws, max_seconds):
    """``(rule, num_burnin, num_draws)`` for :func:`slt_companion.sampling.sgld`: with ``num_draws="auto"`` a
    :class:`ConvergenceRule` and the most steps it allows (burn-in 0; the stop rule sets the real split)."""
    if num_draws != "auto":
        if max_draws is not None or max_seconds is not None:
            raise ValueError("max_draws and max_seconds apply to num_draws='auto' only; with a fixed num_draws the run "
                             "length is num_burnin + num_draws")
        return None, num_burnin, num_draws
    from .sampling import BLOCK

    rule = ConvergenceRule(max_draws=max_draws, max_seconds=max_seconds)
    return rule, 0, rule.max_steps(BLOCK)


def estimate_llc(model: torch.nn.Module, loss_fn: Callable, data, *, num_chains: int = 4,
                 num_draws: int | str | None = None, num_burnin: int | None = None, step_size="auto",
                 localization: float = 1.0, nbeta: float | None = None, batch_size: int = 500, params=None,
                 seed: int = 0, device=None, progress: bool = True, preconditioner: str | None = None,
                 baseline: str = "paired", max_draws: int | None = None,
                 max_seconds: float | None = None) -> LLCEstimate:
    r"""Estimate the local learning coefficient :math:`\hat\lambda(w^*)` at the model's current parameters.

    Parameters
    ----------
    model : nn.Module with a functional forward (:mod:`slt_companion.sampling`); its parameters are :math:`w^*`
        and are not modified.
    loss_fn : ``loss_fn(model(x), y)`` -> the *mean* per-sample negative log-likelihood of the batch.
        Scaling the loss by :math:`c` is the same as running at :math:`n\beta' = c\,n\beta`: the local posterior
        :math:`\propto e^{-n\beta cL}` is a different temperature, and :math:`\hat\lambda = n\beta\,(\E[cL] - cL^*)
        = n\beta'(\E_{\beta'}[L] - L^*)`, which targets the same :math:`\lambda` (it is temperature-free to
        leading order; Part II, "Estimating λ", shows MSE and ½MSE agreeing). What changes is the effective
        :math:`n\beta'` and with it the finite-temperature corrections and the automatic step size.
    data : ``(x, y)`` tensors, a ``TensorDataset``, or an object with ``.xy``. Passing data other than
        the training data gives the **data-refined LLC**.
    num_chains : chains run together (4).
    num_draws : ``"auto"`` (the default): sample until the chains have converged -- split :math:`\hat R` ≤ 1.01
        and bulk ESS ≥ 400 on the second half of the run, the first half being burn-in -- or until
        ``max_draws`` / ``max_seconds`` (:mod:`slt_companion.convergence`); ``stop_reason`` says which.
        An integer fixes the number of draws per chain after ``num_burnin`` steps (default
        ``max(500, num_draws // 2)``, 100 instead of 500 in ``SLT_QUICK`` mode); it is checked against the same
        targets afterwards.
    num_burnin : burn-in steps for a fixed ``num_draws`` (must be ``None`` with ``"auto"``).
    max_draws, max_seconds : the budget of ``num_draws="auto"``: at most ``max_draws`` kept draws per chain
        (default 5000, 1000 in ``SLT_QUICK`` mode; the run is twice as long, rounded up to whole blocks of
        :data:`~slt_companion.sampling.BLOCK` = 64 steps, so 1000 keeps 1024) and ``max_seconds`` of sampling
        (default none; a time budget makes the result machine-dependent). The first convergence test comes after
        ``min(2000, max_draws)`` draws (:class:`~slt_companion.convergence.ConvergenceRule`), so a ``max_draws`` below
        2000 is one test at the end of the budget, not an earlier stop.
    step_size : a float :math:`\varepsilon`, or ``"auto"`` (:func:`auto_step_size`, a short pilot run).
    localization : :math:`\gamma` (default 1: a weak tether that removes drift along flat directions
        while biasing :math:`\hat\lambda` by only a few percent; large values bias it low).
    nbeta : :math:`n\beta`; ``None`` means :math:`n/\log n` with ``n = len(data)``.
    batch_size : minibatch size per chain and step (clipped to ``n``).
    params : restrict sampling to some parameters (names, a name prefix, or a predicate ``(name, tensor)``):
        the **weight-refined LLC** of that component.
    seed : chains use independent generators derived from it; same seed, same result on CPU (a
        convergence-driven run that stops after ``T`` steps equals a fixed run of ``T`` steps).
    device : ``None`` means the device the model's parameters are on (no silent copies); or ``"cpu"``,
        ``"cuda"``, ... (:func:`slt_companion.config.resolve_device`), which must match the model's device.
    preconditioner : ``None`` or ``"rmsprop"``.
    baseline : ``"paired"`` (default), ``"full"`` or ``"batch"`` -- see the module docstring.

    Warns
    -----
    LLCConvergenceWarning
        The chains ended unconverged (R̂ > 1.01 or ESS < 400): the number is not a result. The message names
        R̂, the ESS and the fix; ``est.converged`` is False and ``repr(est)`` says so.
    NegativeLLCWarning
        λ̂ < 0 beyond its error.

    Raises
    ------
    ValueError, TypeError
        Shape, dtype and device problems, named with the argument, before any sampling starts.
    SGLDDivergenceError
        A chain produced NaN/inf or an exploding loss (:class:`~slt_companion.diagnostics.SGLDDivergenceError`).
    """
    if baseline not in ("paired", "full", "batch"):
        raise ValueError(f"baseline must be 'paired', 'full' or 'batch', got {baseline!r}")
    num_draws, num_burnin, device = _sampling_defaults(model, num_draws, num_burnin, device)
    rule, burnin_run, draws_run = _plan(num_draws, num_burnin, max_draws, max_seconds)
    prob = _Problem(model, loss_fn, data, params, device)
    if nbeta is None:
        nbeta = default_nbeta(prob.n)
    _check_sampler_args(draws_run, burnin_run, nbeta=nbeta, localization=localization, num_chains=num_chains,
                        batch_size=batch_size, seed=seed, preconditioner=preconditioner)
    with cpu_threads(threads_for(prob, num_chains, batch_size)):
        est = _estimate(prob, model, loss_fn, num_chains=num_chains, num_draws=draws_run, num_burnin=burnin_run,
                        rule=rule, step_size=step_size, localization=localization, nbeta=nbeta,
                        batch_size=batch_size, seed=seed, progress=progress, preconditioner=preconditioner,
                        baseline=baseline)
    _warn_if_unconverged(est, "The LLC estimate")
    return est


def _warn_if_unconverged(est: LLCEstimate, what: str) -> None:
    if not est.converged:
        eps = est.config.step_size
        warn_unconverged(f"{what} λ̂ = {est.mean:.4g}", est.rhat, est.ess, est.stop_reason,
                         step_size=float(eps) if not isinstance(eps, tuple) else None,
                         ties=mostly_ties(est.llc_trace))


def _resolve_step_size(prob, step_size, *, nbeta, localization, batch_size, seed, preconditioner=None):
    """``(step_size, extras)``: a number passes through; ``"auto"`` runs :func:`auto_step_size` and records its
    diagnostics in ``extras["auto_step"]``."""
    extras: dict = {}
    if isinstance(step_size, str):
        if step_size != "auto":
            raise ValueError(f"step_size must be a positive number or 'auto', got {step_size!r}")
        step_size, extras["auto_step"] = auto_step_size(prob, nbeta=nbeta, localization=localization,
                                                        batch_size=batch_size, seed=seed,
                                                        preconditioner=preconditioner)
    return step_size, extras


def _finish(res: SGLDResult, rule) -> tuple[SamplerConfig, str]:
    """The configuration actually run and why it stopped (a stop rule that never fired used its whole budget)."""
    cfg = res.config
    if rule is None:
        return cfg, "fixed"
    reason = res.extras.get("stop_reason", "budget")
    if reason == "budget":
        T = cfg.num_burnin + cfg.num_draws
        cfg = replace(cfg, num_burnin=T // 2, num_draws=T - T // 2)
        reason = "max_draws"
    return cfg, reason


#: with step_size="auto", a run that diverges is restarted with a step this many times smaller, at most
#: AUTO_RETRIES times: the pilot saw only the start of the chains, and a chain that later reaches stiffer
#: regions (higher-order normal crossings) shows that the step was too large after all. The curvature check
#: (:func:`~slt_companion.stepsize.curvature_check`) has a budget of its own, AUTO_RETRIES reductions: a restart
#: after a divergence keeps the check on (until 2026-12-01 the two shared one budget, so a run whose first three
#: attempts diverged ran its last without the check, and could diverge late where the check would have caught the
#: stiffness: the normal crossing w₁²w₂³, seed 0)
AUTO_SHRINK, AUTO_RETRIES = 4.0, 3


def _sample_retrying(prob, model, loss_fn, cfg, rule, llc_of, *, auto: bool, extras: dict, progress: bool,
                     center_loss: bool, chain_mask=None) -> SGLDResult:
    """One SGLD run (with the convergence rule's stop callback); with an automatic step size a divergence
    restarts the whole run with the step :data:`AUTO_SHRINK` times smaller, at most :data:`AUTO_RETRIES` times,
    and the curvature check may restart it with a smaller step, at most :data:`AUTO_RETRIES` times more (the
    last run after that goes without the check: its R̂/ESS still judge it). Every restart is recorded in
    ``extras["auto_step"]["retries"]``."""
    from .diagnostics import SGLDDivergenceError
    from .sampling import BLOCK

    divergences = reductions = 0
    while True:
        check = curvature_check(prob, cfg) if auto and reductions < AUTO_RETRIES else None
        stop = rule.stop_fn(llc_of, BLOCK, check) if rule is not None else None
        try:
            return sgld(model, loss_fn, None, cfg, progress=progress, center_loss=center_loss, num_threads=None,
                        stop=stop, chain_mask=chain_mask, _problem=prob)
        except StepTooLarge as big:
            reductions += 1
            eps = big.new_step_size
            extras["auto_step"].setdefault("retries", []).append({"why": str(big), "new_step_size": eps})
            cfg = replace(cfg, step_size=eps)
        except SGLDDivergenceError as err:
            if not auto:
                raise
            if divergences == AUTO_RETRIES:
                raise SGLDDivergenceError(step=err.step, chain=err.chain, loss=err.loss, step_size=err.step_size,
                                          what=f"{err.what}, after {AUTO_RETRIES} automatic restarts with "
                                               f"{AUTO_SHRINK:g}× smaller steps") from err
            divergences += 1
            eps = cfg.step_size
            eps = tuple(e / AUTO_SHRINK for e in eps) if isinstance(eps, tuple) else eps / AUTO_SHRINK
            extras["auto_step"].setdefault("retries", []).append({"step": err.step, "chain": err.chain,
                                                                  "new_step_size": eps})
            cfg = replace(cfg, step_size=eps)


def _batch_baseline(prob, model, loss_fn, batch_size: int, seed: int) -> float:
    """``baseline="batch"``: the centre's loss on one minibatch drawn from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    sel = torch.randperm(prob.n, generator=gen)[:min(batch_size, prob.n)].to(prob.device)
    with torch.no_grad():
        return float(loss_fn(model(prob.x[sel]), prob.y[sel]))


def _estimate(prob, model, loss_fn, *, num_chains, num_draws, num_burnin, rule, step_size, localization, nbeta,
              batch_size, seed, progress, preconditioner, baseline) -> LLCEstimate:
    prob.check(batch_size)
    step_size, extras = _resolve_step_size(prob, step_size, nbeta=nbeta, localization=localization,
                                           batch_size=batch_size, seed=seed, preconditioner=preconditioner)
    cfg = SamplerConfig(step_size=step_size, nbeta=float(nbeta), localization=float(localization),
                        num_chains=int(num_chains), num_draws=int(num_draws), num_burnin=int(num_burnin),
                        batch_size=int(batch_size), seed=int(seed), preconditioner=preconditioner)
    init_loss = prob.center_loss()  # computed by prob.check above
    if baseline == "full":
        base = init_loss
    elif baseline == "batch":  # one minibatch, as a single-batch initial loss would give
        base = _batch_baseline(prob, model, loss_fn, batch_size, seed)
        extras["batch_init_loss"] = base

    def llc_of(loss, center, burnin):
        ref = center[:, burnin:] if baseline == "paired" else base
        return (cfg.nbeta * (loss[:, burnin:] - ref)).numpy()

    res = _sample_retrying(prob, model, loss_fn, cfg, rule, llc_of, auto="auto_step" in extras, extras=extras,
                           progress=progress, center_loss=(baseline == "paired"))
    cfg, reason = _finish(res, rule)
    return _summarize_run(llc_of(res.loss, res.center_loss, 0), res.loss.numpy(), init_loss, cfg, baseline,
                          res.seconds, extras, reason)


# ---------------------------------------------------------------------------------------------------------
# Many centres at once: checkpoints as chains (issue "Scale"). Used in: Part III (every LLC curve), "Scaling out".
# ---------------------------------------------------------------------------------------------------------

#: checkpoints sampled together in one batched run at most, by default (their chains are one tensor; more saves
#: Python overhead per step on small models, costs memory on large ones); on a CPU also :data:`CHUNK_BYTES`
CHECKPOINTS_PER_RUN = 8

#: on a CPU, the default batched run holds only as many checkpoints as keep one step's activations (what autograd
#: keeps for the backward pass, :meth:`~slt_companion.sampling._Problem.step_bytes`) under this many bytes, and at
#: least one. Past it the step runs out of the CPU's caches: per chain-step, 8 checkpoints × 4 chains of Part III's
#: transformers ran 1.2x (in-context regression, 13 MB per checkpoint), 1.2x (language model) and 1.8x (one head
#: of it sampled, 5 MB) slower than one checkpoint at a time, while an MLP's (1 MB) and the TMS's (0.2 MB) ran
#: fastest 4 and 8 to a run (``benchmarks/llc_checkpoints.py``, "chunk"). On a GPU: :data:`CHECKPOINTS_PER_RUN`.
CHUNK_BYTES = 4 * 2 ** 20


def _auto_chunk(prob: _Problem, num_chains: int, batch_size: int) -> int:
    if prob.device.type != "cpu":
        return CHECKPOINTS_PER_RUN
    per = prob.step_bytes(num_chains, batch_size)
    return max(1, min(CHECKPOINTS_PER_RUN, CHUNK_BYTES // per)) if per > 0 else CHECKPOINTS_PER_RUN


def auto_chunk_size(model: torch.nn.Module, loss_fn: Callable, data, *, num_chains: int = 4, batch_size: int = 500,
                    params=None, device=None) -> int:
    """How many checkpoints of ``model``'s architecture :func:`estimate_llcs` samples in one batched run when
    ``chunk_size=None`` (arguments as there): :data:`CHECKPOINTS_PER_RUN`, and on a CPU at most as many as keep one
    step's activations under :data:`CHUNK_BYTES` (at least 1). Depends only on the model, the data's shapes and the
    settings, never on timings, so a fixed seed still gives the same numbers."""
    return _auto_chunk(_Problem(model, loss_fn, data, params, device), num_chains, batch_size)


def _as_models(models, template) -> list:
    """``models`` as nn.Modules: modules pass through; state dicts are loaded into copies of ``template``."""
    import copy

    if isinstance(models, (torch.nn.Module, dict)):
        raise TypeError(f"models must be a list of nn.Modules (or of state dicts with template=), got one "
                        f"{type(models).__name__}: pass [model], or call estimate_llc(model, ...)")
    models = list(models)
    if not models:
        raise ValueError("models is empty: pass a list of nn.Modules, or of state dicts with template=")
    out = []
    for i, m in enumerate(models):
        if isinstance(m, torch.nn.Module):
            out.append(m)
            continue
        if not isinstance(m, dict):
            raise TypeError(f"models[{i}] is a {type(m).__name__}: pass nn.Modules, or state dicts with template=")
        if template is None:
            raise ValueError(f"models[{i}] is a state dict: pass template= (an nn.Module of the same architecture) "
                             "to load it into")
        model = copy.deepcopy(template)
        try:
            model.load_state_dict(m, strict=True)
        except (RuntimeError, KeyError, TypeError) as err:
            raise ValueError(f"models[{i}] does not fit template ({type(template).__name__}): {err}") from err
        out.append(model)
    return out


def _signature_difference(a: tuple, b: tuple) -> str:
    """What differs between two submodules' :func:`~slt_companion.sampling.module_signature` entries, in words."""
    name = a[0] or "the model"
    if a[0] != b[0] or a[1] != b[1]:
        return f"{a[0] or 'the model'} is a {a[1].rsplit('.', 1)[-1]}, {b[0] or 'the model'} a {b[1].rsplit('.', 1)[-1]}"
    if a[2] != b[2]:
        return f"{name} is in {'training' if a[2] else 'eval'} mode in one, {'training' if b[2] else 'eval'} in the other"
    if a[3] != b[3]:
        da, db = dict(a[3]), dict(b[3])
        diff = [f"{k} {da.get(k, '-')} vs {db.get(k, '-')}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]
        return f"{name}: {', '.join(diff)}"
    return f"{name}: forward hooks {a[4]} vs {b[4]}"


def _tensor_attributes(model: torch.nn.Module) -> dict:
    """``{"submodule.attr": tensor}`` for every tensor a submodule holds as a plain attribute (``self.scale =
    torch.tensor(2.0)``), neither a parameter nor a buffer: the forward may read it, but the sampler does not carry
    it per checkpoint. Left out: attributes a forward pre-hook recomputes from the parameters on every call
    (``weight_norm``, ``spectral_norm``: their hook names the attribute)."""
    out = {}
    for name, m in model.named_modules():
        owned = {getattr(h, "name", None) for h in m._forward_pre_hooks.values()}
        out.update({f"{name}.{k}" if name else k: v for k, v in vars(m).items()
                    if isinstance(v, torch.Tensor) and k not in owned})
    return out


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.detach().cpu(), b.detach().cpu())


def estimate_llcs(models, loss_fn: Callable, data, *, template: torch.nn.Module | None = None, num_chains: int = 4,
                  num_draws: int | str | None = None, num_burnin: int | None = None, step_size="auto",
                  localization: float = 1.0, nbeta: float | None = None, batch_size: int = 500, params=None,
                  seed: int = 0, device=None, progress: bool = True, preconditioner: str | None = None,
                  baseline: str = "paired", max_draws: int | None = None, max_seconds: float | None = None,
                  chunk_size: int | None = None, distributed: bool | None = None) -> list[LLCEstimate]:
    r"""λ̂ at many centres -- the checkpoints of a training run -- sampled together: **checkpoints as chains**.

    ``models``: nn.Modules of one architecture, or state dicts with ``template=`` (loaded into copies of it).
    Every other argument means what it means in :func:`estimate_llc`, and ``estimate_llcs(models, ...)[i]``
    **equals** ``estimate_llc(models[i], ...)`` (same ``seed`` for every checkpoint; equal up to floating-point
    rounding of the batched arithmetic, tested): checkpoint ``i``'s chains carry their own centre :math:`w^*_i`,
    minibatch stream, step size (``"auto"`` chooses it per checkpoint) and diagnostics, and their random numbers
    do not depend on which other checkpoints run beside them. With ``num_draws="auto"`` each checkpoint stops when
    *it* has converged and leaves the batch (:meth:`ConvergenceRule.group_stop_fn`); a checkpoint whose chains
    diverge or outgrow their step is rerun on its own with :func:`estimate_llc`'s automatic restarts. With
    ``params=`` (a refined LLC over a trajectory) each chain also carries its own checkpoint's values of the
    parameters left out of the sampling, held fixed; only checkpoints whose frozen tensors differ in structure are
    run one at a time.

    ``chunk_size``: checkpoints per batched run; all their chains are one ``(chunk_size * num_chains, D)`` tensor,
    one vmapped forward/backward per step. Default (``None``): :func:`auto_chunk_size`, up to
    :data:`CHECKPOINTS_PER_RUN`, fewer on a CPU where one step's activations would outgrow its caches.
    ``distributed``: ``None`` (default) shards the checkpoints over the ranks of an initialised
    ``torch.distributed`` process group when its world size is > 1 (:func:`slt_companion.distributed.run_sharded`:
    gloo on CPU, NCCL on GPU; launch with ``torchrun``, or use ``python -m slt_companion.llc_trajectory``); every
    rank returns the whole list, identical to a single-process run with the same seed. ``False`` never shards.

    Warns once (:class:`LLCConvergenceWarning`) listing the checkpoints whose chains did not converge.
    Raises ValueError naming the checkpoint whose parameters differ in names, shapes or dtype from the first, or
    whose tensor attributes that are no buffers differ (each checkpoint would be run with the first one's). A
    checkpoint that diverges raises :class:`~slt_companion.diagnostics.SGLDDivergenceError` naming it
    (``err.checkpoint``), with the estimates finished before it in ``err.completed`` (``{index: LLCEstimate}``).
    """
    if baseline not in ("paired", "full", "batch"):
        raise ValueError(f"baseline must be 'paired', 'full' or 'batch', got {baseline!r}")
    from ._checks import check_int
    from .distributed import run_sharded

    models = _as_models(models, template)
    chunk = None if chunk_size is None else check_int("chunk_size", chunk_size, minimum=1)
    num_draws, num_burnin, device = _sampling_defaults(models[0], num_draws, num_burnin, device)
    rule, burnin_run, draws_run = _plan(num_draws, num_burnin, max_draws, max_seconds)
    _check_sampler_args(draws_run, burnin_run, nbeta=nbeta, localization=localization, num_chains=num_chains,
                        batch_size=batch_size, seed=seed, preconditioner=preconditioner)
    from .sampling import module_signature

    # every checkpoint is sampled through the first one's forward: they must be one architecture in one state
    sig0 = module_signature(models[0], hook_ids=False)
    for i, m in enumerate(models[1:], start=1):
        sig = module_signature(m, hook_ids=False)
        if sig != sig0:
            where = next((_signature_difference(a, b) for a, b in zip(sig0, sig) if a != b),
                         f"{len(sig)} submodules vs {len(sig0)}")
            raise ValueError(f"models[{i}] is not the architecture of models[0] in the same state ({where}); "
                             "estimate_llcs samples every checkpoint through one forward: pass models of one class, "
                             "sizes and train/eval mode, or estimate them separately with estimate_llc")
    attrs0 = _tensor_attributes(models[0])
    for i, m in enumerate(models[1:], start=1):
        attrs = _tensor_attributes(m)
        # (one set in only some models, e.g. a cache made lazily, is left alone: only models[0]'s forward runs)
        diff = [k for k in attrs0 if k in attrs and not _same_tensor(attrs[k], attrs0[k])]
        if diff:
            name = diff[0]
            mod, _, attr = name.rpartition(".")
            what = (f"models[{i}].{name} is a tensor attribute (neither a parameter nor a buffer) that differs from "
                    f"models[0]'s")
            raise ValueError(f"{what}; estimate_llcs samples every checkpoint through models[0]'s forward, so "
                             f"models[{i}]'s would be ignored. Register it as a buffer "
                             f"({mod + '.' if mod else ''}register_buffer({attr!r}, tensor)) so that each checkpoint "
                             "carries its own, or estimate the models separately with estimate_llc")
    settings = dict(num_chains=num_chains, num_draws=draws_run, num_burnin=burnin_run, rule=rule,
                    step_size=step_size, localization=localization, nbeta=nbeta, batch_size=batch_size,
                    seed=seed, progress=progress, preconditioner=preconditioner, baseline=baseline)

    def work(indices: list[int]) -> list[LLCEstimate]:
        probs = []
        for i in indices:
            try:
                probs.append(_Problem(models[i], loss_fn, data, params, device))
            except (TypeError, ValueError) as err:
                raise type(err)(f"checkpoint {i} (models[{i}]): {err}") from err
        first = probs[0] if probs else None
        for i, prob in zip(indices, probs):
            if (prob.names, prob.shapes, prob.dtype) != (first.names, first.shapes, first.dtype):
                diff = [f"{n} {tuple(s)}" for n, s in zip(prob.names, prob.shapes)
                        if (n, s) not in set(zip(first.names, first.shapes))]
                raise ValueError(f"checkpoint {i}'s sampled parameters differ from checkpoint {indices[0]}'s "
                                 f"({', '.join(diff[:4]) or f'dtype {prob.dtype} vs {first.dtype}'}): every model "
                                 "must have the same architecture")
        out: list[LLCEstimate] = []
        per_run = chunk or (_auto_chunk(first, num_chains, batch_size) if first is not None else 1)
        for s0 in range(0, len(probs), per_run):
            run = indices[s0:s0 + per_run]
            try:
                out += _estimate_batch([models[i] for i in run], probs[s0:s0 + per_run], loss_fn, **settings)
            except _BatchDiverged as b:     # name the checkpoint; keep what is finished
                i = run[b.index]
                done = {**dict(zip(indices, out)), **{run[k]: e for k, e in b.completed.items()}}
                raise b.err.at_checkpoint(i, f"checkpoint {i} (models[{i}])", done) from b.err
        return out

    ests = run_sharded(work, len(models), distributed=distributed)
    bad = [i for i, e in enumerate(ests) if not e.converged]
    from .distributed import context

    if bad and context()[0] == 0:
        warnings.warn(f"λ̂ did not converge at {len(bad)} of {len(ests)} checkpoints (indices {bad[:8]}"
                      f"{' …' if len(bad) > 8 else ''}; R̂ up to {max(ests[i].rhat for i in bad):.3f}, ESS down to "
                      f"{min(ests[i].ess for i in bad):.0f}): those estimates are not results. Mark them (est.converged) "
                      "or sample longer (num_draws='auto', a larger max_draws).", LLCConvergenceWarning,
                      stacklevel=user_stacklevel())
    return ests


class _BatchDiverged(Exception):
    """Inside :func:`estimate_llcs`: the checkpoint at position ``index`` of a batched run diverged (``err``), after the
    estimates ``completed`` (``{position: LLCEstimate}``) of that run were finished."""

    def __init__(self, err: SGLDDivergenceError, index: int, completed: dict):
        super().__init__(str(err))
        self.err, self.index, self.completed = err, index, completed


def _chain_frozen(probs: list, num_chains: int) -> dict | None:
    """The tensors left out of the sampling (``params=``) that differ between the checkpoints, stacked with one row
    per chain (``{}``: none differ), or ``None`` when they cannot be stacked (other names, shapes or dtypes)."""
    base = probs[0].frozen
    if any(p.frozen.keys() != base.keys() for p in probs[1:]):
        return None
    out = {}
    for k, v in base.items():
        vals = [p.frozen[k] for p in probs]
        if any(u.shape != v.shape or u.dtype != v.dtype or u.device != v.device for u in vals[1:]):
            return None
        if not all(torch.equal(v, u) for u in vals[1:]):
            out[k] = torch.stack(vals).repeat_interleave(int(num_chains), dim=0)
    return out


def _estimate_batch(models, probs, loss_fn, *, num_chains, num_draws, num_burnin, rule, step_size, localization,
                    nbeta, batch_size, seed, progress, preconditioner, baseline) -> list[LLCEstimate]:
    """:func:`_estimate` for several centres in one batched run (see :func:`estimate_llcs`)."""
    from .sampling import BLOCK, _run

    single = dict(num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin, rule=rule,
                  step_size=step_size, localization=localization, batch_size=batch_size, seed=seed,
                  progress=progress, preconditioner=preconditioner, baseline=baseline)
    base_prob = probs[0]
    nb = float(default_nbeta(base_prob.n) if nbeta is None else nbeta)
    frozen = _chain_frozen(probs, num_chains) if len(probs) > 1 else {}
    if len(probs) == 1 or frozen is None:
        # the frozen tensors cannot be stacked per chain (another structure per checkpoint): one run each
        if len(probs) > 1:
            done: list = []
            for k, (m, p) in enumerate(zip(models, probs)):
                try:
                    done += _estimate_batch([m], [p], loss_fn, nbeta=nbeta, **single)
                except _BatchDiverged as b:
                    raise _BatchDiverged(b.err, k, dict(enumerate(done))) from b.err
            return done
        with cpu_threads(threads_for(base_prob, num_chains, batch_size)):
            try:
                return [_estimate(base_prob, models[0], loss_fn, nbeta=nb, **single)]
            except SGLDDivergenceError as err:
                raise _BatchDiverged(err, 0, {}) from err
    M, K = len(probs), int(num_chains)
    C = M * K
    with cpu_threads(threads_for(base_prob, C, batch_size)):
        eps, extras = [], []
        for prob in probs:
            prob.check(batch_size)
            e, x = _resolve_step_size(prob, step_size, nbeta=nb, localization=localization, batch_size=batch_size,
                                      seed=seed, preconditioner=preconditioner)
            eps.append(e)
            extras.append(x)
        one = [SamplerConfig(step_size=e, nbeta=nb, localization=float(localization), num_chains=K,
                             num_draws=int(num_draws), num_burnin=int(num_burnin), batch_size=int(batch_size),
                             seed=int(seed), preconditioner=preconditioner) for e in eps]
        if all(e == eps[0] for e in eps) and not isinstance(one[0].step_size, tuple):
            joint = eps[0]
        else:                     # one step size per chain: each checkpoint's, or its chains' own where given per chain
            joint = tuple(v for o in one
                          for v in (o.step_size if isinstance(o.step_size, tuple) else (float(o.step_size),) * K))
        cfg = replace(one[0], num_chains=C, step_size=joint)
        groups = [list(range(g * K, (g + 1) * K)) for g in range(M)]
        centers = torch.stack([p.center for p in probs]).repeat_interleave(K, dim=0)
        bases = []
        for prob, model in zip(probs, models):
            if baseline == "batch":
                bases.append(_batch_baseline(prob, model, loss_fn, batch_size, seed))
            else:
                bases.append(prob.center_loss())

        def llc_of_group(g):
            def llc_of(loss, center, burnin):
                ref = center[:, burnin:] if baseline == "paired" else bases[g]
                return (nb * (loss[:, burnin:] - ref)).numpy()
            return llc_of

        llc_ofs = [llc_of_group(g) for g in range(M)]
        checks = [curvature_check(p, c) if "auto_step" in x else None for p, c, x in zip(probs, one, extras)]
        stop = rule.group_stop_fn(llc_ofs, groups, BLOCK, checks) if rule is not None else None
        psl = [p.center_per_sample() for p in probs] if baseline == "paired" else None   # remembered by check()
        res = _run(base_prob, cfg, progress=progress, record_params=False, center_loss=(baseline == "paired"),
                   on_divergence="raise", stop=stop, centers=centers, groups=groups, frozen=frozen or None,
                   center_psl=psl)
    out = []
    for g, (prob, model) in enumerate(zip(probs, models)):
        steps, burnin, reason = res.extras["group_stop"][g]
        if reason.startswith(("diverged", "restart")):   # rerun alone, with estimate_llc's automatic restarts
            with cpu_threads(threads_for(prob, K, batch_size)):
                try:
                    est = _estimate(prob, model, loss_fn, nbeta=nb, **single)
                except SGLDDivergenceError as err:
                    raise _BatchDiverged(err, g, dict(enumerate(out))) from err
            est.extras["batched"] = {"rerun_alone": reason}
            out.append(est)
            continue
        if rule is None:
            burnin, reason = one[g].num_burnin, "fixed"
        elif reason == "budget":
            burnin, reason = steps // 2, "max_draws"
        cfg_g = replace(one[g], num_burnin=int(burnin), num_draws=int(steps - burnin))
        rows = groups[g]
        loss = res.loss[rows, :steps]
        center = res.center_loss[rows, :steps] if res.center_loss is not None else None
        ext = dict(extras[g])
        ext["batched"] = {"checkpoints": M, "seconds_all": res.seconds}
        out.append(_summarize_run(llc_ofs[g](loss, center, 0), loss.numpy(), prob.center_loss(), cfg_g, baseline,
                                  res.seconds / M, ext, reason))
    return out


#: R̂ above this says the chains disagree (Vehtari et al. 2021 recommend 1.01 for final results; 1.1 is a clear failure)
RHAT_WARN = 1.1


def _warn_if_negative(mean: float, sem: float, rhat: float) -> None:
    """Warn when λ̂ < 0 beyond its Monte Carlo error, or < 0 with chains that disagree (R̂ > :data:`RHAT_WARN`).

    The LLC is never negative: a negative estimate means the chains found lower loss than at w* (w* is not a local
    minimum) or did not converge. An estimate within two standard errors of 0, from agreeing chains, passes."""
    if not mean < 0:
        return
    unconverged = rhat == rhat and rhat > RHAT_WARN
    significant = not (sem == sem) or mean + 2 * sem < 0
    if unconverged or significant:
        why = (f"the chains disagree (R̂ = {rhat:.2f} > {RHAT_WARN})" if unconverged
               else f"it is {-mean / sem:.1f} standard errors below 0" if sem == sem and sem > 0 else "")
        warnings.warn(f"λ̂ = {mean:.4g} is negative{': ' + why if why else ''}. The LLC is ≥ 0, so this is not an "
                      "estimate: the chains found lower loss than at w* (is w* a local minimum? train longer) or did "
                      "not converge (use a smaller step_size, a larger localization or more burn-in; see est.plot())",
                      NegativeLLCWarning, stacklevel=user_stacklevel())


def _summarize_run(whole: np.ndarray, trace: np.ndarray, init_loss: float, cfg: SamplerConfig, baseline: str,
                   seconds: float, extras: dict, stop_reason: str) -> LLCEstimate:
    """The estimate of one run from its per-step λ̂ ``whole`` ``(chains, burn-in + draws)``, every step from w*:
    the draws (made contiguous, so that their means are those of a trace computed from the burn-in on) are
    summarised; the burn-in is kept as ``burnin_llc_trace``."""
    est = _summarize(np.ascontiguousarray(whole[:, cfg.num_burnin:]), trace, init_loss, cfg, baseline, seconds,
                     extras)
    est.stop_reason = stop_reason
    est.burnin_llc_trace = whole[:, :cfg.num_burnin]
    return est


def _summarize(llc_trace: np.ndarray, trace: np.ndarray, init_loss: float, cfg: SamplerConfig, baseline: str,
               seconds: float, extras: dict) -> LLCEstimate:
    per_chain = llc_trace.mean(axis=1)
    mean = float(llc_trace.mean())
    std = float(per_chain.std(ddof=1)) if cfg.num_chains > 1 else float("nan")
    if llc_trace.shape[1] >= 4 and np.ptp(llc_trace) > 0:
        e, r = _ess(llc_trace), _rhat(llc_trace)
    else:
        e, r = float("nan"), float("nan")
    sem = float(llc_trace.std(ddof=1) / math.sqrt(e)) if e == e and e > 0 else float("nan")
    _warn_if_negative(mean, sem, r)
    return LLCEstimate(mean=mean, std=std, sem=sem, per_chain=per_chain, llc_trace=llc_trace,
                       trace=trace, init_loss=init_loss, ess=e, rhat=r, config=cfg,
                       baseline=baseline, seconds=seconds, extras=extras)


def estimate_refined_llcs(model: torch.nn.Module, loss_fn: Callable, data, groups: dict, *, num_chains: int = 4,
                          num_draws: int | None = None, num_burnin: int | None = None, step_size="auto",
                          localization: float = 1.0, nbeta: float | None = None, batch_size: int = 500,
                          seed: int = 0, device=None, progress: bool = True, max_draws: int | None = None,
                          max_seconds: float | None = None) -> dict:
    r"""Weight-refined LLCs of several parameter groups (e.g. every attention head) in **one** batched SGLD run.

    For a group :math:`V` of the weights, the weight-refined LLC :math:`\hat\lambda_V(w^*)` is the estimator of
    :func:`estimate_llc` with SGLD moving only the weights in :math:`V`, the others frozen at :math:`w^*`, and the
    loss that of the whole model (Wang et al. 2025, "Differentiation and specialization of attention heads via the
    refined local learning coefficient"):

    .. math::
        \hat\lambda_V(w^*) = n\beta\,\Big(\E_{w_V\sim p_V}[L_n(w_V, w^*_{\setminus V})] - L_n(w^*)\Big),\qquad
        p_V(w_V)\propto\exp\Big\{-n\beta L_n(w_V, w^*_{\setminus V}) - \frac\gamma2\|w_V - w_V^*\|^2\Big\}.

    ``num_draws="auto"`` (the default) runs until *every* group has converged (:mod:`slt_companion.convergence`);
    unconverged groups are named in one :class:`LLCConvergenceWarning`. All groups run together: ``len(groups) * num_chains`` chains over the union of the groups' parameters, chain
    ``g * num_chains + j`` moving only group ``g``'s coordinates (``chain_mask`` of
    :func:`slt_companion.sampling.sgld`).
    Each group's estimate has the same distribution as ``estimate_llc(..., params=groups[name])`` with the same
    settings (paired baseline); only the random numbers differ. Passing data other than the training data gives
    the weight- and data-refined LLC.

    The arguments not listed below are those of :func:`estimate_llc`, except ``params`` (the groups take its place),
    ``preconditioner`` (plain SGLD only) and ``baseline`` (always the paired baseline).

    Parameters
    ----------
    groups : ``{name: selector}``, each selector as ``params=`` of :func:`estimate_llc` (names, a prefix such as
        ``"blocks.1.heads.2"``, or a predicate). Groups must be non-empty and must not share parameters.
    step_size : a float :math:`\varepsilon` shared by all groups, or ``"auto"`` (:func:`auto_step_size` for each
        group separately; each group's chains then run with its own step size).

    Returns
    -------
    dict
        ``{name: LLCEstimate}`` in the order of ``groups``; each estimate's ``seconds`` is the wall time of the
        whole joint run, and ``extras["joint_chains"]`` the total number of chains.

    Raises
    ------
    ValueError
        No groups, a selector that selects nothing or names unknown parameters, or two groups sharing a parameter.

    Notes
    -----
    On a CPU this is *slower* than one :func:`estimate_llc` call per group (about 1.4 times for the eight heads of
    Part III's language model, ``benchmarks/refined_llc_heads.py``): every chain also computes the gradients of
    the other groups' weights. It pays where one batched launch beats many small ones (a GPU).

    Used in: Part III, "The refined LLC of attention heads".
    """
    from .sampling import select_params

    if not isinstance(groups, dict) or not groups:
        raise ValueError("groups must be a non-empty dict {name: params selector}, e.g. "
                         "{h: h for h in model.head_names()}")
    selected, owner = {}, {}
    for gname, sel in groups.items():
        try:
            names = select_params(model, sel)
        except ValueError as err:
            raise ValueError(f"group {gname!r}: {err}") from err
        for k in names:
            if k in owner:
                raise ValueError(f"groups {owner[k]!r} and {gname!r} both select the parameter {k!r}; "
                                 "refined-LLC groups must not overlap")
            owner[k] = gname
        selected[gname] = names
    num_draws, num_burnin, device = _sampling_defaults(model, num_draws, num_burnin, device)
    rule, num_burnin, num_draws = _plan(num_draws, num_burnin, max_draws, max_seconds)
    union = [k for k, _ in model.named_parameters() if k in owner]
    prob = _Problem(model, loss_fn, data, union, device)
    if nbeta is None:
        nbeta = default_nbeta(prob.n)
    G = len(selected)
    _check_sampler_args(num_draws, num_burnin, nbeta=nbeta, localization=localization, num_chains=num_chains * G,
                        batch_size=batch_size, seed=seed)
    mask = torch.zeros(G * num_chains, prob.D, dtype=prob.dtype, device=prob.device)
    off = 0
    for name, size in zip(prob.names, prob.sizes):
        g = list(selected).index(owner[name])
        mask[g * num_chains:(g + 1) * num_chains, off:off + size] = 1
        off += size
    C = G * num_chains
    with cpu_threads(threads_for(prob, C, batch_size)):
        prob.check(batch_size)
        extras: dict = {"joint_chains": C}
        if isinstance(step_size, str):
            if step_size != "auto":
                raise ValueError(f"step_size must be a positive number or 'auto', got {step_size!r}")
            eps = []
            for gname in selected:
                p_g = _Problem(model, loss_fn, (prob.x, prob.y), selected[gname], device)
                e, _ = auto_step_size(p_g, nbeta=nbeta, localization=localization, batch_size=batch_size, seed=seed)
                eps += [e] * num_chains
            step_size = tuple(eps)
        cfg = SamplerConfig(step_size=step_size, nbeta=float(nbeta), localization=float(localization),
                            num_chains=C, num_draws=int(num_draws), num_burnin=int(num_burnin),
                            batch_size=int(batch_size), seed=int(seed))
        init_loss = prob.center_loss()  # computed by prob.check above

        def llc_of(loss, center, burnin):
            return (cfg.nbeta * (loss[:, burnin:] - center[:, burnin:])).numpy()

        from .sampling import BLOCK

        groups_rows = [slice(g * num_chains, (g + 1) * num_chains) for g in range(G)]
        stop = rule.stop_fn(llc_of, BLOCK, groups=groups_rows) if rule is not None else None
        res: SGLDResult = sgld(model, loss_fn, None, cfg, progress=progress, center_loss=True, num_threads=None,
                               chain_mask=mask, stop=stop, _problem=prob)
    cfg, reason = _finish(res, rule)
    llc_all = llc_of(res.loss, res.center_loss, cfg.num_burnin)
    trace = res.loss.numpy()
    out = {}
    for g, gname in enumerate(selected):
        rows = slice(g * num_chains, (g + 1) * num_chains)
        eps_g = cfg.step_size[g * num_chains] if isinstance(cfg.step_size, tuple) else cfg.step_size
        cfg_g = SamplerConfig(step_size=eps_g, nbeta=cfg.nbeta, localization=cfg.localization,
                              num_chains=int(num_chains), num_draws=cfg.num_draws, num_burnin=cfg.num_burnin,
                              batch_size=cfg.batch_size, seed=cfg.seed)
        out[gname] = _summarize(llc_all[rows], trace[rows], init_loss, cfg_g, "paired", res.seconds,
                                {**extras, "params": list(selected[gname])})
        out[gname].stop_reason = reason
    bad = {k: e for k, e in out.items() if not e.converged}
    if bad:
        worst = max(bad.values(), key=lambda e: e.rhat if e.rhat == e.rhat else float("inf"))
        warn_unconverged(f"{len(bad)} of {len(out)} refined LLCs ({', '.join(list(bad)[:6])}"
                         f"{', …' if len(bad) > 6 else ''}) are not converged; the worst of them",
                         worst.rhat, worst.ess, reason, step_size=None)
    return out


def half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""The per-sample Gaussian negative log-likelihood with unit variance, up to a constant:
    :math:`\tfrac12\|y - f(x)\|^2`, averaged over the batch (the loss of every regression in Part II). The last
    axis is the output vector; a 1-D ``(batch,)`` output is one number per sample; any axes between are averaged."""
    d = (out - y) ** 2
    return 0.5 * (d.mean() if d.ndim == 1 else d.sum(-1).mean())


def _half_mse_batched(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``half_mse`` of every chain at once: ``out``, ``y`` of shape ``(C, B, ...)`` -> ``(C,)``."""
    d = (out - y) ** 2
    per = d if d.ndim == 2 else d.sum(-1)
    return 0.5 * per.reshape(per.shape[0], -1).mean(-1)


def _half_mse_batched_vjp(out: torch.Tensor, y: torch.Tensor):
    """:func:`_half_mse_batched` and the gradient of the sum of its values with respect to ``out``: ``(losses (C,),
    g (C, B, ...))``, computed with the operations autograd's backward of it runs, in the same order (the same bits).
    """
    r = out - y
    d = r ** 2
    per = d if d.ndim == 2 else d.sum(-1)
    flat = per.reshape(per.shape[0], -1)
    # autograd's backward: 0.5 (the product's), divided by the mean's count, expanded over the sum, times pow's 2r.
    # One value v for every element, formed by the same tensor division; v * (2r) is then the same product.
    v = float(torch.full((), 0.5, dtype=r.dtype) / flat.shape[1])
    return 0.5 * flat.mean(-1), (2 * r) * v


half_mse.batched = _half_mse_batched  # the sampler's fast path (checked against vmap before use)
half_mse.batched_vjp = _half_mse_batched_vjp     # ... and with a model's forward_batched_vjp, its fastest
