r"""The automatic SGLD step size of :func:`slt_companion.llc.estimate_llc` (``step_size="auto"``).

See :func:`auto_step_size` for the rule and how it was chosen. Used in: Part II, "Estimating λ".
"""

from __future__ import annotations

import math

import torch

from . import config as _config
from .sampling import SamplerConfig, _Problem, sgld

__all__ = ["auto_step_size", "AUTO_STEP_FACTOR", "AUTO_RECHECK", "curvature_check", "StepTooLarge"]

#: ε·h_max for the automatic step size (see :func:`auto_step_size`)
AUTO_STEP_FACTOR = 0.1


def _grads(prob: _Problem, W: torch.Tensor, xb, yb) -> torch.Tensor:
    """Per-chain gradients of the batch loss at the rows of ``W`` (C, D)."""
    Wg = W.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(prob.batched_losses(Wg, xb, yb).sum(), Wg)
    return g.detach()


def _hessian_top_eig(prob: _Problem, W: torch.Tensor, xb, yb, nbeta: float, gamma: float,
                     iters: int = 20, seed: int = 0, delta: float = 1e-3) -> torch.Tensor:
    r"""Largest |eigenvalue| of the Hessian of :math:`n\beta L_B(w) + \frac\gamma2\|w-w^*\|^2` at each row of ``W``.

    Power iteration with Hessian-vector products by central differences of the gradient,
    :math:`Hv \approx (\nabla L(w + \delta v) - \nabla L(w - \delta v)) / 2\delta`: first derivatives only, so a
    loss whose second derivatives torch cannot form (a factor :math:`w^0`, whose double backward is NaN at 0)
    still has a curvature. Rows whose products are not finite get ``inf``.
    """
    C, D = W.shape
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(C, D, generator=gen, dtype=torch.float64).to(W)
    v = v / v.norm(dim=1, keepdim=True)
    est = torch.zeros(C, dtype=W.dtype, device=W.device)
    for _ in range(iters):
        hv = (_grads(prob, W + delta * v, xb, yb) - _grads(prob, W - delta * v, xb, yb)) / (2 * delta)
        hv = nbeta * hv + gamma * v
        est = (hv * v).sum(1).abs()
        norm = hv.norm(dim=1, keepdim=True)
        v = torch.where(norm > 0, hv / norm.clamp_min(1e-30), v)
    out = torch.nan_to_num(est, nan=float("inf"))
    return torch.maximum(out, torch.full_like(out, gamma))


