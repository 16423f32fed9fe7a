r"""Entropy-SGD (Chaudhari et al. 2017) as a :class:`torch.optim.Optimizer`.

Entropy-SGD descends the *local entropy* of the loss rather than the loss itself,

.. math::
    F_\gamma(x) = -\log \int \exp\Big(-f(x') - \frac\gamma2\|x - x'\|^2\Big)\,dx', \qquad
    \nabla F_\gamma(x) = \gamma\,\big(x - \E_{x'\sim p_{x,\gamma}}[x']\big),

where :math:`p_{x,\gamma}(x') \propto \exp(-f(x') - \frac\gamma2\|x-x'\|^2)` is a Gibbs measure tethered to the
current weights :math:`x`. Wide valleys (many nearby low-loss weights) have low local entropy, so the method is
biased towards them -- which is why the LLC paper (Lau et al.) compares it with SGD: a flatter, more degenerate
minimum should have a lower learning coefficient.

**One step** (the algorithm of the paper and of its reference code) does, from the current weights :math:`x`:

1. *inner Langevin loop*, ``L`` times: draw a fresh minibatch (``closure()``), and update a copy :math:`x'`
   (started at :math:`x`) and a running average :math:`\mu` (started at :math:`x`):

   .. math::
       x' \leftarrow x' - \eta'\,\big[\nabla f_B(x') + \gamma_t\,(x' - x)\big] + \sqrt{\eta'}\,\varepsilon\,\xi,
       \qquad \mu \leftarrow (1-\alpha)\,\mu + \alpha\,x',

   with :math:`\xi \sim \mathcal N(0, I)`;
2. *outer step*: :math:`x \leftarrow x - \eta\,(x - \mu)` (optionally with momentum :math:`m`, Nesterov or not).
   As in the reference implementations the factor :math:`\gamma` of :math:`\nabla F_\gamma` is absorbed into the
   outer learning rate :math:`\eta` (``lr``); with ``lr=1`` the weights jump to the Langevin average :math:`\mu`.

**Scoping**: :math:`\gamma_t = \gamma_0 (1 + \gamma_1)^t` grows with the outer step :math:`t`, so the tether tightens
and late training approaches plain SGD on the loss.

Hyperparameters (defaults close to the paper's small-network settings): ``lr`` :math:`\eta` = 1, ``inner_lr``
:math:`\eta'` = 0.1, ``L`` = 5 (the LLC paper's MNIST run; Chaudhari et al. use 20), ``gamma`` :math:`\gamma_0` = 0.03,
``scoping`` :math:`\gamma_1` = 1e-3, ``noise`` :math:`\varepsilon` = 1e-4 (the "thermal noise"), ``alpha`` = 0.75,
``momentum`` 0, ``nesterov`` False. One outer step costs ``L`` gradient evaluations: compare optimizers by
gradient evaluations (or wall time), not by steps.

**Determinism.** The Langevin noise of outer step :math:`t` comes from a generator seeded with ``(seed, t)``, so
a run is reproducible on the CPU and resumable from :meth:`state_dict` (the step counter is part of the state).

Used in: Part II, "Degeneracy in real networks".
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch.optim import Optimizer

__all__ = ["EntropySGD"]


def _check(name: str, value, *, low: float = 0.0, strict: bool = False, high: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        rng = f"{'>' if strict else '≥'} {low:g}" + (f" and ≤ {high:g}" if high is not None else "")
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}")
    return float(value)


def _noise_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s Langevin noise: mixed from ``(seed, step)`` and a tag of its own (NumPy's
    SeedSequence), so that it never repeats the minibatch stream that :func:`slt_companion.train.train` seeds with
    ``seed * 1_000_003 + step`` (the same affine seed made the noise equal the step's minibatch inputs)."""
    tag = 0x6E6F697365                                    # "noise"
    return int(np.random.SeedSequence([tag, int(seed) % 2 ** 63, int(step)]).generate_state(1, np.uint64)[0]) % 2 ** 63


class EntropySGD(Optimizer):
    r"""Entropy-SGD (Chaudhari et al., ICLR 2017); see the module docstring for the update.

    ``step(closure)`` needs a closure that draws a fresh minibatch, zeroes the gradients, computes the loss,
    calls ``backward()`` and returns the loss; it is called ``L`` times per step. ``step`` returns the loss of
    the first call (the loss at the current weights).
    """

    def __init__(self, params, lr: float = 1.0, *, inner_lr: float = 0.1, L: int = 5, gamma: float = 0.03,
                 scoping: float = 1e-3, noise: float = 1e-4, alpha: float = 0.75, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, seed: int = 0):
        lr = _check("lr", lr, strict=True)
        inner_lr = _check("inner_lr", inner_lr, strict=True)
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"L (inner Langevin steps) must be a positive integer, got {L!r}")
        gamma = _check("gamma", gamma)
        scoping = _check("scoping", scoping)
        noise = _check("noise", noise)
        alpha = _check("alpha", alpha, strict=True, high=1.0)
        momentum = _check("momentum", momentum, high=1.0)
        weight_decay = _check("weight_decay", weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("nesterov=True needs momentum > 0")
        defaults = dict(lr=lr, inner_lr=inner_lr, L=L, gamma=gamma, scoping=scoping, noise=noise, alpha=alpha,
                        momentum=momentum, nesterov=bool(nesterov), weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.seed = int(seed)

    def _step_count(self) -> int:
        for group in self.param_groups:
            for p in group["params"]:
                return int(self.state[p].get("step", 0))
        return 0

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        if closure is None:
            raise ValueError("EntropySGD.step needs a closure: a function that draws a minibatch, zeroes the "
                             "gradients, computes the loss, calls backward() and returns the loss")
        t = self._step_count()
        gen = torch.Generator().manual_seed(_noise_seed(self.seed, t))
        params = [p for g in self.param_groups for p in g["params"]]
        anchor = {p: p.detach().clone() for p in params}          # x
        avg = {p: p.detach().clone() for p in params}             # mu
        first_loss = None
        L = self.param_groups[0]["L"]
        for _ in range(L):
            with torch.enable_grad():
                loss = closure()
            if first_loss is None:
                first_loss = loss.detach() if isinstance(loss, torch.Tensor) else loss
            if loss is not None and not torch.isfinite(torch.as_tensor(loss)).all():
                raise FloatingPointError(f"EntropySGD: the loss became {float(loss)} in the inner loop of step {t}; "
                                         "lower inner_lr or lr")
            for group in self.param_groups:
                g_t = group["gamma"] * (1.0 + group["scoping"]) ** t
                eta = group["inner_lr"]
                for p in group["params"]:
                    d = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                    if group["weight_decay"]:
                        d.add_(p, alpha=group["weight_decay"])
                    d.add_(p - anchor[p], alpha=g_t)
                    p.add_(d, alpha=-eta)
                    if group["noise"] > 0:
                        xi = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
                        p.add_(xi, alpha=math.sqrt(eta) * group["noise"])
                    avg[p].mul_(1.0 - group["alpha"]).add_(p, alpha=group["alpha"])
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                p.copy_(anchor[p])
                d = anchor[p] - avg[p]
                if group["momentum"] > 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d)
                    d = d.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(d, alpha=-group["lr"])
                state["step"] = t + 1
        return first_loss
