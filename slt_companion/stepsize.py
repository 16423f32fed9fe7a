r"""The automatic SGLD step size of :func:`slt_companion.llc.estimate_llc` (``step_size="auto"``).

See :func:`auto_step_size` for the rule and how it was chosen. Used in: Part II, "Estimating λ".
"""

from __future__ import annotations

import math

import torch

from . import config as _config
from .sampling import SamplerConfig, _Problem, sgld

__all__ = ["auto_step_size", "AUTO_STEP_FACTOR"]

#: ε·h_max for the automatic step size (see :func:`auto_step_size`)
AUTO_STEP_FACTOR = 0.1


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
