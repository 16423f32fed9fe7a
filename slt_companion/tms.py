r"""The toy model of superposition (TMS): k-gon critical points, their exact losses, and a classifier.

The model (Elhage et al. 2022; Chen, Lau, Mendel, Wei & Murfet 2023, "Dynamical versus Bayesian phase
transitions in a toy model of superposition", arXiv 2310.06301) is

.. math::
    f(x; W, b) = \mathrm{ReLU}(W^\top W x + b),\qquad W\in\mathbb R^{r\times c},\ b\in\mathbb R^c,

with :math:`r = 2` hidden dimensions and :math:`c` features, trained on the *high-sparsity* inputs
:math:`x = \mu e_a` (:math:`a` uniform on the :math:`c` features, :math:`\mu\sim U[0,1]`,
:func:`slt_companion.data.tms_data`) with the loss :math:`\ell(x) = \|x - f(x)\|^2` (:func:`tms_loss`).

- :func:`population_loss` -- the exact population loss :math:`L(W, b) = \mathbb E\|x - f(x)\|^2` in closed form
  (piecewise polynomial in :math:`\mu`; differentiable almost everywhere; batched over leading dimensions).
- :func:`k_gon` -- the k-gon critical points: ``k`` columns of :math:`W` on a regular k-gon of radius
  :math:`l^*`, live biases :math:`b^*` (the paper's :data:`PAPER_KGON`), the other :math:`c-k` columns zero,
  their biases either :math:`b^+ = 1/(2c)` (the positive-bias variants :math:`k^+`), negative (the variants
  :math:`k^-`, a flat family: any :math:`b\le 0` gives the same loss) or zero.
- :func:`paper_loss` -- the paper's closed form :math:`L = (h_k + c - k)/(3c) - \sigma/(4c^2)` for
  :math:`\sigma` positive dead biases; :func:`solve_kgon` finds :math:`(l^*, b^*)` by minimising the exact loss.
- :func:`classify_kgon` -- the k-gon (and variant) nearest to an arbitrary :math:`(W, b)`, with its distance.
- :data:`PAPER_LLC` -- the paper's learning coefficients at :math:`c = 6`.

Used in: Part III, "Superposition and its critical points", "Bayesian phase transitions in the TMS",
"Dynamical transitions in the TMS".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PAPER_KGON", "PAPER_H", "PAPER_LOSS_C6", "PAPER_LLC", "PAPER_TRANSITIONS", "tms_loss",
           "population_loss", "paper_loss", "kgon_name", "k_gon", "solve_kgon", "KGonMatch", "classify_kgon",
           "kgon_llc"]

#: The paper's (l*, b*) of the k-gon critical points, r = 2 (Chen et al. 2023, Sec. 3; l* = radius, b* = live bias).
#: For k <= 4 the columns are pairwise non-acute and l* = 1, b* = 0 reconstruct the live features exactly.
PAPER_KGON = {4: (1.0, 0.0), 5: (1.17046, -0.28230), 6: (1.32053, -0.61814), 7: (1.44839, -0.96691),
              8: (1.55045, -1.29119)}

#: The paper's h_k = 3c * (loss contributed by the k live features), so that L(k, c) = (h_k + c - k)/(3c).
PAPER_H = {4: 0.0, 5: 0.23738, 6: 0.86746, 7: 1.74870, 8: 2.77311}

#: The paper's population losses at c = 6 (PAPERS.md §6), keyed by our k-gon names.
PAPER_LOSS_C6 = {"4": 0.11111, "4+": 0.10417, "5": 0.06874, "5+": 0.06180, "6": 0.04819}

#: The paper's local learning coefficients at c = 6 ("5-": the 5-gon whose dead bias is negative, the interior of
#: the chamber b <= 0 where the paper's plain 5-gon lives). 4-gons are direction dependent and have no entry.
PAPER_LLC = {"5-": 7.0, "5+": 8.5, "6": 8.5}

#: The paper's Bayesian transitions at c = 6: predicted n (with its O(1) constant for 5 -> 6) and the observed window.
PAPER_TRANSITIONS = {"5->6": {"predicted": 601.0, "predicted_no_const": 445.0, "observed": (600, 700),
                              "delta_const": 2.7535},
                     "4+->5": {"predicted": 380.0}}

_SUPER = {"+": "\u207a", "-": "\u207b"}


def tms_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""The TMS loss :math:`\frac1n\sum_i\|y_i - f(x_i)\|^2` (sum over features, mean over the batch).

    This is the loss of Chen et al. (2023), whose population value is :func:`population_loss`; pass it as
    ``loss_fn`` to :func:`slt_companion.llc.estimate_llc` (with ``y = x``).
    """
    if out.shape != y.shape:
        raise ValueError(f"out and y must have the same shape, got {tuple(out.shape)} and {tuple(y.shape)}")
    return ((out - y) ** 2).sum(-1).mean()


