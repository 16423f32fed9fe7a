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

from .sampling import cpu_threads
from .train import log_checkpoint_steps
from ._checks import check_int

__all__ = ["PAPER_KGON", "PAPER_H", "PAPER_LOSS_C6", "PAPER_LLC", "PAPER_TRANSITIONS", "tms_loss",
           "population_loss", "paper_loss", "kgon_name", "k_gon", "solve_kgon", "KGonMatch", "classify_kgon",
           "kgon_llc", "pretty_name", "train_sgd", "empirical_minimum", "hessian_eigenvalues", "is_local_minimum",
           "LLC_SETTINGS", "LLC_KGONS", "LLC_KEYS", "kgon_llc_table", "kgon_llc_row", "kgon_replica_settings", "kgon_at_minimum",
           "classify_trajectory", "plateaus", "count_transitions",
           "sample_posterior", "draw_configuration", "posterior_census", "crossing_n",
           "sample_posterior_tempered"]

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


def _tms_loss_batched(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`tms_loss` of every chain at once: ``out``, ``y`` ``(C, B, c)`` -> ``(C,)``."""
    return ((out - y) ** 2).sum(-1).reshape(out.shape[0], -1).mean(-1)


def _tms_loss_batched_vjp(out: torch.Tensor, y: torch.Tensor):
    """:func:`_tms_loss_batched` and the gradient of the sum of its values with respect to ``out``."""
    r = out - y
    per = (r ** 2).sum(-1).reshape(r.shape[0], -1)
    return per.mean(-1), r * (2.0 / per.shape[1])


tms_loss.batched = _tms_loss_batched            # the sampler's fast paths (checked against vmap / autograd before use)
tms_loss.batched_vjp = _tms_loss_batched_vjp


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


def pretty_name(name: str) -> str:
    """A k-gon name with superscript signs, for figures: ``"5+" -> "5⁺"``, ``"4+-" -> "4⁺⁻"``."""
    return "".join(_SUPER.get(ch, ch) for ch in str(name))


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


def _batched_forward(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(x) for R models at once: W (R, r, c), b (R, c), x (R, m, c) -> (R, m, c); the forward of
    :func:`~slt_companion.models.tms_forward_batched_vjp`, which the training step uses."""
    from .models import tms_forward_batched_vjp

    return tms_forward_batched_vjp(W, b, x)[0]


def train_sgd(num_runs: int, *, n: int = 1000, n_features: int = 6, steps: int = 20_000, lr: float = 0.05,
              batch_size: int = 100, init_scale: float = 0.5, num_checkpoints: int = 80, seed: int = 0,
              progress: bool = True) -> dict:
    r"""Train ``num_runs`` TMS models (``n_hidden = 2``) with plain SGD at once, each on its own data set.

    Run ``j`` draws its ``n`` training inputs with :func:`slt_companion.data.tms_data` (seed ``seed + j``), its
    initial :math:`W_{ij}\sim\mathcal N(0,\text{init\_scale}^2)` (bias 0) from ``seed``, and takes ``steps`` SGD
    steps of size ``lr`` on minibatches of ``batch_size`` (sampled with replacement) of :func:`tms_loss`.
    Float64, CPU; the same ``seed`` gives identical results. Returns a dict of arrays: ``steps`` (T,) the
    log-spaced checkpoints, ``W`` (R, T, 2, c), ``b`` (R, T, c), ``train_loss`` (R, T) on each run's data,
    ``pop_loss`` (R, T) the exact :func:`population_loss`.
    """
    from .data import tms_data

    R = check_int("num_runs", num_runs)
    n, c = check_int("n", n), check_int("n_features", n_features)
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
    num_checkpoints = check_int("num_checkpoints", num_checkpoints, 3)
    gen = torch.Generator().manual_seed(int(seed))
    X = torch.stack([tms_data(n, c, seed=int(seed) + j, dtype=torch.float64).x for j in range(R)])  # (R, n, c)
    W = (torch.randn(R, 2, c, generator=gen, dtype=torch.float64) * init_scale).requires_grad_(True)
    b = torch.zeros(R, c, dtype=torch.float64, requires_grad=True)
    ckpts = log_checkpoint_steps(steps, num_checkpoints - 1)
    Ws, bs, train = [], [], []
    ar = torch.arange(R)[:, None]

    def record():
        with torch.no_grad():
            Ws.append(W.detach().clone())
            bs.append(b.detach().clone())
            train.append(((_batched_forward(W, b, X) - X) ** 2).sum(-1).mean(-1))

    it = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"SGD, {R} runs", mininterval=1.0)
    record()
    ck = set(int(s) for s in ckpts[1:])
    with cpu_threads(1):  # tiny tensors: intra-op threads only add hand-offs (up to 10x on a busy 2-core CPU)
        _sgd_loop(it, ck, R, n, batch_size, gen, X, W, b, lr, ar, record)
    Wt, bt = torch.stack(Ws, 1), torch.stack(bs, 1)
    return {"steps": ckpts, "W": Wt.numpy(), "b": bt.numpy(), "train_loss": torch.stack(train, 1).numpy(),
            "pop_loss": population_loss(Wt, bt).numpy()}


def _sgd_loop(it, ck, R, n, batch_size, gen, X, W, b, lr, ar, record):
    """SGD on every run at once, with the backward pass by hand (``tms_forward_batched_vjp``; autograd's fixed cost
    was most of a step) and each run's minibatch gathered with one ``index_select``."""
    from .models import tms_forward_batched_vjp

    flat, offset = X.reshape(R * n, X.shape[-1]), ar * n
    with torch.no_grad():
        for t in it:
            idx = torch.randint(0, n, (R, batch_size), generator=gen)
            xb = flat.index_select(0, (idx + offset).reshape(-1)).view(R, batch_size, -1)
            out, vjp = tms_forward_batched_vjp(W, b, xb)
            gW, gb = vjp((out - xb) * (2.0 / batch_size))    # of the sum over runs of each run's mean ||x - f(x)||²
            W -= lr * gW
            b -= lr * gb
            if t in ck:
                record()


