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

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import config as _config
from .diagnostics import NegativeLLCWarning, ess as _ess, rhat as _rhat
from .sampling import SamplerConfig, SGLDResult, _Problem, auto_threads, cpu_threads, sgld

__all__ = ["estimate_llc", "estimate_refined_llcs", "LLCEstimate", "auto_step_size", "default_nbeta", "AUTO_STEP_FACTOR", "half_mse",
           "GROUND_TRUTH", "ground_truth_problem", "run_ground_truth", "calibration_sweep",
           "PAPER_TOY_POTENTIALS", "toy_potential_exact", "susceptibility", "SusceptibilityEstimate",
           "loss_observable"]

#: ε·h_max for the automatic step size (see :func:`auto_step_size`)
AUTO_STEP_FACTOR = 0.1


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


@dataclass
class LLCEstimate:
    r"""The result of :func:`estimate_llc`.

    - ``mean``: :math:`\hat\lambda`, the average over all chains and draws;
    - ``std``: the standard deviation of the per-chain estimates across chains (the spread a reader sees
      between independent runs of one chain); ``sem``: the Monte Carlo standard error of ``mean``,
      :math:`\mathrm{sd}(\text{draws})/\sqrt{\mathrm{ESS}}`;
    - ``per_chain``: per-chain estimates ``(chains,)``; ``llc_trace``: per-draw values
      :math:`n\beta(L_{B_t}(w_t) - L_{B_t}(w^*))` ``(chains, draws)``;
    - ``trace``: the minibatch loss :math:`L_{B_t}(w_t)` ``(chains, burn-in + draws)``;
    - ``init_loss``: :math:`L_n(w^*)` on the full data; ``ess``, ``rhat``: bulk ESS and rank-normalised split
      :math:`\hat R` of ``llc_trace`` (:mod:`slt_companion.diagnostics`); ``config``: the :class:`SamplerConfig` used
      (with the step size actually chosen); ``seconds``: sampling wall time.
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

    def __repr__(self) -> str:
        return (f"LLCEstimate(mean={self.mean:.4g}, std={self.std:.3g}, sem={self.sem:.3g}, ess={self.ess:.0f}, "
                f"rhat={self.rhat:.3f}, chains={self.config.num_chains}, draws={self.config.num_draws}, "
                f"step_size={_fmt_eps(self.config.step_size)}, nbeta={self.config.nbeta:.4g}, "
                f"localization={self.config.localization:g})")

    def to_dict(self) -> dict:
        """Numbers and arrays only (for :func:`slt_companion.cache.cached`)."""
        return {"mean": self.mean, "std": self.std, "sem": self.sem, "per_chain": self.per_chain,
                "llc_trace": self.llc_trace, "trace": self.trace, "init_loss": self.init_loss,
                "ess": self.ess, "rhat": self.rhat, "baseline": self.baseline, "seconds": self.seconds,
                "config": _config_to_dict(self.config)}

    @classmethod
    def from_dict(cls, d: dict) -> "LLCEstimate":
        return cls(mean=float(d["mean"]), std=float(d["std"]), sem=float(d["sem"]),
                   per_chain=np.asarray(d["per_chain"]), llc_trace=np.asarray(d["llc_trace"]),
                   trace=np.asarray(d["trace"]), init_loss=float(d["init_loss"]), ess=float(d["ess"]),
                   rhat=float(d["rhat"]), config=_config_from_dict(d["config"]), baseline=str(d["baseline"]),
                   seconds=float(d["seconds"]))

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
        ax.set_title(title or f"LLC estimate: ESS {self.ess:.0f}, $\\hat R$ {self.rhat:.3f}")
        ax.legend(fontsize=8.5)
        return ax


def _hessian_top_eig(prob: _Problem, W: torch.Tensor, xb, yb, nbeta: float, gamma: float,
                     iters: int = 30, seed: int = 0) -> torch.Tensor:
    r"""Largest |eigenvalue| of the Hessian of :math:`n\beta L_B(w) + \frac\gamma2\|w-w^*\|^2` at each row of ``W``.

    Power iteration with Hessian-vector products (double backward through the batched loss; the Hessian of
    the sum over chains is block-diagonal, so one product serves every chain).
    """
    C, D = W.shape
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(C, D, generator=gen, dtype=torch.float64).to(W)
    v = v / v.norm(dim=1, keepdim=True)
    Wg = W.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = prob.batched_losses(Wg, xb, yb)
        (g,) = torch.autograd.grad(losses.sum(), Wg, create_graph=True)
        est = torch.zeros(C, dtype=W.dtype, device=W.device)
        for _ in range(iters):
            (hv,) = torch.autograd.grad(g, Wg, grad_outputs=v, retain_graph=True)
            hv = nbeta * hv.detach() + gamma * v
            est = (hv * v).sum(1).abs()
            norm = hv.norm(dim=1, keepdim=True)
            v = torch.where(norm > 0, hv / norm.clamp_min(1e-30), v)
    out = torch.nan_to_num(est, nan=float("inf"))
    return torch.maximum(out, torch.full_like(out, gamma))


def auto_step_size(prob: _Problem, *, nbeta: float, localization: float, batch_size: int, seed: int = 0,
                   factor: float | None = None, pilot_steps: int | None = None, rungs: int = 12,
                   preconditioner: str | None = None) -> tuple[float, dict]:
    r"""Choose the SGLD step size from a short pilot run, so that :math:`\varepsilon\, h_{\max} = ` ``factor``.

    Why: on a quadratic basin with curvature :math:`h`, SGLD with step :math:`\varepsilon` samples a
    variance inflated by :math:`1/(1-\varepsilon h/4)`, so :math:`\hat\lambda` is biased up by about
    :math:`\varepsilon h/4` per direction; it is unstable beyond :math:`\varepsilon h = 4`; and a direction
    relaxes in about :math:`1/(\varepsilon h)` steps. ``factor = 0.1`` keeps the bias of the stiffest
    direction near 2.5% while directions 10× softer still relax within a few hundred steps.

    How: (1) :math:`h_0` = the top Hessian eigenvalue of :math:`U(w) = n\beta L(w) + \frac\gamma2\|w-w^*\|^2`
    at :math:`w^*` (power iteration on a pilot batch of up to 2048 samples). (2) At a singular :math:`w^*` the
    curvature nearby can be far larger than at :math:`w^*` itself, so a pilot run of ``rungs`` chains with
    step sizes :math:`\varepsilon_i = 2^{3-i}\cdot` ``factor``:math:`/h_0` (one chain each, all in one batched
    run, ``pilot_steps`` steps, 200 or 100 in ``SLT_QUICK`` mode) explores the local posterior; :math:`h` is measured again at each chain's
    end point. (3) A rung is *consistent* if it did not diverge and :math:`\varepsilon_i h_i \le 0.5`;
    :math:`h_{\max}` is the largest :math:`h` over :math:`w^*` and the consistent rungs, and
    :math:`\varepsilon = ` ``factor``:math:`/h_{\max}`. Deterministic for a fixed ``seed``. The same
    rule is used with ``preconditioner="rmsprop"``, whose normalised preconditioner only shrinks the steps
    of the stiffest coordinates.
    """
    factor = AUTO_STEP_FACTOR if factor is None else float(factor)
    pilot_steps = _config.size(200, 100) if pilot_steps is None else int(pilot_steps)
    dev = prob.device
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    m = min(prob.n, 2048)
    sel = torch.randperm(prob.n, generator=gen)[:m].to(dev)
    xb, yb = prob.x[sel], prob.y[sel]
    center = prob.center[None]
    h0 = float(_hessian_top_eig(prob, center, xb[None], yb[None], nbeta, localization, seed=seed)[0])
    if not math.isfinite(h0):
        raise ValueError("the loss has a non-finite Hessian at the centre w*; check the model and loss_fn")
    if h0 <= 0:
        raise ValueError(f"the Hessian of nβ·L + γ/2·‖w − w*‖² at the centre w* is zero (the loss is flat there and "
                         f"localization={localization!r}), so step_size='auto' has no curvature to scale by; pass a "
                         "number as step_size, or a localization > 0")
    ladder = tuple(factor / h0 * 2.0 ** (3 - i) for i in range(rungs))
    cfg = SamplerConfig(step_size=ladder, nbeta=nbeta, localization=localization, num_chains=rungs,
                        num_draws=pilot_steps, num_burnin=0, batch_size=batch_size, seed=int(seed) + 1,
                        preconditioner=preconditioner)
    res = sgld(prob.model, prob.loss_fn, None, cfg, progress=False, center_loss=False, on_divergence="mark",
               num_threads=None, _problem=prob)
    ends = res.final.to(device=dev, dtype=prob.dtype)
    ok = ~torch.tensor(res.extras["diverged"]) & torch.isfinite(ends).all(1).cpu()
    safe_ends = torch.where(ok.to(dev)[:, None], ends, center.expand_as(ends))
    h = _hessian_top_eig(prob, safe_ends, xb.expand(rungs, *xb.shape), yb.expand(rungs, *yb.shape),
                         nbeta, localization, seed=seed + 1).cpu().double()
    eps = torch.tensor(ladder, dtype=torch.float64)
    consistent = ok & torch.isfinite(h) & (eps * h <= 0.5)
    h_max = max([h0] + h[consistent].tolist())
    info = {"h0": h0, "h_max": h_max, "ladder": list(ladder), "pilot_h": h.tolist(),
            "consistent": consistent.tolist(), "pilot_seconds": res.seconds}
    return factor / h_max, info


def _sampling_defaults(model, num_draws, num_burnin, device):
    """The estimators' shared defaults: 1000 draws (200 quick), burn-in max(500 (100 quick), draws / 2), and the
    device of the model's parameters."""
    if num_draws is None:
        num_draws = _config.size(1000, 200)
    if num_burnin is None:
        num_burnin = max(_config.size(500, 100), int(num_draws) // 2)
    if device is None:
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            device = None
    return num_draws, num_burnin, device


def estimate_llc(model: torch.nn.Module, loss_fn: Callable, data, *, num_chains: int = 4,
                 num_draws: int | None = None, num_burnin: int | None = None, step_size="auto",
                 localization: float = 1.0, nbeta: float | None = None, batch_size: int = 500, params=None,
                 seed: int = 0, device=None, progress: bool = True, preconditioner: str | None = None,
                 baseline: str = "paired") -> LLCEstimate:
    r"""Estimate the local learning coefficient :math:`\hat\lambda(w^*)` at the model's current parameters.

    Parameters
    ----------
    model : nn.Module with a functional forward (:mod:`slt_companion.sampling`); its parameters are :math:`w^*`
        and are not modified.
    loss_fn : ``loss_fn(model(x), y)`` -> the *mean* per-sample negative log-likelihood of the batch.
        The scale matters: :math:`\hat\lambda` is :math:`n\beta` times a loss difference, so a loss that is
        not the NLL (e.g. MSE without the ½ for unit-variance noise) scales :math:`\hat\lambda` with it.
    data : ``(x, y)`` tensors, a ``TensorDataset``, or an object with ``.xy``. Passing data other than
        the training data gives the **data-refined LLC**.
    num_chains, num_draws, num_burnin : chains run together; draws per chain after ``num_burnin`` steps.
        Defaults: 1000 draws (200 in ``SLT_QUICK`` mode) and burn-in ``max(500, num_draws // 2)`` (100
        instead of 500 in quick mode): the
        soft, singular directions of the posterior relax slowly from :math:`w^*` (Part II, "Estimating λ").
    step_size : a float :math:`\varepsilon`, or ``"auto"`` (:func:`auto_step_size`, a short pilot run).
    localization : :math:`\gamma` (default 1: a weak tether that removes drift along flat directions
        while biasing :math:`\hat\lambda` by only a few percent; large values bias it low).
    nbeta : :math:`n\beta`; ``None`` means :math:`n/\log n` with ``n = len(data)``.
    batch_size : minibatch size per chain and step (clipped to ``n``).
    params : restrict sampling to some parameters (names, a name prefix, or a predicate ``(name, tensor)``):
        the **weight-refined LLC** of that component.
    seed : chains use independent generators derived from it; same seed, same result on CPU.
    device : ``None`` means the device the model's parameters are on (no silent copies); or ``"cpu"``,
        ``"cuda"``, ... (:func:`slt_companion.config.resolve_device`), which must match the model's device.
    preconditioner : ``None`` or ``"rmsprop"``.
    baseline : ``"paired"`` (default), ``"full"`` or ``"batch"`` -- see the module docstring.

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
    prob = _Problem(model, loss_fn, data, params, device)
    if nbeta is None:
        nbeta = default_nbeta(prob.n)
    # validate everything but the step size before any computation
    SamplerConfig(step_size=1.0, nbeta=nbeta, localization=localization, num_chains=num_chains,
                  num_draws=num_draws, num_burnin=num_burnin, batch_size=batch_size, seed=seed,
                  preconditioner=preconditioner)
    with cpu_threads(auto_threads(prob.device, num_chains * min(batch_size, prob.n) * prob.D)):
        return _estimate(prob, model, loss_fn, num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
                         step_size=step_size, localization=localization, nbeta=nbeta, batch_size=batch_size,
                         seed=seed, progress=progress, preconditioner=preconditioner, baseline=baseline)


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


def _estimate(prob, model, loss_fn, *, num_chains, num_draws, num_burnin, step_size, localization, nbeta,
              batch_size, seed, progress, preconditioner, baseline) -> LLCEstimate:
    prob.check(batch_size)
    step_size, extras = _resolve_step_size(prob, step_size, nbeta=nbeta, localization=localization,
                                           batch_size=batch_size, seed=seed, preconditioner=preconditioner)
    cfg = SamplerConfig(step_size=step_size, nbeta=float(nbeta), localization=float(localization),
                        num_chains=int(num_chains), num_draws=int(num_draws), num_burnin=int(num_burnin),
                        batch_size=int(batch_size), seed=int(seed), preconditioner=preconditioner)
    init_loss = prob.center_loss()  # computed by prob.check above
    res: SGLDResult = sgld(model, loss_fn, None, cfg, progress=progress, center_loss=(baseline == "paired"),
                           num_threads=None, _problem=prob)
    draws = res.draws.numpy()
    if baseline == "paired":
        base = res.center_loss[:, cfg.num_burnin:].numpy()
    elif baseline == "full":
        base = init_loss
    else:  # one minibatch, as a single-batch initial loss would give
        gen = torch.Generator().manual_seed(int(seed) + 104729)
        sel = torch.randperm(prob.n, generator=gen)[:min(batch_size, prob.n)].to(prob.device)
        with torch.no_grad():
            base = float(loss_fn(model(prob.x[sel]), prob.y[sel]))
        extras["batch_init_loss"] = base
    llc_trace = cfg.nbeta * (draws - base)
    return _summarize(llc_trace, res.loss.numpy(), init_loss, cfg, baseline, res.seconds, extras)


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
                      NegativeLLCWarning, stacklevel=5)


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
                          seed: int = 0, device=None, progress: bool = True) -> dict:
    r"""Weight-refined LLCs of several parameter groups (e.g. every attention head) in **one** batched SGLD run.

    For a group :math:`V` of the weights, the weight-refined LLC :math:`\hat\lambda_V(w^*)` is the estimator of
    :func:`estimate_llc` with SGLD moving only the weights in :math:`V`, the others frozen at :math:`w^*`, and the
    loss that of the whole model (Wang et al. 2025, "Differentiation and specialization of attention heads via the
    refined local learning coefficient"):

    .. math::
        \hat\lambda_V(w^*) = n\beta\,\Big(\E_{w_V\sim p_V}[L_n(w_V, w^*_{\setminus V})] - L_n(w^*)\Big),\qquad
        p_V(w_V)\propto\exp\Big\{-n\beta L_n(w_V, w^*_{\setminus V}) - \frac\gamma2\|w_V - w_V^*\|^2\Big\}.

    All groups run together: ``len(groups) * num_chains`` chains over the union of the groups' parameters, chain
    ``g * num_chains + j`` moving only group ``g``'s coordinates (``chain_mask`` of
    :func:`slt_companion.sampling.sgld`).
    Each group's estimate has the same distribution as ``estimate_llc(..., params=groups[name])`` with the same
    settings (paired baseline); only the random numbers differ. Passing data other than the training data gives
    the weight- and data-refined LLC.

    The arguments not listed below are those of :func:`estimate_llc`.

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
    union = [k for k, _ in model.named_parameters() if k in owner]
    prob = _Problem(model, loss_fn, data, union, device)
    if nbeta is None:
        nbeta = default_nbeta(prob.n)
    G = len(selected)
    SamplerConfig(step_size=1.0, nbeta=nbeta, localization=localization, num_chains=num_chains * G,
                  num_draws=num_draws, num_burnin=num_burnin, batch_size=batch_size, seed=seed)
    mask = torch.zeros(G * num_chains, prob.D, dtype=prob.dtype, device=prob.device)
    off = 0
    for name, size in zip(prob.names, prob.sizes):
        g = list(selected).index(owner[name])
        mask[g * num_chains:(g + 1) * num_chains, off:off + size] = 1
        off += size
    C = G * num_chains
    with cpu_threads(auto_threads(prob.device, C * min(batch_size, prob.n) * prob.D)):
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
        res: SGLDResult = sgld(model, loss_fn, None, cfg, progress=progress, center_loss=True, num_threads=None,
                               chain_mask=mask, _problem=prob)
    llc_all = cfg.nbeta * (res.draws.numpy() - res.center_loss[:, cfg.num_burnin:].numpy())
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
    return out


# --------------------------------------------------------------------------------------------------
# The ground-truth suite: models whose learning coefficient is known exactly
# --------------------------------------------------------------------------------------------------

#: name -> definition. "monomial": f(x; w) = x·∏ w_j^{k_j} on noise-free data (L_n is the normal-crossing
#: potential itself), λ from :func:`slt_companion.symbolic.rlct`; "dln": teacher-student regression with
#: n = 10,000 and unit noise, centred at the empirical minimiser, λ from :func:`slt_companion.theory.dln_rlct`
#: (= :func:`~slt_companion.theory.rrr_rlct` for two layers).
GROUND_TRUTH = {
    "normal crossing w²": {"kind": "monomial", "exponents": (2,), "n": 100_000},
    "normal crossing w₁w₂²": {"kind": "monomial", "exponents": (1, 2), "n": 100_000},
    "RRR 4-3-4, rank 1": {"kind": "dln", "widths": (4, 3, 4), "rank": 1, "n": 10_000},
    "RRR 5-4-5, rank 2": {"kind": "dln", "widths": (5, 4, 5), "rank": 2, "n": 10_000},
    "DLN 5-4-3-4-5, rank 2": {"kind": "dln", "widths": (5, 4, 3, 4, 5), "rank": 2, "n": 10_000},
    "DLN 6-4-2-4-6, rank 1": {"kind": "dln", "widths": (6, 4, 2, 4, 6), "rank": 1, "n": 10_000},
}


def half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""The per-sample Gaussian negative log-likelihood with unit variance, up to a constant:
    :math:`\tfrac12\|y - f(x)\|^2`, averaged over the batch (the loss of every regression in Part II)."""
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


def _half_mse_batched(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``half_mse`` of every chain at once: ``out``, ``y`` of shape ``(C, B, ...)`` -> ``(C,)``."""
    return 0.5 * ((out - y) ** 2).sum(-1).mean(-1)


half_mse.batched = _half_mse_batched  # the sampler's fast path (checked against vmap before use)


def ground_truth_problem(name: str, *, seed: int = 0):
    """``(model, data, lam, multiplicity)`` for a case of :data:`GROUND_TRUTH`; ``lam`` an exact ``sympy.Rational``."""
    from .data import monomial_data, teacher_student
    from .models import DeepLinearNetwork, MonomialModel

    if name not in GROUND_TRUTH:
        raise ValueError(f"unknown ground-truth case {name!r}; the cases are {list(GROUND_TRUTH)}")
    case = GROUND_TRUTH[name]
    if case["kind"] == "monomial":
        import sympy as sp

        from .symbolic import rlct

        ws = sp.symbols(f"w1:{len(case['exponents']) + 1}", real=True)
        K = sp.Mul(*[w ** (2 * k) for w, k in zip(ws, case["exponents"])])
        lam, mult = rlct(K, list(ws))
        return MonomialModel(case["exponents"]), monomial_data(case["n"], seed=seed), lam, mult
    from .theory import dln_rlct

    d = teacher_student(case["n"], case["widths"][0], case["widths"][-1], case["rank"], seed=seed)
    model = DeepLinearNetwork(case["widths"]).fit_least_squares(d.x, d.y)
    lam, mult = dln_rlct(list(case["widths"]), case["rank"])
    return model, d, lam, mult


def run_ground_truth(names=None, *, num_chains: int | None = None, num_draws: int | None = None, seed: int = 0,
                     progress: bool = True) -> list[dict]:
    """Estimate λ with the defaults of :func:`estimate_llc` on every case of :data:`GROUND_TRUTH` (cached).

    Only the number of chains (8; 4 in ``SLT_QUICK`` mode) and draws (4000; 800) are set. Returns one dict
    per case: ``name``, ``theory``, ``mean``, ``std``, ``sem``, ``ess``, ``rhat``, ``rel_error``,
    ``step_size``, ``seconds``. Used in: Part II, "Validation against known λ".
    """
    from . import cache

    names = list(GROUND_TRUTH) if names is None else list(names)
    num_chains = _config.size(8, 4) if num_chains is None else int(num_chains)
    num_draws = _config.size(4000, 800) if num_draws is None else int(num_draws)
    rows = []
    for name in names:
        def compute(name=name):
            model, data, lam, mult = ground_truth_problem(name, seed=seed)
            est = estimate_llc(model, half_mse, data.xy, num_chains=num_chains, num_draws=num_draws, seed=seed,
                               progress=progress)
            return {"name": name, "theory": float(lam), "theory_str": str(lam), "multiplicity": int(mult),
                    "mean": est.mean, "std": est.std, "sem": est.sem, "ess": est.ess, "rhat": est.rhat,
                    "rel_error": est.mean / float(lam) - 1, "step_size": float(est.config.step_size),
                    "num_chains": num_chains, "num_draws": num_draws, "num_burnin": est.config.num_burnin,
                    "seconds": est.seconds}
        cfg = {"case": name, "definition": {k: list(v) if isinstance(v, tuple) else v
                                            for k, v in GROUND_TRUTH[name].items()},
               "num_chains": num_chains, "num_draws": num_draws, "seed": seed}
        rows.append(cache.cached("llc-ground-truth", cfg, compute))
    return rows


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
    with cpu_threads(auto_threads(prob.device, k * len(eps) * min(batch_size, prob.n) * prob.D)):
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


# --------------------------------------------------------------------------------------------------
# The paper's toy potentials, integrated exactly
# --------------------------------------------------------------------------------------------------

#: Lau et al. (2025), toy potentials y = x·w₁^{k₁}w₂^{k₂} + N(0, 0.5²), n = 1000, prior N(0, I), truth w = 0:
#: exponents -> (λ, MCMC λ̂ mean, sd over 10 seeds) from the authors' committed notebook (../shared/PAPERS.md §5).
PAPER_TOY_POTENTIALS = {
    (1, 3): (1 / 6, 0.12, 0.04),
    (1, 2): (1 / 4, 0.19, 0.11),
    (0, 1): (1 / 2, 0.41, 0.12),
    (1, 0): (1 / 2, 0.43, 0.12),
}


def toy_potential_exact(exponents, n: int, *, noise_std: float = 0.5, seed: int = 0, points: int | None = None,
                        nbeta: float | None = None) -> float:
    r"""The exact value of :math:`n\beta\,(\E_\beta[L_n(w)] - L_n(0))` for the toy potential
    :math:`y = x\,w_1^{k_1}w_2^{k_2} + \mathcal N(0,\sigma^2)` with truth :math:`w = 0` and prior :math:`\mathcal N(0, I_2)`,
    the quantity Lau et al. (2025) estimate with MCMC and SGLD in their toy-potential table.

    The loss is the Gaussian negative log-likelihood :math:`(y - f)^2/(2\sigma^2)` (up to a constant), so
    :math:`L_n(w) - L_n(0) = (p^2 S_{xx} - 2pS_{xy})/(2\sigma^2)` with :math:`p = w_1^{k_1}w_2^{k_2}` and the data's
    sufficient statistics :math:`S_{xx} = \overline{x^2}`, :math:`S_{xy} = \overline{xy}`; the posterior
    :math:`\propto\exp\{-n\beta(L_n(w) - L_n(0)) - \|w\|^2/2\}` is integrated on a 2-D grid graded towards the
    axes (``points`` per axis, default 401: the values agree with 1201 and 2401 points to 1e-8). Data from
    ``numpy.random.default_rng(seed)``. Used in: Part II, "Validation against known λ".
    """
    k = tuple(int(v) for v in exponents)
    if len(k) != 2 or min(k) < 0 or max(k) < 1:
        raise ValueError(f"exponents must be two non-negative integers, not both 0; got {exponents!r}")
    points = 401 if points is None else int(points)
    rng = np.random.default_rng(int(seed))
    x = rng.standard_normal(int(n))
    y = noise_std * rng.standard_normal(int(n))
    sxx, sxy = float((x * x).mean()), float((x * y).mean())
    nb = default_nbeta(int(n)) if nbeta is None else float(nbeta)
    scale = 1e-3
    u = np.linspace(-np.arcsinh(5 / scale), np.arcsinh(5 / scale), points)
    w = scale * np.sinh(u)
    weights = np.gradient(w)
    W1, W2 = np.meshgrid(w, w, indexing="ij")
    p = (W1 ** k[0] if k[0] else 1.0) * (W2 ** k[1] if k[1] else 1.0)
    dL = (p * p * sxx - 2 * p * sxy) / (2 * noise_std ** 2)
    logd = -nb * dL - 0.5 * (W1 ** 2 + W2 ** 2)
    dens = np.exp(logd - logd.max()) * weights[:, None] * weights[None, :]
    return float((nb * dL * dens).sum() / dens.sum())


# --------------------------------------------------------------------------------------------------
# Susceptibilities: the linear response of posterior expectations to a change in the data
# --------------------------------------------------------------------------------------------------

def loss_observable(model: torch.nn.Module, loss_fn: Callable, data) -> Callable:
    r"""The observable :math:`\phi(w) = \ell(w; q')`: ``loss_fn(model(x), y)`` on ``data`` at parameters ``w``.

    Returns a callable of a parameter dict (see :func:`susceptibility`); with ``params=`` restricting the
    sampler to one component, it is that component's localized loss on the data slice. Used in: Part IV,
    "You are what you eat: data shapes structure".
    """
    from torch.func import functional_call

    from .sampling import _as_xy

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(model(x), y), got {type(loss_fn).__name__}")
    dev = next(iter(model.parameters()), torch.empty(0)).device
    x, y = _as_xy(data, dev)

    def phi(p: dict) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (x,)), y)

    return phi