def _pilot_batch(prob: _Problem, seed: int):
    """The up-to-2048 samples on which curvatures are measured, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    sel = torch.randperm(prob.n, generator=gen)[:min(prob.n, 2048)].to(prob.device)
    return prob.x[sel], prob.y[sel]


def auto_step_size(prob: _Problem, *, nbeta: float, localization: float, batch_size: int, seed: int = 0,
                   factor: float | None = None, pilot_steps: int | None = None, rungs: int = 12,
                   preconditioner: str | None = None) -> tuple[float, dict]:
    r"""Choose the SGLD step size from a short pilot run, so that :math:`\varepsilon\, h_{\max} = ` ``factor``.

    Why: on a quadratic basin with curvature :math:`h`, SGLD with step :math:`\varepsilon` samples a
    variance inflated by :math:`1/(1-\varepsilon h/4)`, so :math:`\hat\lambda` is biased up by about
    :math:`\varepsilon h/4` per direction; it is unstable beyond :math:`\varepsilon h = 4`; and a direction
    relaxes in about :math:`1/(\varepsilon h)` steps. ``factor`` (:data:`AUTO_STEP_FACTOR`) keeps the bias of the
    stiffest direction small; the soft directions, which relax slowly at that step, are the job of
    convergence-driven sampling (``num_draws="auto"``), which runs until they have relaxed.

    How: (1) :math:`h_0` = the top Hessian eigenvalue of :math:`U(w) = n\beta L(w) + \frac\gamma2\|w-w^*\|^2`
    at :math:`w^*` (power iteration on a pilot batch of up to 2048 samples, with Hessian-vector products from
    differences of gradients, so no second derivatives are needed). (2) At a singular :math:`w^*` the curvature
    nearby can be far larger than at :math:`w^*` itself, so a pilot run of ``rungs`` chains with step sizes
    :math:`\varepsilon_i = 2^{3-i}\cdot` ``factor``:math:`/h_0` (one chain each, all in one batched run,
    ``pilot_steps`` steps, 200 or 100 in ``SLT_QUICK`` mode) explores the local posterior; :math:`h` is measured
    again at each chain's end point. (3) *Everything the pilot saw counts*: :math:`h_{\max}` is the largest
    :math:`h` at :math:`w^*` and at the end point of every rung that did not diverge (a large step explores
    furthest, so its curvature is the most informative, not the least); and a rung that diverged at step
    :math:`\varepsilon_i` shows curvature of at least :math:`4/\varepsilon_i` somewhere (the stability limit), so
    :math:`h_{\max} \ge 4/\varepsilon_i`. Then :math:`\varepsilon = ` ``factor``:math:`/h_{\max}`. Deterministic
    for a fixed ``seed``. If more than half the rungs diverge (a centre so flat that :math:`h_0` says nothing, e.g.
    :math:`w^6` without a prior), the ladder moves down to start at its lowest rung and runs again (up to 3 times).
    The same rule is used with ``preconditioner="rmsprop"``.

    The earlier rule trusted only rungs with :math:`\varepsilon_i h_i \le 0.5`, which discarded what the larger
    steps saw and chose steps that diverged on higher-order normal crossings; Part II, "Estimating λ",
    shows the measurements behind this one.
    """
    factor = AUTO_STEP_FACTOR if factor is None else float(factor)
    pilot_steps = _config.size(200, 100) if pilot_steps is None else int(pilot_steps)
    dev = prob.device
    xb, yb = _pilot_batch(prob, seed)
    center = prob.center[None]
    h0 = float(_hessian_top_eig(prob, center, xb[None], yb[None], nbeta, localization, seed=seed)[0])
    if not math.isfinite(h0):
        raise ValueError("the loss has a non-finite curvature at the centre w* (gradients near w* are NaN or inf); "
                         "check the model and loss_fn, or pass a number as step_size")
    if h0 <= 0:
        raise ValueError(f"the Hessian of nβ·L + γ/2·‖w − w*‖² at the centre w* is zero (the loss is flat there and "
                         f"localization={localization!r}), so step_size='auto' has no curvature to scale by; pass a "
                         "number as step_size, or a localization > 0")
    top = factor / h0 * 8.0
    for attempt in range(4):   # a flat centre (h0 ≈ 0) can put every rung far too high: move the ladder down
        ladder = tuple(top * 2.0 ** -i for i in range(rungs))
        cfg = SamplerConfig(step_size=ladder, nbeta=nbeta, localization=localization, num_chains=rungs,
                            num_draws=pilot_steps, num_burnin=0, batch_size=batch_size, seed=int(seed) + 1,
                            preconditioner=preconditioner)
        res = sgld(prob.model, prob.loss_fn, None, cfg, progress=False, center_loss=False, on_divergence="mark",
                   num_threads=None, _problem=prob)
        ends = res.final.to(device=dev, dtype=prob.dtype)
        ok = ~torch.tensor(res.extras["diverged"]) & torch.isfinite(ends).all(1).cpu()
        if int(ok.sum()) >= rungs // 2:
            break
        top = ladder[-1]
    safe_ends = torch.where(ok.to(dev)[:, None], ends, center.expand_as(ends))
    h = _hessian_top_eig(prob, safe_ends, xb.expand(rungs, *xb.shape), yb.expand(rungs, *yb.shape),
                         nbeta, localization, seed=seed + 1).cpu().double()
    eps = torch.tensor(ladder, dtype=torch.float64)
    seen = ok & torch.isfinite(h)
    bounds = [h0] + h[seen].tolist() + [4.0 / e for e in eps[~ok].tolist()]
    h_max = max(bounds)
    info = {"h0": h0, "h_max": h_max, "ladder": list(ladder), "pilot_h": h.tolist(), "ladder_moves": attempt,
            "diverged": (~ok).tolist(), "pilot_seconds": res.seconds}
    return factor / h_max, info


#: with step_size="auto", the run restarts when the chains reach states this many times stiffer than the step
#: was chosen for (ε·h > AUTO_RECHECK · AUTO_STEP_FACTOR), with ε = AUTO_STEP_FACTOR / h
AUTO_RECHECK = 3.0


class StepTooLarge(Exception):
    """Raised by :func:`curvature_check` to restart a run with the smaller ``new_step_size``."""

    def __init__(self, h: float, eps: float, new_step_size):
        self.h, self.eps, self.new_step_size = h, eps, new_step_size
        super().__init__(f"curvature {h:.3g} at the chains' current states, ε·h = {eps * h:.2f}")


def curvature_check(prob: _Problem, cfg: SamplerConfig):
    """The check the convergence rule runs on the chains' current states ``W``: their top curvature, measured on
    the pilot batch (the pilot saw only the start of the chains; at singular points the stiff regions are reached
    later, e.g. far along the axes of a normal crossing). ``None`` for per-chain step sizes."""
    if isinstance(cfg.step_size, tuple):
        return None
    eps = float(cfg.step_size)
    xb, yb = _pilot_batch(prob, cfg.seed)

    def check(W):
        C = W.shape[0]
        h = _hessian_top_eig(prob, W.detach().clone(), xb.expand(C, *xb.shape), yb.expand(C, *yb.shape),
                             cfg.nbeta, cfg.localization, iters=10)
        h_max = float(h.max())
        if math.isfinite(h_max) and eps * h_max > AUTO_RECHECK * AUTO_STEP_FACTOR:
            raise StepTooLarge(h_max, eps, AUTO_STEP_FACTOR / h_max)

    return check