def _as_params(W, b):
    W = torch.as_tensor(W)
    b = torch.as_tensor(b)
    if not W.is_floating_point():
        W = W.double()
    if W.ndim < 2:
        raise ValueError(f"W must have shape (..., n_hidden, n_features), got {tuple(W.shape)}")
    if b.ndim < 1 or b.shape[-1] != W.shape[-1]:
        raise ValueError(f"b must have shape (..., n_features) = (..., {W.shape[-1]}) to match W of shape "
                         f"{tuple(W.shape)}; got {tuple(b.shape)}")
    return W, b.to(W.dtype)


def population_loss(W, b) -> torch.Tensor:
    r"""The exact population loss :math:`L(W,b) = \mathbb E_{a,\mu}\|\mu e_a - \mathrm{ReLU}(\mu W^\top W e_a + b)\|^2`.

    With :math:`g = (W^\top W)_{ia}` and :math:`\delta = [i = a]`, each term is
    :math:`\int_0^1 (\mu\delta - \mathrm{ReLU}(\mu g + b_i))^2 d\mu = \delta/3 + \int_A q(\mu)\,d\mu`, where
    :math:`A\subseteq[0,1]` is the interval on which :math:`\mu g + b_i > 0` and
    :math:`q(\mu) = \mu^2((\delta-g)^2-\delta^2) - 2\mu(\delta-g)b_i + b_i^2`; :math:`L = \frac1c\sum_{i,a}`.
    This equals :math:`H(W,b)/(3c)` of Chen et al. (2023), Lemma 3.1. ``W`` of shape ``(..., r, c)`` and ``b``
    of shape ``(..., c)`` (leading dimensions broadcast); differentiable almost everywhere (torch autograd).
    """
    W, b = _as_params(W, b)
    c = W.shape[-1]
    G = W.transpose(-1, -2) @ W                        # (..., c, c): G[i, a] = <w_i, w_a>
    beta = b[..., :, None].expand_as(G)                # bias of output i
    delta = torch.eye(c, dtype=W.dtype, device=W.device).expand_as(G)
    one = torch.ones_like(G)
    zero = torch.zeros_like(G)
    pos, neg = G > 0, G < 0
    safe_g = torch.where(G == 0, one, G)
    root = (-beta / safe_g).clamp(0.0, 1.0)
    lo = torch.where(pos, root, zero)
    hi = torch.where(neg, root, one)
    # g == 0: active on all of [0, 1] if b > 0, nowhere otherwise
    flat = ~(pos | neg)
    lo = torch.where(flat, zero, lo)
    hi = torch.where(flat, torch.where(beta > 0, one, zero), hi)
    hi = torch.maximum(hi, lo)
    d = delta - G
    a2 = d * d - delta * delta
    a1 = -2.0 * d * beta
    a0 = beta * beta

    def prim(m):
        return a2 * m ** 3 / 3.0 + a1 * m ** 2 / 2.0 + a0 * m

    T = delta / 3.0 + prim(hi) - prim(lo)
    return T.sum((-1, -2)) / c


def paper_loss(k: int, c: int, positive: int = 0) -> float:
    r"""The paper's closed form :math:`L(k, c) = (h_k + c - k)/(3c) - \sigma/(4c^2)` (Chen et al. 2023).

    Each of the :math:`c - k` dead features adds :math:`1/(3c)` (its output is 0, its input :math:`\mu` is lost);
    each of the ``positive`` = :math:`\sigma` dead features with bias :math:`b^+ = 1/(2c)` saves
    :math:`1/(4c^2)`, since :math:`\mathbb E[(x_i - b)^2] = 1/(3c) - b/c + b^2` is smallest at :math:`b = 1/(2c)`.
    """
    k, c, positive, _ = _check_kgon_args(k, c, positive)
    if k not in PAPER_H:
        raise ValueError(f"the paper gives h_k for k in {sorted(PAPER_H)} only, got k={k}")
    return (PAPER_H[k] + c - k) / (3 * c) - positive / (4 * c * c)


def _check_kgon_args(k, c, positive=0, negative=0):
    for name, val, lo in (("k", k, 0), ("c", c, 1), ("positive", positive, 0), ("negative", negative, 0)):
        if isinstance(val, bool) or int(val) != val or int(val) < lo:
            raise ValueError(f"{name} must be an integer ≥ {lo}, got {val!r}")
    k, c, positive, negative = int(k), int(c), int(positive), int(negative)
    if k > c:
        raise ValueError(f"k={k} exceeds the number of features c={c}; a k-gon needs k ≤ c")
    if positive + negative > c - k:
        raise ValueError(f"positive + negative = {positive + negative} exceeds the number of dead features "
                         f"c - k = {c - k}")
    return k, c, positive, negative