@dataclass
class SusceptibilityEstimate:
    r"""The result of :func:`susceptibility`: :math:`\chi[p, o] = -n\beta\,\mathrm{Cov}_\beta(\phi_o, \Delta L_p)`.

    - ``value`` ``(P, O)``: the estimate, the mean of the per-chain covariances (each chain centred on its own
      means); ``per_chain`` ``(chains, P, O)``; ``std`` ``(P, O)`` their spread across chains;
    - ``sem`` ``(P, O)``: Monte Carlo standard error, :math:`n\beta\,\mathrm{sd}(z)/\sqrt{\mathrm{ESS}(z)}` of the
      per-draw products :math:`z_t = (\phi_t - \bar\phi)(\Delta L_t - \overline{\Delta L})`;
    - ``perturbations`` (``P`` names), ``observables`` (``O`` names; a vector observable ``"f"`` gives ``"f[0]"``, ...);
    - ``observable_trace`` ``(chains, draws, O)`` and ``perturbation_trace`` ``(chains, draws, P)``: the
      per-draw :math:`\phi` and :math:`\Delta L` after burn-in (and thinning);
    - ``mode``: ``"mixture"`` or ``"add"``; ``config``: the :class:`~slt_companion.sampling.SamplerConfig`;
      ``seconds``: sampling and evaluation wall time.
    """

    value: np.ndarray
    per_chain: np.ndarray
    std: np.ndarray
    sem: np.ndarray
    perturbations: list
    observables: list
    observable_trace: np.ndarray
    perturbation_trace: np.ndarray
    config: SamplerConfig
    mode: str = "mixture"
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)

    def __getitem__(self, key) -> float:
        """``est[perturbation_name, observable_name]`` -> :math:`\\chi` as a float."""
        if not isinstance(key, tuple) or len(key) != 2:
            raise KeyError("index with (perturbation name, observable name)")
        p, o = key
        if p not in self.perturbations or o not in self.observables:
            raise KeyError(f"unknown pair {key!r}; perturbations {self.perturbations}, observables {self.observables}")
        return float(self.value[self.perturbations.index(p), self.observables.index(o)])

    def __repr__(self) -> str:
        return (f"SusceptibilityEstimate(shape={self.value.shape}, perturbations={self.perturbations}, "
                f"observables={self.observables}, mode={self.mode!r}, chains={self.config.num_chains}, "
                f"draws={self.observable_trace.shape[1]}, nbeta={self.config.nbeta:.4g})")

    def to_dict(self) -> dict:
        """Numbers, strings and arrays only (for :func:`slt_companion.cache.cached`)."""
        return {"value": self.value, "per_chain": self.per_chain, "std": self.std, "sem": self.sem,
                "perturbations": list(self.perturbations), "observables": list(self.observables),
                "observable_trace": self.observable_trace, "perturbation_trace": self.perturbation_trace,
                "mode": self.mode, "seconds": self.seconds,
                "config": _config_to_dict(self.config)}

    @classmethod
    def from_dict(cls, d: dict) -> "SusceptibilityEstimate":
        return cls(value=np.asarray(d["value"]), per_chain=np.asarray(d["per_chain"]), std=np.asarray(d["std"]),
                   sem=np.asarray(d["sem"]), perturbations=[str(s) for s in d["perturbations"]],
                   observables=[str(s) for s in d["observables"]],
                   observable_trace=np.asarray(d["observable_trace"]),
                   perturbation_trace=np.asarray(d["perturbation_trace"]), config=_config_from_dict(d["config"]),
                   mode=str(d["mode"]), seconds=float(d["seconds"]))