def empirical_minimum(W, b, x: torch.Tensor, *, steps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The nearest local minimum of the *empirical* loss :math:`L_n` on inputs ``x``, from ``(W, b)`` (float64).

    A k-gon is a critical point of the population loss; on a finite sample of size :math:`n` the gradient of
    :math:`L_n` there is :math:`O(n^{-1/2})` and the LLC estimator, which measures the loss *above* the
    centre, would see the descent to the nearby minimum as negative complexity. Moving the centre to that
    minimum first (a distance :math:`O(n^{-1/2})`) removes it. Newton steps with the pseudo-inverse of the
    Hessian (the flat directions -- rotations, dead features -- are left alone), each accepted only if it
    lowers :math:`L_n`. Returns float64 ``(W, b)``.
    """
    W, b = _as_params(W, b)
    loss = _flat_empirical_loss(W, x)
    r, c = W.shape
    z = torch.cat([W.detach().double().flatten(), b.detach().double()])
    with cpu_threads(1):
        z = _newton(loss, z, int(steps))
    return z[:r * c].reshape(r, c).clone(), z[r * c:].clone()


def _flat_empirical_loss(W: torch.Tensor, x):
    """:math:`L_n` on inputs ``x`` as a function of the flattened float64 ``(W, b)`` of a model shaped like ``W``."""
    x = torch.as_tensor(x).double()
    if W.ndim != 2:
        raise ValueError(f"W must be one model's (n_hidden, n_features) matrix, got shape {tuple(W.shape)}")
    if x.ndim != 2 or x.shape[1] != W.shape[-1]:
        raise ValueError(f"x must have shape (n, {W.shape[-1]}), got {tuple(x.shape)}")
    r, c = W.shape

    def loss(z):
        Wz = z[:r * c].reshape(r, c)
        return ((torch.relu(x @ Wz.T @ Wz + z[r * c:]) - x) ** 2).sum(1).mean()

    return loss


def _newton(loss, z, steps):
    cur = float(loss(z))
    for _ in range(steps):
        g = torch.autograd.functional.jacobian(loss, z)
        H = torch.autograd.functional.hessian(loss, z, vectorize=True)
        step = torch.linalg.pinv(H, rtol=1e-6, hermitian=True) @ g
        for scale in (1.0, 0.5, 0.25, 0.1):
            trial = z - scale * step
            new = float(loss(trial))
            if new <= cur:
                break
        else:
            break
        z, done = trial, cur - new < 1e-15
        cur = new
        if done:
            break
    return z


def hessian_eigenvalues(W, b, x=None) -> np.ndarray:
    """Eigenvalues (ascending) of the Hessian, in the flattened ``(W, b)`` (float64), of :func:`population_loss`,
    or with inputs ``x`` (shape ``(n, n_features)``) of the empirical loss :math:`L_n` on them."""
    W, b = _as_params(W, b)
    W, b = W.detach().double(), b.detach().double()
    if W.dim() != 2 or b.dim() != 1 or b.shape[0] != W.shape[1]:
        raise ValueError(f"hessian_eigenvalues takes one model: W of shape (2, c) and b of shape (c,), got "
                         f"{tuple(W.shape)} and {tuple(b.shape)}; loop over a batch of them")
    r, c = W.shape
    z = torch.cat([W.flatten(), b])
    if x is None:
        loss = lambda z: population_loss(z[:r * c].reshape(r, c), z[r * c:])  # noqa: E731
    else:
        loss = _flat_empirical_loss(W, x)
    with cpu_threads(1):
        H = torch.autograd.functional.hessian(loss, z)
    return torch.linalg.eigvalsh(H).numpy()


def is_local_minimum(W, b, x, *, rtol: float = 1e-6) -> bool:
    r"""Whether ``(W, b)`` passes the second-order test for a local minimum of the empirical loss :math:`L_n` on
    inputs ``x``: no Hessian eigenvalue below :math:`-\text{rtol}\cdot\max|\text{eigenvalue}|`. Call it at a
    critical point (e.g. the output of :func:`empirical_minimum`). The LLC is defined at a local minimum; at a
    saddle the chains descend and :math:`\hat\lambda` comes out negative, whatever the budget. Flat directions (zero
    eigenvalues: rotations, dead features) pass; a descent of higher than second order would not be seen."""
    ev = hessian_eigenvalues(W, b, x)
    return bool(ev[0] >= -rtol * max(float(np.abs(ev).max()), 1e-300))


def _llc_settings() -> dict:
    n = 20_000
    nbeta = n / math.log(n)
    return {"n": n, "nbeta": nbeta, "localization": 20.0, "step_size": 0.24 / nbeta, "batch_size": 500,
            "data_seed": 0, "max_draws": 20_000}


#: The LLC settings of the k-gon table (Part III): n = 20,000, nβ = n/log n, localization γ = 20, SGLD step
#: ε = 0.24/(nβ) (ε·nβ·h_max ≈ 0.48, below the stability limit 2: the top Hessian eigenvalue of L at the k-gons is
#: 2.0, at the 5+-gon; "Superposition and its critical points" computes it over the 5-, 5+ and 6-gons and asserts
#: ε·nβ·h_max < 2; at 0.04/(nβ) the chains need five times as many draws to converge), minibatch 500, data seed 0,
#: and a budget of at most ``max_draws`` kept draws per chain for ``num_draws="auto"``.
LLC_SETTINGS = _llc_settings()

#: The k-gons whose LLC the book estimates: name -> (c, k, positive, negative).
LLC_KGONS = {"6": (6, 6, 0, 0), "5+": (6, 5, 1, 0), "5-": (6, 5, 0, 1), "5 (c=5)": (5, 5, 0, 0)}


def kgon_llc_table(names=None, *, num_chains: int | None = None, num_draws: int | str = "auto",
                   num_burnin: int | None = None, max_draws: int | None = None, seed: int = 0,
                   progress: bool = True) -> dict:
    r"""Estimate :math:`\hat\lambda` at each k-gon of :data:`LLC_KGONS` with :func:`slt_companion.llc.estimate_llc`.

    For each: ``n`` = ``LLC_SETTINGS["n"]`` inputs from :func:`slt_companion.data.tms_data`, the k-gon moved to the
    nearby minimum of :math:`L_n` (:func:`empirical_minimum`), then SGLD with :math:`n\beta = n/\log n`,
    :math:`\gamma` = ``localization``, step ``step_size`` (:data:`LLC_SETTINGS`), loss :func:`tms_loss`. By default
    4 chains (2 with ``SLT_QUICK=1``) sample until they have converged (``num_draws="auto"``), within a budget of
    ``max_draws`` kept draws (``LLC_SETTINGS["max_draws"]``, 400 with ``SLT_QUICK=1``); a fixed ``num_draws`` takes
    ``num_burnin`` (default ``num_draws // 2``). Results are cached (:func:`slt_companion.cache.cached`), one
    entry per k-gon; ``names`` restricts the table to some of :data:`LLC_KGONS`. Returns ``{name: {"estimate": LLCEstimate.to_dict(),
    "theory": λ, "loss": L_n at the centre, "pop_loss": population loss of the ideal k-gon, "c": c}}``.
    """
    from . import cache, config
    from .data import tms_data
    from .llc import estimate_llc

    num_chains = config.size(4, 2) if num_chains is None else num_chains
    num_burnin, max_draws = _draw_plan(num_draws, num_burnin, max_draws)
    if names is None:
        names = list(LLC_KGONS)
    unknown = [nm for nm in names if nm not in LLC_KGONS]
    if unknown:
        raise ValueError(f"names must be among {list(LLC_KGONS)}, got {unknown}")
    out = {}
    for name in names:
        c, k, pos, neg = LLC_KGONS[name]
        cfg = dict(LLC_SETTINGS, c=c, k=k, positive=pos, negative=neg, num_chains=num_chains, num_draws=num_draws,
                   num_burnin=num_burnin, max_draws=max_draws, seed=seed, negative_bias=-1.0)

        def compute(name=name, c=c, k=k, pos=pos, neg=neg):
            data = tms_data(LLC_SETTINGS["n"], c, seed=LLC_SETTINGS["data_seed"])
            model = kgon_at_minimum(name, data.x)
            W, b = k_gon(k, c, positive=pos, negative=neg, negative_bias=-1.0)
            W1, b1 = model.W.detach(), model.b.detach()
            with cpu_threads(1):
                est = estimate_llc(model, tms_loss, data.xy, num_chains=num_chains, num_draws=num_draws,
                                   num_burnin=num_burnin, max_draws=max_draws, step_size=LLC_SETTINGS["step_size"],
                                   nbeta=LLC_SETTINGS["nbeta"], localization=LLC_SETTINGS["localization"],
                                   batch_size=LLC_SETTINGS["batch_size"], seed=seed, device="cpu", progress=progress)
            return {"estimate": est.to_dict(), "moved": float(torch.sqrt(((W1 - W) ** 2).sum() + ((b1 - b) ** 2).sum())),
                    "pop_loss": float(population_loss(W, b))}

        res = cache.cached("tms_kgon_llc", cfg, compute)
        res["theory"] = kgon_llc(k, c, pos)
        res["c"] = c
        out[name] = res
    return out


#: Short keys of :data:`LLC_KGONS`' k-gons, used in the column names of :func:`kgon_llc_row`.
LLC_KEYS = {"6": "6", "5+": "5p", "5-": "5m", "5 (c=5)": "5c5"}


def _draw_plan(num_draws, num_burnin, max_draws) -> tuple:
    """``(num_burnin, max_draws)`` for :func:`slt_companion.llc.estimate_llc`: ``"auto"`` draws take a budget
    (default ``LLC_SETTINGS["max_draws"]``, 400 in quick mode) and no burn-in count; a fixed count takes a burn-in
    (default half the draws) and no budget."""
    from . import config

    if num_draws == "auto":
        if num_burnin is not None:
            raise ValueError("num_burnin must be None with num_draws='auto' (the burn-in is the first half of the run)")
        return None, config.size(LLC_SETTINGS["max_draws"], 400) if max_draws is None else int(max_draws)
    if max_draws is not None:
        raise ValueError("max_draws is the budget of num_draws='auto'; with a fixed num_draws leave it None")
    return (int(num_draws) // 2 if num_burnin is None else int(num_burnin)), None


def kgon_at_minimum(name: str, x: torch.Tensor):
    """The k-gon ``name`` of :data:`LLC_KGONS` (dead biases −1), moved to the nearby minimum of the empirical loss
    on the inputs ``x`` (:func:`empirical_minimum`): the centre of the book's k-gon LLC estimates, as a
    :class:`~slt_companion.models.ToyModelOfSuperposition`."""
    from .models import ToyModelOfSuperposition

    if name not in LLC_KGONS:
        raise ValueError(f"name must be one of {list(LLC_KGONS)}, got {name!r}")
    c, k, pos, neg = LLC_KGONS[name]
    if x.ndim != 2 or x.shape[1] != c:
        raise ValueError(f"x must be (n, {c}) inputs of the c = {c} model for the {name}-gon, got {tuple(x.shape)}")
    W, b = k_gon(k, c, positive=pos, negative=neg, negative_bias=-1.0)
    return ToyModelOfSuperposition.from_params(*empirical_minimum(W, b, x))


def kgon_replica_settings() -> dict:
    """The settings of the k-gon λ̂ replication over seeds in Part III's TMS chapters (one definition, so that both
    chapters share its cache entries): :data:`LLC_SETTINGS` with ``negative_bias`` −1, 4 chains (2 with
    ``SLT_QUICK=1``) sampled until converged (``num_draws="auto"``) within ``max_draws`` kept draws. Pass
    ``num_chains``, ``num_draws`` and ``max_draws`` to :func:`kgon_llc_row`; the whole dict is the replication's
    ``config``."""
    from . import config

    S = LLC_SETTINGS
    return dict(n=S["n"], nbeta=S["nbeta"], localization=S["localization"], step_size=S["step_size"],
                batch_size=S["batch_size"], negative_bias=-1.0, num_chains=config.size(4, 2), num_draws="auto",
                max_draws=_draw_plan("auto", None, None)[1])


def kgon_llc_row(seed: int, *, num_chains: int, num_draws: int | str = "auto", num_burnin: int | None = None,
                 max_draws: int | None = None, names=None, step_size: float | None = None,
                 progress: bool = False) -> dict:
    r"""One seed of a replication of :func:`kgon_llc_table`: :math:`\hat\lambda` at the k-gons of :data:`LLC_KGONS`
    with a *fresh data set* (:func:`slt_companion.data.tms_data` drawn with ``seed``) and chains seeded with ``seed``.

    The k-gons themselves are fixed; each is moved to the nearby minimum of that data set's :math:`L_n`
    (:func:`empirical_minimum`). The settings are :data:`LLC_SETTINGS` (``negative_bias`` −1, as in the table;
    ``num_draws``, ``num_burnin`` and ``max_draws`` as in :func:`kgon_llc_table`; ``step_size`` overrides the
    SGLD step, e.g. to check its discretisation bias); the
    k-gons that share a feature count :math:`c` are sampled together with :func:`slt_companion.llc.estimate_llcs`
    (checkpoints as chains: the same numbers as one at a time). Returns a flat row for
    :func:`slt_companion.replicate.replicate`: for each k-gon key ``K`` (:data:`LLC_KEYS`) ``lam_K`` (λ̂), ``sem_K``,
    ``rhat_K``, ``ess_K`` and ``conv_K`` (whether its chains converged; an unconverged estimate also raises the usual
    :class:`~slt_companion.convergence.LLCConvergenceWarning`). Used by the replications of Part III's TMS chapters.
    """
    from .data import tms_data
    from .llc import estimate_llcs

    names = list(LLC_KGONS) if names is None else list(names)
    unknown = [nm for nm in names if nm not in LLC_KGONS]
    if unknown:
        raise ValueError(f"names must be among {list(LLC_KGONS)}, got {unknown}")
    num_burnin, max_draws = _draw_plan(num_draws, num_burnin, max_draws)
    est = {}
    for c in sorted({LLC_KGONS[nm][0] for nm in names}, reverse=True):
        group = [nm for nm in names if LLC_KGONS[nm][0] == c]
        data = tms_data(LLC_SETTINGS["n"], c, seed=seed)
        models = [kgon_at_minimum(name, data.x) for name in group]
        ests = estimate_llcs(models, tms_loss, data.xy, num_chains=num_chains, num_draws=num_draws,
                             num_burnin=num_burnin, max_draws=max_draws,
                             step_size=LLC_SETTINGS["step_size"] if step_size is None else step_size,
                             nbeta=LLC_SETTINGS["nbeta"], localization=LLC_SETTINGS["localization"],
                             batch_size=LLC_SETTINGS["batch_size"],
                             seed=seed, device="cpu", progress=progress)
        est |= dict(zip(group, ests))
    stats = {"lam": "mean", "sem": "sem", "rhat": "rhat", "ess": "ess", "conv": "converged"}
    return {f"{col}_{LLC_KEYS[nm]}": getattr(est[nm], attr) for nm in names for col, attr in stats.items()}


def classify_trajectory(W, b, **kwargs) -> list:
    """:func:`classify_kgon` at every checkpoint: ``W`` (T, 2, c), ``b`` (T, c) -> list of :class:`KGonMatch`."""
    W, b = np.asarray(W), np.asarray(b)
    if W.ndim != 3 or b.ndim != 2 or W.shape[0] != b.shape[0]:
        raise ValueError(f"W must be (T, 2, c) and b (T, c) with the same T; got {W.shape} and {b.shape}")
    return [classify_kgon(torch.from_numpy(W[t]), torch.from_numpy(b[t]), **kwargs) for t in range(W.shape[0])]


def plateaus(matches, *, tol: float = 0.15, min_stay: int = 2) -> list[str]:
    r"""The k-gons a trajectory *rests at*, in order: runs of at least ``min_stay`` consecutive checkpoints whose
    :class:`KGonMatch` has ``distance < tol`` and the same name (a run of another name in between ends it).

    Consecutive visits to the same k-gon are merged. The transitions of a run are the consecutive pairs
    (:func:`count_transitions`).
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    min_stay = check_int("min_stay", min_stay)
    out: list[str] = []
    run_name, run_len = None, 0
    for m in list(matches) + [None]:
        name = m.name if (m is not None and m.distance < tol) else None
        if name == run_name and name is not None:
            run_len += 1
            continue
        if run_name is not None and run_len >= min_stay and (not out or out[-1] != run_name):
            out.append(run_name)
        run_name, run_len = name, 1
    return out


def count_transitions(plateau_lists) -> dict:
    """Count the transitions ``"A->B"`` between consecutive plateaus over many runs (:func:`plateaus`)."""
    counts: dict = {}
    for seq in plateau_lists:
        for a, b_ in zip(seq[:-1], seq[1:]):
            counts[f"{a}->{b_}"] = counts.get(f"{a}->{b_}", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def sample_posterior(n: int, *, num_chains: int = 64, n_features: int = 6, steps: int = 20_000,
                     step_scale: float = 0.1, prior_std: float = 1.0, num_samples: int = 10, seed: int = 0,
                     progress: bool = True) -> dict:
    r"""Sample the TMS posterior :math:`p(w\mid D_n)\propto\varphi(w)\,e^{-nL_n(w)}` with many Langevin chains.

    Chain ``j`` has its own data set :math:`D_n` (:func:`slt_companion.data.tms_data`, seed
    ``seed * 100003 + 7919 n + j``: other data for every chain, seed and :math:`n`) and
    starts from the prior :math:`\varphi = \mathcal N(0, \text{prior\_std}^2 I)` on all :math:`3c` parameters.
    Unadjusted Langevin, full batch: :math:`w \leftarrow w - \frac\varepsilon2\nabla U(w) + \sqrt\varepsilon\,\xi`,
    :math:`U = nL_n(w) + \|w\|^2/(2\,\text{prior\_std}^2)`, :math:`\varepsilon = ` ``step_scale``:math:`/n`.
    The empirical loss is evaluated exactly from sorted sufficient statistics in :math:`O(c^2\log n)` per chain and
    step (so large ``n`` costs no more than small). ``num_samples`` states are kept, evenly spaced over the last
    half of the ``steps``. Float64, CPU,
    deterministic for a fixed ``seed``. Returns ``W`` (chains, samples, 2, c), ``b`` (chains, samples, c),
    ``U_final`` (chains,). Used in: Part III, "Bayesian phase transitions in the TMS".
    """
    from .data import tms_data

    n, R, c = check_int("n", n), check_int("num_chains", num_chains), check_int("n_features", n_features)
    steps, num_samples = check_int("steps", steps), check_int("num_samples", num_samples)
    if not step_scale > 0 or not prior_std > 0:
        raise ValueError(f"step_scale and prior_std must be > 0, got {step_scale!r}, {prior_std!r}")
    _check_kept(num_samples, steps)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + n)
    X = torch.stack([tms_data(n, c, seed=int(seed) * 100_003 + 7919 * n + j, dtype=torch.float64).x
                     for j in range(R)])
    W = torch.randn(R, 2, c, generator=gen, dtype=torch.float64) * prior_std
    b = torch.randn(R, c, generator=gen, dtype=torch.float64) * prior_std
    eps = float(step_scale) / n
    keep = set(np.linspace(steps // 2, steps, num_samples).round().astype(int).tolist())
    Ws, bs = [], []
    it = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"Langevin, n={n}, {R} chains", mininterval=1.0)
    with cpu_threads(1):
        U = _langevin_loop(it, W, b, _SortedData(X), n, eps, prior_std, gen, step_scale, keep, Ws, bs)
    return {"W": torch.stack(Ws, 1).numpy(), "b": torch.stack(bs, 1).numpy(), "U_final": U.detach().numpy()}


def _langevin_loop(it, W, b, data, n, eps, prior_std, gen, step_scale, keep, Ws, bs):
    for t in it:
        L, gW, gb = data.loss_and_grad(W, b)          # U = n L + ||w||² / (2 prior_std²), its gradient by hand
        U = n * L + ((W ** 2).sum((-1, -2)) + (b ** 2).sum(-1)) / (2 * prior_std ** 2)
        gW, gb = n * gW + W / prior_std ** 2, n * gb + b / prior_std ** 2
        with torch.no_grad():
            W = W - 0.5 * eps * gW + math.sqrt(eps) * torch.randn(W.shape, generator=gen, dtype=torch.float64)
            b = b - 0.5 * eps * gb + math.sqrt(eps) * torch.randn(b.shape, generator=gen, dtype=torch.float64)
        if not torch.isfinite(W).all():
            raise FloatingPointError(f"Langevin diverged at step {t} (n={n}); lower step_scale (now {step_scale})")
        if t in keep:
            Ws.append(W.clone())
            bs.append(b.clone())
    return U


def draw_configuration(W, b, ax=None, *, title: str | None = None, annotate: bool = True):
    """Draw the columns of ``W`` (``2 × c``) as arrows from the origin, coloured by the sign of their bias.

    Live features with negative bias in blue, positive in vermillion, zero in grey; dead features (norm < 0.5)
    as dots at the origin, listed with their bias in the corner. The title defaults to :func:`classify_kgon`'s
    name and distance. Returns the axes.
    """
    from . import plot as slt_plot

    W, b = _as_params(W, b)
    W, b = W.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    if ax is None:
        _, ax = slt_plot.new_figure(width=3.4, height=3.4)
    match = classify_kgon(torch.from_numpy(W), torch.from_numpy(b))
    lim = max(1.8, float(np.abs(W).max()) * 1.25)
    theta = np.linspace(0, 2 * np.pi, 200)
    for i in range(W.shape[1]):
        col = slt_plot.COLORS["estimate"] if b[i] < -0.02 else (slt_plot.COLORS["theory"] if b[i] > 0.02
                                                                 else slt_plot.COLORS["muted"])
        if np.linalg.norm(W[:, i]) >= 0.5:
            ax.annotate("", xy=(W[0, i], W[1, i]), xytext=(0, 0),
                        arrowprops=dict(arrowstyle="-|>", color=col, lw=1.6))
            if annotate:
                ax.text(W[0, i] * 1.12, W[1, i] * 1.12, f"{i + 1}", ha="center", va="center", fontsize=9)
        else:
            ax.plot(W[0, i], W[1, i], "o", color=col, ms=4)
    if match.k >= 2 and match.k <= 8:
        ax.plot(_radius_bias(match.k)[0] * np.cos(theta), _radius_bias(match.k)[0] * np.sin(theta),
                color=slt_plot.COLORS["muted"], lw=0.6, ls=":")
    dead = [f"{i + 1}: b={b[i]:+.2f}" for i in range(W.shape[1]) if i not in match.live]
    if dead and annotate:
        ax.text(0.02, 0.02, "dead " + ", ".join(dead), transform=ax.transAxes, fontsize=7.5, va="bottom")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("hidden dim 1")
    ax.set_ylabel("hidden dim 2")
    ax.set_title(title if title is not None else f"{match.pretty}-gon (distance {match.distance:.2f})")
    return ax


class _SortedData:
    r"""Sufficient statistics of TMS data sets for an exact, O(c² log n) empirical loss.

    With :math:`x = \mu e_a`, :math:`nL_n = \sum_a\sum_{i:a_i=a}\sum_j(\mu_i\delta_{aj} - \mathrm{ReLU}(\mu_i G_{aj} + b_j))^2`.
    For each :math:`(a, j)` the ReLU is on for :math:`\mu` on one side of :math:`t = -b_j/G_{aj}`, so the inner sum is
    :math:`\delta\sum\mu^2 + a_2 S_2 + a_1 S_1 + a_0 S_0` with :math:`S_p = \sum_{\text{on}}\mu^p` read off prefix sums of
    the sorted :math:`\mu`'s (the same algebra as :func:`population_loss`, with empirical moments).
    """

    def __init__(self, X: torch.Tensor):   # X (R, n, c), one-hot rows
        R, n, c = X.shape
        mu, a = X.max(-1)                  # (R, n)
        self.R, self.n, self.c = R, n, c
        m = torch.stack([(a == k).sum(1) for k in range(c)], 1)          # (R, c)
        M = int(m.max())
        vals = torch.full((R, c, M), float("inf"), dtype=torch.float64)
        for k in range(c):
            sel = torch.where(a == k, mu, torch.full_like(mu, float("inf")))
            srt = torch.sort(sel, 1).values[:, :M]
            vals[:, k, :srt.shape[1]] = srt
        self.sorted = vals                                                # (R, c, M), inf padded
        finite = torch.where(torch.isfinite(vals), vals, torch.zeros_like(vals))
        z = torch.zeros(R, c, 1, dtype=torch.float64)
        self.P = [torch.cat([z, torch.cumsum(finite ** p if p else torch.isfinite(vals).double(), -1)], -1)
                  for p in range(3)]                                      # (R, c, M+1)
        self.m = m
        tot = m[:, :, None].expand(R, c, c)
        self.totals = [torch.gather(P, 2, tot) for P in self.P]           # S_p over all of a's samples, (R, c, c)
        self.delta = torch.eye(c, dtype=torch.float64)

    def _terms(self, W: torch.Tensor, b: torch.Tensor):
        """What :meth:`loss` and :meth:`loss_and_grad` share: ``d`` = δ − G (:math:`G = W^\top W`), ``beta``
        (:math:`b_j` at every ``(a, j)``), ``delta`` and the :math:`S_p` of the samples where the ReLU is on."""
        G = W.transpose(-1, -2) @ W                                        # (R, c_a, c_j)
        beta = b[:, None, :].expand_as(G)
        delta = self.delta.to(W.dtype).expand_as(G)
        pos, neg = G > 0, G < 0
        safe = torch.where(G == 0, torch.ones_like(G), G)
        t = (-beta / safe).detach().clamp(-1.0, 2.0)
        idx = torch.searchsorted(self.sorted, t.contiguous(), right=True)  # (R, c_a, c_j): #{mu <= t}
        S = []
        for P, total in zip(self.P, self.totals):
            below = torch.gather(P, 2, idx)
            on_pos = total - below
            on = torch.where(pos, on_pos, torch.where(neg, below, torch.where(beta > 0, total, torch.zeros_like(total))))
            S.append(on)
        return delta - G, beta, delta, S

    def _loss(self, d, beta, delta, S) -> torch.Tensor:
        """:math:`L_n` from :meth:`_terms`: ``d`` = δ − G, ``beta``, ``delta`` and the :math:`S_p`."""
        a2 = d * d - delta * delta
        a1 = -2.0 * d * beta
        a0 = beta * beta
        per = delta * self.totals[2] + a2 * S[2] + a1 * S[1] + a0 * S[0]
        return per.sum((-1, -2)) / self.n

    def loss(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Empirical loss :math:`L_n` of each chain: W (R, 2, c), b (R, c) -> (R,)."""
        return self._loss(*self._terms(W, b))

    def loss_and_grad(self, W: torch.Tensor, b: torch.Tensor):
        r""":meth:`loss` and its gradients ``(L (R,), ∂L/∂W (R, 2, c), ∂L/∂b (R, c))``, by hand: the :math:`S_p` are
        constant between the ReLU's switching points, so with :math:`d = \delta - G`,
        :math:`n\,\partial L/\partial G = -2dS_2 + 2\beta S_1`, :math:`n\,\partial L/\partial\beta = -2dS_1 + 2\beta S_0`,
        :math:`\partial L/\partial W = W(\partial_G + \partial_G^\top)` and :math:`\partial L/\partial b_j = \sum_a
        \partial L/\partial\beta_{aj}` (equal to autograd's through :meth:`loss` up to rounding, tested)."""
        d, beta, delta, S = self._terms(W, b)
        gG = (2.0 / self.n) * (beta * S[1] - d * S[2])
        gbeta = (2.0 / self.n) * (beta * S[0] - d * S[1])
        return self._loss(d, beta, delta, S), W @ (gG + gG.transpose(-1, -2)), gbeta.sum(1)


def _check_kept(num_samples: int, steps: int) -> None:
    """The states are kept at distinct steps of the last half of the run: there must be enough of them."""
    room = steps - steps // 2 + 1
    if num_samples > room:
        raise ValueError(f"num_samples={num_samples} states cannot be kept at distinct steps of the last half of "
                         f"steps={steps} (at most {room}): lower num_samples or raise steps")


def posterior_census(ladder=None, *, num_replicas: int | None = None, steps: int | None = None, m: int = 2000,
                     num_samples: int = 20, step_scale: float = 0.1, prior_std: float = 1.0, seed: int = 0,
                     near: float = 0.75, progress: bool = True) -> dict:
    r"""Which k-gon the TMS posterior sits at, as a function of :math:`n`: :func:`sample_posterior_tempered` on
    ``ladder``, every kept state named by :func:`classify_kgon`.

    Defaults: ``ladder`` = 18 values of :math:`n` geometrically from 20 to 2000 (8 with ``SLT_QUICK=1``), 16 replica
    sets × 12,000 steps (4 × 1,000), data sets of size ``m`` = 2000, 20 states kept per chain. Cached
    (:func:`slt_companion.cache.cached`). Returns ``{"ns" (the ladder, sorted), "names" (sorted), "counts" (len(ns), len(names)),
    "k_counts" (len(ns), 9) by number of live features, "k_counts_near" the same for the states within ``near`` of
    their named k-gon (the states that *sit at* a k-gon), "distance" (median distance to the named k-gon),
    "swap_rate"}`` and the sizes used.
    """
    from . import cache, config

    if ladder is None:
        ladder = np.geomspace(20, 2000, config.size(18, 8)).round()
    ladder = np.asarray(sorted(float(v) for v in np.asarray(ladder, dtype=float).reshape(-1)))  # the rows' order
    num_replicas = config.size(16, 4) if num_replicas is None else num_replicas
    steps = config.size(12_000, 1_000) if steps is None else steps
    cfg = dict(ladder=[float(v) for v in ladder], num_replicas=num_replicas, steps=steps, m=m,
               num_samples=num_samples, step_scale=step_scale, prior_std=prior_std, seed=seed)

    def compute():
        res = sample_posterior_tempered(ladder, num_replicas=num_replicas, m=m, steps=steps, num_samples=num_samples,
                                        step_scale=step_scale, prior_std=prior_std, seed=seed, progress=progress)
        R, K, S = res["W"].shape[:3]
        names, ks, dist = [], [], []
        for k in range(K):
            ms = [classify_kgon(torch.from_numpy(res["W"][r, k, s]), torch.from_numpy(res["b"][r, k, s]))
                  for r in range(R) for s in range(S)]
            names.append(",".join(x.name for x in ms))
            ks.append([x.k for x in ms])
            dist.append([x.distance for x in ms])
        return {"names": names, "k": np.array(ks), "distance": np.array(dist), "swap_rate": res["swap_rate"]}

    res = cache.cached("tms_posterior_census", cfg, compute)
    per_n = [row.split(",") for row in res["names"]]
    names = sorted({nm for row in per_n for nm in row}, key=lambda s: (-int(s.rstrip("+-")), s))
    counts = np.array([[row.count(nm) for nm in names] for row in per_n])
    k_counts = np.array([np.bincount(np.asarray(k), minlength=9)[:9] for k in res["k"]])
    k_near = np.array([np.bincount(np.asarray(k)[np.asarray(d) < near], minlength=9)[:9]
                       for k, d in zip(res["k"], res["distance"])])
    dist = np.median(np.asarray(res["distance"]), axis=1)
    return {"ns": ladder, "names": names, "counts": counts, "k_counts": k_counts, "k_counts_near": k_near,
            "near": near, "distance": dist,
            "swap_rate": np.asarray(res["swap_rate"]), "num_replicas": num_replicas, "steps": steps, "m": m,
            "num_samples": num_samples}


def crossing_n(ns, frac_a, frac_b) -> float:
    r"""The :math:`n` at which ``frac_b - frac_a`` first turns positive (for good), interpolated linearly in
    :math:`\log n`; ``nan`` if it never does. Used for the observed Bayesian transition."""
    ns = np.asarray(ns, dtype=float)
    diff = np.asarray(frac_b, dtype=float) - np.asarray(frac_a, dtype=float)
    if ns.ndim != 1 or diff.shape != ns.shape:
        raise ValueError(f"ns, frac_a and frac_b must be 1-D of the same length, got {ns.shape} and {diff.shape}")
    if len(diff) == 0 or diff[-1] <= 0:
        return float("nan")
    j = len(diff) - 1
    while j > 0 and diff[j - 1] > 0:
        j -= 1
    if j == 0:
        return float(ns[0])
    x0, x1 = math.log(ns[j - 1]), math.log(ns[j])
    y0, y1 = diff[j - 1], diff[j]
    return float(math.exp(x0 + (0 - y0) * (x1 - x0) / (y1 - y0)))


def sample_posterior_tempered(ladder, *, num_replicas: int = 16, m: int = 2000, n_features: int = 6,
                              steps: int = 20_000, swap_every: int = 10, step_scale: float = 0.1,
                              prior_std: float = 1.0, num_samples: int = 20, seed: int = 0,
                              progress: bool = True) -> dict:
    r"""Replica-exchange Langevin for the TMS posteriors :math:`p_k(w)\propto\varphi(w)\,e^{-n_k L_m(w)}` at every
    :math:`n_k` of ``ladder`` at once (parallel tempering).

    ``num_replicas`` independent replica sets, each with its own data set of size ``m``
    (:func:`slt_companion.data.tms_data`) shared by its temperatures; prior :math:`\mathcal N(0, \text{prior\_std}^2)`;
    unadjusted Langevin with :math:`\varepsilon_k = ` ``step_scale``:math:`/n_k`; every ``swap_every`` steps,
    neighbouring temperatures propose to swap states and accept with probability
    :math:`\min(1, e^{(n_{k+1}-n_k)(L_m(w_{k+1}) - L_m(w_k))})` (alternating even/odd pairs), so that states found
    at high temperature (small :math:`n`, where the chains cross between k-gons freely) reach the low ones.
    Varying the inverse temperature :math:`n_k` on a fixed data set stands in for varying the sample size; the two
    agree up to the fluctuation of :math:`L_m` around :math:`L`. Returns ``W`` (replicas, len(ladder), samples,
    2, c), ``b``, and ``swap_rate`` (len(ladder) - 1,). Deterministic for a fixed ``seed``.
    """
    from .data import tms_data

    ladder = np.asarray(sorted(float(v) for v in ladder))
    if ladder.ndim != 1 or len(ladder) < 2 or ladder[0] <= 0:
        raise ValueError(f"ladder must hold at least two positive inverse temperatures, got {ladder!r}")
    R, c, m = check_int("num_replicas", num_replicas), check_int("n_features", n_features), check_int("m", m)
    steps, swap_every = check_int("steps", steps), check_int("swap_every", swap_every)
    num_samples = check_int("num_samples", num_samples)
    if not step_scale > 0 or not prior_std > 0:
        raise ValueError(f"step_scale and prior_std must be > 0, got {step_scale!r}, {prior_std!r}")
    _check_kept(num_samples, steps)
    K = len(ladder)
    gen = torch.Generator().manual_seed(int(seed) + 12345)
    X = torch.stack([tms_data(m, c, seed=int(seed) * 100_003 + 31 + j, dtype=torch.float64).x for j in range(R)])
    X = X[:, None].expand(R, K, m, c).reshape(R * K, m, c)
    data = _SortedData(X)
    nk = torch.tensor(ladder, dtype=torch.float64).repeat(R)              # (R*K,)
    eps = float(step_scale) / nk
    W = torch.randn(R * K, 2, c, generator=gen, dtype=torch.float64) * prior_std
    b = torch.randn(R * K, c, generator=gen, dtype=torch.float64) * prior_std
    keep = set(np.linspace(steps // 2, steps, num_samples).round().astype(int).tolist())
    Ws, bs = [], []
    accepted = np.zeros(K - 1)
    proposed = np.zeros(K - 1)
    it = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"parallel tempering, {R} x {K} chains", mininterval=1.0)
    parity = 0
    with cpu_threads(1):
        for t in it:
            L, gW, gb = data.loss_and_grad(W, b)      # U = nk L + ||w||² / (2 prior_std²), its gradient by hand
            gW = nk[:, None, None] * gW + W / prior_std ** 2
            gb = nk[:, None] * gb + b / prior_std ** 2
            with torch.no_grad():
                W = W - 0.5 * eps[:, None, None] * gW + eps.sqrt()[:, None, None] * torch.randn(
                    W.shape, generator=gen, dtype=torch.float64)
                b = b - 0.5 * eps[:, None] * gb + eps.sqrt()[:, None] * torch.randn(
                    b.shape, generator=gen, dtype=torch.float64)
                if not torch.isfinite(W).all():
                    raise FloatingPointError(f"Langevin diverged at step {t}; lower step_scale (now {step_scale})")
                if t % swap_every == 0:
                    Lr = data.loss(W, b).reshape(R, K)
                    Wr, br = W.reshape(R, K, 2, c).clone(), b.reshape(R, K, c).clone()
                    for k in range(parity, K - 1, 2):
                        logp = (ladder[k + 1] - ladder[k]) * (Lr[:, k + 1] - Lr[:, k])
                        u = torch.rand(R, generator=gen, dtype=torch.float64)
                        acc = torch.log(u) < logp
                        proposed[k] += R
                        accepted[k] += int(acc.sum())
                        a_ = acc[:, None, None]
                        Wk, Wk1 = Wr[:, k].clone(), Wr[:, k + 1].clone()
                        Wr[:, k], Wr[:, k + 1] = torch.where(a_, Wk1, Wk), torch.where(a_, Wk, Wk1)
                        bk, bk1 = br[:, k].clone(), br[:, k + 1].clone()
                        br[:, k], br[:, k + 1] = torch.where(acc[:, None], bk1, bk), torch.where(acc[:, None], bk, bk1)
                    parity = 1 - parity
                    W, b = Wr.reshape(R * K, 2, c), br.reshape(R * K, c)
                if t in keep:
                    Ws.append(W.reshape(R, K, 2, c).clone())
                    bs.append(b.reshape(R, K, c).clone())
    return {"W": torch.stack(Ws, 2).numpy(), "b": torch.stack(bs, 2).numpy(), "ladder": ladder,
            "swap_rate": accepted / np.maximum(proposed, 1)}