def kgon_name(k: int, positive: int = 0, negative: int = 0, *, pretty: bool = False) -> str:
    """The name of a k-gon variant: ``k`` then one ``+`` per positive and one ``-`` per negative dead bias.

    ``kgon_name(5, 1) == "5+"``, ``kgon_name(4, 1, 1) == "4+-"``; ``pretty=True`` uses superscripts ("5⁺").
    """
    s = "+" * int(positive) + "-" * int(negative)
    if pretty:
        s = "".join(_SUPER[ch] for ch in s)
    return f"{int(k)}{s}"


def _radius_bias(k: int) -> tuple[float, float]:
    if k <= 4:
        return 1.0, 0.0
    if k not in PAPER_KGON:
        raise ValueError(f"k-gon radius and bias are tabulated for k ≤ 8 only, got k={k}; "
                         "pass radius= and bias= (e.g. from solve_kgon) explicitly")
    return PAPER_KGON[k]


def k_gon(k: int, c: int = 6, *, positive: int = 0, negative: int = 0, negative_bias: float = -0.5,
          radius: float | None = None, bias: float | None = None, angle: float = 0.0, features=None,
          n_hidden: int = 2, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The k-gon critical point :math:`(W, b)` of the TMS with ``c`` features and ``n_hidden = 2``.

    Live features (``features``, default ``0..k-1``, in counter-clockwise order) sit at angles
    ``angle + 2πj/k`` on a circle of radius :math:`l^*` with bias :math:`b^*` (:data:`PAPER_KGON`, or
    ``radius``/``bias``). Of the :math:`c-k` dead features (column 0), the first ``positive`` get the bias
    :math:`b^+ = 1/(2c)` (variant :math:`k^{+}`), the next ``negative`` get ``negative_bias`` (< 0; any
    negative value gives the same loss: a flat direction), the rest bias 0. Returns float64 ``(W, b)`` of
    shapes ``(2, c)`` and ``(c,)``. Chen et al. (2023), Sec. 3.
    """
    k, c, positive, negative = _check_kgon_args(k, c, positive, negative)
    if n_hidden != 2:
        raise ValueError(f"k-gons are defined for n_hidden=2 (the paper's r = 2), got n_hidden={n_hidden!r}")
    if not negative_bias < 0:
        raise ValueError(f"negative_bias must be < 0, got {negative_bias!r}")
    l0, b0 = _radius_bias(k) if (radius is None or bias is None) else (None, None)
    radius = l0 if radius is None else float(radius)
    bias = b0 if bias is None else float(bias)
    if features is None:
        features = list(range(k))
    features = [int(f) for f in features]
    if len(features) != k or len(set(features)) != k or any(f < 0 or f >= c for f in features):
        raise ValueError(f"features must list {k} distinct feature indices in 0..{c - 1}, got {features!r}")
    W = torch.zeros(2, c, dtype=dtype)
    b = torch.zeros(c, dtype=dtype)
    for j, f in enumerate(features):
        th = angle + 2 * math.pi * j / max(k, 1)
        W[0, f], W[1, f] = radius * math.cos(th), radius * math.sin(th)
        b[f] = bias
    dead = [f for f in range(c) if f not in features]
    for f in dead[:positive]:
        b[f] = 1.0 / (2 * c)
    for f in dead[positive:positive + negative]:
        b[f] = negative_bias
    return W, b


def solve_kgon(k: int, c: int = 6, *, steps: int = 60) -> tuple[float, float, float]:
    r"""Find :math:`(l^*, b^*)` by minimising :func:`population_loss` over the symmetric k-gon family.

    By the principle of symmetric criticality a critical point of the loss restricted to regular k-gons of
    radius :math:`l` and live bias :math:`b` is a critical point of the full loss. Newton's method in float64
    from the paper's values (or from (1.2 + 0.1(k-5), -0.3(k-4)) beyond the table). Returns
    ``(l*, b*, h_k)`` with :math:`h_k = 3c\,L - (c - k)`.
    """
    k, c, _, _ = _check_kgon_args(k, c)
    if k < 5:
        return 1.0, 0.0, 0.0
    l0, b0 = PAPER_KGON.get(k, (1.2 + 0.1 * (k - 5), -0.3 * (k - 4)))
    z = torch.tensor([l0, b0], dtype=torch.float64)

    ang = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    unit = torch.stack([torch.cos(ang), torch.sin(ang)])

    def f(z):
        return population_loss(z[0] * unit, z[1] * torch.ones(k, dtype=torch.float64))

    for _ in range(steps):
        g = torch.autograd.functional.jacobian(f, z)
        H = torch.autograd.functional.hessian(f, z)
        step = torch.linalg.solve(H, g)
        z = z - step
        if step.abs().max() < 1e-14:
            break
    W, b = k_gon(k, k, radius=float(z[0]), bias=float(z[1]))
    h = float(population_loss(W, b)) * 3 * k
    return float(z[0]), float(z[1]), h


@dataclass(frozen=True)
class KGonMatch:
    """The result of :func:`classify_kgon`.

    ``name`` (e.g. ``"5+"``), ``k`` live features, ``positive``/``negative``/``zero`` dead biases,
    ``distance``: Euclidean distance in :math:`(W, b)` to the nearest ideal k-gon of that type (after the best
    rotation; negative dead biases are a flat family, so they cost nothing), ``live``: the live feature indices
    in counter-clockwise order, ``loss``: the ideal k-gon's population loss.
    """

    name: str
    k: int
    positive: int
    negative: int
    zero: int
    distance: float
    live: tuple
    loss: float

    @property
    def pretty(self) -> str:
        return kgon_name(self.k, self.positive, self.negative, pretty=True)


def classify_kgon(W, b, *, live_threshold: float = 0.5, bias_tol: float = 0.02) -> KGonMatch:
    r"""Name the k-gon (and its variant) closest to an arbitrary TMS parameter :math:`(W, b)` (``n_hidden = 2``).

    A feature is *live* if its column norm exceeds ``live_threshold``; ``k`` is their number. The ideal k-gon
    puts the live columns, in the order of their angles, on a regular k-gon of radius :math:`l^*` with bias
    :math:`b^*`, rotated by the circular mean of the angle offsets (the best rotation for equal radii). A dead
    feature's bias counts as positive if above ``bias_tol`` (ideal :math:`1/(2c)`), negative if below
    ``-bias_tol`` (ideal: itself, a flat direction), zero otherwise (ideal 0). The returned ``distance`` says
    how good the match is: about 0 at a k-gon, order 1 for a configuration that is not one.
    """
    W, b = _as_params(W, b)
    W, b = W.detach().double().cpu(), b.detach().double().cpu()
    if W.ndim != 2 or W.shape[0] != 2:
        raise ValueError(f"W must have shape (2, n_features) (k-gons need n_hidden = 2), got {tuple(W.shape)}")
    if b.ndim != 1:
        raise ValueError(f"b must have shape (n_features,), got {tuple(b.shape)}")
    if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
        raise ValueError("W and b must be finite; got NaN or inf")
    c = W.shape[1]
    norms = W.norm(dim=0)
    live = [i for i in range(c) if norms[i] > live_threshold]
    theta = torch.atan2(W[1], W[0])
    live.sort(key=lambda i: float(theta[i]))
    k = len(live)
    dead = [i for i in range(c) if i not in live]
    pos = [i for i in dead if b[i] > bias_tol]
    neg = [i for i in dead if b[i] < -bias_tol]
    zero = len(dead) - len(pos) - len(neg)
    if k <= 8:
        radius, bias = _radius_bias(k)
        ideal_W = torch.zeros_like(W)
        if k:
            offs = torch.tensor([float(theta[i]) - 2 * math.pi * j / k for j, i in enumerate(live)],
                                dtype=torch.float64)
            phi = math.atan2(float(torch.sin(offs).mean()), float(torch.cos(offs).mean()))
            for j, i in enumerate(live):
                ideal_W[0, i] = radius * math.cos(phi + 2 * math.pi * j / k)
                ideal_W[1, i] = radius * math.sin(phi + 2 * math.pi * j / k)
        ideal_b = b.clone()
        for i in live:
            ideal_b[i] = bias
        for i in pos:
            ideal_b[i] = 1.0 / (2 * c)
        for i in dead:
            if i not in pos and i not in neg:
                ideal_b[i] = 0.0
        distance = float(torch.sqrt(((W - ideal_W) ** 2).sum() + ((b - ideal_b) ** 2).sum()))
        loss = float(population_loss(ideal_W, ideal_b))
    else:
        distance, loss = float("inf"), float("nan")
    return KGonMatch(name=kgon_name(k, len(pos), len(neg)), k=k, positive=len(pos), negative=len(neg), zero=zero,
                     distance=distance, live=tuple(live), loss=loss)


def kgon_llc(k: int, c: int, positive: int = 0) -> float | None:
    r"""The paper's theoretical local learning coefficient of a k-gon, where it is known; else ``None``.

    :math:`(3c-1)/2` when :math:`k = c` (:math:`d/2` minus the one flat O(2) rotation); at :math:`c = 6`,
    :data:`PAPER_LLC` (5-gon with a negative dead bias: 7; 5⁺: 8.5). 4-gons are direction dependent: ``None``.
    """
    k, c, positive, _ = _check_kgon_args(k, c, positive)
    if k == c and k >= 5:
        return (3 * c - 1) / 2
    if c == 6:
        return PAPER_LLC.get(kgon_name(k, positive, (c - k - positive) if k == 5 and not positive else 0))
    return None