def _named(obj, what: str, default_name: str, check: Callable) -> dict:
    if isinstance(obj, dict):
        if not obj:
            raise ValueError(f"{what} is an empty dict; give at least one")
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{what} keys must be strings (names), got {k!r}")
            out[k] = check(k, v)
        return out
    return {default_name: check(default_name, obj)}


def _eval_observables(prob, obs: dict, W: torch.Tensor, chunk: int = 256) -> tuple[np.ndarray, list]:
    """Every observable at every row of ``W`` (M, D) -> ``(M, O)`` float64 and the column names."""
    from torch.func import vmap

    cols, names = [], []
    for name, fn in obs.items():
        def one(p, fn=fn):
            return fn({**prob.frozen, **p})

        outs = []
        for s in range(0, W.shape[0], chunk):
            views = prob.views(W[s:s + chunk])
            try:
                with torch.no_grad():
                    val = vmap(one)(views)
            except Exception:   # an observable that vmap cannot run: one draw at a time
                with torch.no_grad():
                    val = torch.stack([torch.as_tensor(one({k: v[i] for k, v in views.items()}))
                                       for i in range(W[s:s + chunk].shape[0])])
            outs.append(torch.as_tensor(val).detach().double().cpu())
        val = torch.cat(outs)
        if val.ndim > 2:
            raise ValueError(f"observable {name!r} must return a scalar or a 1-D tensor, got shape "
                             f"{tuple(val.shape[1:])}")
        if not bool(torch.isfinite(val).all()):
            raise ValueError(f"observable {name!r} returned NaN or inf on some draws; check it (or use a smaller "
                             "step_size if the chains wandered far)")
        if val.ndim == 1:
            cols.append(val[:, None])
            names.append(name)
        else:
            cols.append(val)
            names.extend(f"{name}[{i}]" for i in range(val.shape[1]))
    return torch.cat(cols, 1).numpy(), names


def _eval_losses(prob, W: torch.Tensor, budget: int = 2_000_000) -> np.ndarray:
    """The full-data loss of ``prob`` at every row of ``W`` (M, D) -> ``(M,)`` float64 (chunked over rows)."""
    per_row = max(1, prob.n * max(1, prob.x[0].numel()))
    chunk = max(1, budget // per_row)
    out = []
    with torch.no_grad():
        for s in range(0, W.shape[0], chunk):
            Wc = W[s:s + chunk]
            m = Wc.shape[0]
            out.append(prob.batched_losses(Wc, prob.x.expand(m, *prob.x.shape),
                                           prob.y.expand(m, *prob.y.shape)).double().cpu())
    return torch.cat(out).numpy()


def susceptibility(model: torch.nn.Module, loss_fn: Callable, data, perturbation_data, observables, *,
                   num_chains: int = 4, num_draws: int | None = None, num_burnin: int | None = None,
                   step_size="auto", localization: float = 1.0, nbeta: float | None = None,
                   batch_size: int = 500, params=None, seed: int = 0, device=None, progress: bool = True,
                   mode: str = "mixture", thin: int = 1) -> SusceptibilityEstimate:
    r"""Susceptibilities: how posterior expectations of observables respond to up-weighting a slice of data.

    Perturb the loss of the local tempered posterior of :func:`estimate_llc`,
    :math:`p_h(w)\propto\exp\{-n\beta\,(L_n(w) + h\,\Delta L(w)) - \frac\gamma2\|w-w^*\|^2\}`. Differentiating
    :math:`\E_h[\phi] = \int\phi\,p_h` at :math:`h = 0` gives the fluctuation--response identity

    .. math::
        \chi = \frac{d}{dh}\E_h[\phi]\Big|_{h=0} = -n\beta\,\mathrm{Cov}_{p_0}\big(\phi(w), \Delta L(w)\big),

    estimated from SGLD draws (:func:`slt_companion.sampling.sgld`, all chains at once). With
    ``mode="mixture"`` (default) :math:`\Delta L = L_{q'} - L_n`, the data distribution moved towards the slice
    :math:`q'`, :math:`q_h = (1-h)q + hq'` (Baker et al. 2025, "Structural inference: interpreting small
    language models with susceptibilities", up to their normalisation); with ``mode="add"``
    :math:`\Delta L = L_{q'}`, the slice's weight increased on top of the data. :math:`\chi < 0`: more of
    :math:`q'` lowers :math:`\E[\phi]`.

    Parameters
    ----------
    model, loss_fn, data, num_chains, num_draws, num_burnin, step_size, localization, nbeta, batch_size, params, seed, device, progress
        As in :func:`estimate_llc`: the posterior is the one whose LLC it estimates, centred at the model's
        current parameters.
    perturbation_data : ``(x, y)`` (or a ``TensorDataset``/object with ``.xy``), or a dict ``name -> data`` to
        get several susceptibilities from one sampling run. :math:`L_{q'}(w)` is evaluated on *all* of it at
        every draw.
    observables : a callable ``phi(p) -> tensor`` or a dict ``name -> phi``. ``p`` is a dict of the model's
        parameters (and buffers) by name, as in ``model.named_parameters()``; those being sampled hold the
        draw, the others their values at :math:`w^*`. ``phi`` returns a scalar or a 1-D tensor (one
        susceptibility per entry); it is run under ``torch.func.vmap`` over draws when it can be (else one
        draw at a time). :func:`loss_observable` builds a loss on a data set;
        ``torch.func.functional_call(model, p, (x,))`` evaluates the model at ``p``.
    mode : ``"mixture"`` or ``"add"`` (above).
    thin : use every ``thin``-th draw (the sampler still takes every step).

    Returns
    -------
    SusceptibilityEstimate
        ``value[p, o]`` for perturbation ``p`` and observable column ``o``, with per-chain values, standard
        errors and the configuration.

    Raises
    ------
    ValueError
        A bad argument, named, before sampling starts (and non-finite observables after it).

    Notes
    -----
    The sampler records every state (``chains × steps × parameters`` float64 numbers), so this is meant for
    small models or for ``params=`` restricted to a component. Used in: Part IV, "You are what you eat: data
    shapes structure" (validated there against the closed form of a linear-Gaussian model).
    """
    if mode not in ("mixture", "add"):
        raise ValueError(f"mode must be 'mixture' (ΔL = L_q' − L_n) or 'add' (ΔL = L_q'), got {mode!r}")
    if isinstance(thin, bool) or not isinstance(thin, (int, np.integer)) or thin < 1:
        raise ValueError(f"thin must be an integer ≥ 1, got {thin!r}")
    num_draws, num_burnin, device = _sampling_defaults(model, num_draws, num_burnin, device)
    if isinstance(num_draws, (int, np.integer)) and not isinstance(num_draws, bool) and num_draws // thin < 4:
        raise ValueError(f"num_draws // thin must be at least 4 to estimate a covariance, got "
                         f"num_draws={num_draws}, thin={thin}")
    prob = _Problem(model, loss_fn, data, params, device)
    if nbeta is None:
        nbeta = default_nbeta(prob.n)
    SamplerConfig(step_size=1.0, nbeta=nbeta, localization=localization, num_chains=num_chains,
                  num_draws=num_draws, num_burnin=num_burnin, batch_size=batch_size, seed=seed)

    def check_data(name, d):
        try:
            p = _Problem(model, loss_fn, d, params, prob.device)
        except (TypeError, ValueError) as err:
            raise ValueError(f"perturbation_data[{name!r}]: {err}") from err
        try:
            p.check(8)
        except Exception as err:
            raise ValueError(f"perturbation_data[{name!r}]: {err}") from err
        return p

    def check_obs(name, fn):
        if not callable(fn):
            raise ValueError(f"observables[{name!r}] must be a callable phi(params_dict) -> tensor, "
                             f"got {type(fn).__name__}")
        return fn

    perts = _named(perturbation_data, "perturbation_data", "q'", check_data)
    obs = _named(observables, "observables", "phi", check_obs)
    # evaluate the observables once at w* so that a broken one fails before sampling
    _eval_observables(prob, obs, prob.center[None])
    with cpu_threads(auto_threads(prob.device, num_chains * min(batch_size, prob.n) * prob.D)):
        prob.check(batch_size)
        step_size, extras = _resolve_step_size(prob, step_size, nbeta=nbeta, localization=localization,
                                               batch_size=batch_size, seed=seed)
        cfg = SamplerConfig(step_size=step_size, nbeta=float(nbeta), localization=float(localization),
                            num_chains=int(num_chains), num_draws=int(num_draws), num_burnin=int(num_burnin),
                            batch_size=int(batch_size), seed=int(seed))
        t0 = time.perf_counter()
        res = sgld(model, loss_fn, None, cfg, progress=progress, center_loss=False, record_params=True,
                   num_threads=None, _problem=prob)
        kept = res.params[:, cfg.num_burnin::thin]                          # (C, T, D) float64
        C, T = kept.shape[:2]
        W = kept.reshape(C * T, -1).to(device=prob.device, dtype=prob.dtype)
        phi, names = _eval_observables(prob, obs, W)
        base = _eval_losses(prob, W) if mode == "mixture" else 0.0
        dL = np.stack([_eval_losses(p, W) - base for p in perts.values()], 1)
    phi = phi.reshape(C, T, -1)
    dL = dL.reshape(C, T, -1)
    pc = phi - phi.mean(1, keepdims=True)
    lc = dL - dL.mean(1, keepdims=True)
    z = lc[:, :, :, None] * pc[:, :, None, :]                               # (C, T, P, O)
    per_chain = -cfg.nbeta * z.sum(1) / (T - 1)
    value = per_chain.mean(0)
    std = per_chain.std(0, ddof=1) if C > 1 else np.full(value.shape, np.nan)
    sem = np.full(value.shape, np.nan)
    for i in range(z.shape[2]):
        for j in range(z.shape[3]):
            zz = z[:, :, i, j]
            if np.ptp(zz) > 0:
                e = _ess(zz)
                if e == e and e > 0:
                    sem[i, j] = cfg.nbeta * zz.std(ddof=1) / math.sqrt(e)
    return SusceptibilityEstimate(value=value, per_chain=per_chain, std=std, sem=sem, perturbations=list(perts),
                                  observables=names, observable_trace=phi, perturbation_trace=dL, config=cfg,
                                  mode=mode, seconds=time.perf_counter() - t0, extras=extras)
