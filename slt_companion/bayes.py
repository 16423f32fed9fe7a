r"""Exact Bayesian computations for low-dimensional models: posteriors on grids, free energies by quadrature.

The running example is the two-parameter model of Part I,

.. math:: y = a\,b\,x + \varepsilon,\qquad x\sim\mathcal N(0,1),\ \varepsilon\sim\mathcal N(0,\sigma^2),
          \qquad (a,b)\sim \mathrm{Unif}[-B,B]^2,

whose likelihood depends on :math:`w=(a,b)` only through the product :math:`p = ab`. The set of true
parameters :math:`\{ab = p_0\}` is a hyperbola (:math:`p_0\neq0`) or the union of the two axes
(:math:`p_0=0`), so the model is singular: the Fisher information is singular on the whole true set.
Its learning coefficient is :math:`\lambda = 1/2` in both cases -- not :math:`d/2 = 1` -- with
multiplicity :math:`m = 2` at :math:`p_0 = 0` and :math:`m = 1` otherwise (Watanabe 2009, §2.4;
Murfet et al. 2020).

Because the likelihood factors through :math:`p`, the evidence is a one-dimensional integral against the
density of :math:`p` under the prior,

.. math:: Z_n = \int e^{-nK(p)}\rho(p)\,dp,\qquad \rho(p) = \frac{1}{2B^2}\log\frac{B^2}{|p|}\quad(|p|<B^2),

whose logarithmic singularity at :math:`p=0` is exactly where the :math:`\log\log n` term of the free
energy comes from. We evaluate it with Gauss--Legendre quadrature on panels graded geometrically towards
the singular point and the peak, in log-space, so it is accurate from :math:`n = 1` to :math:`n = 10^{12}`.

Used in: Part I, chapter "Why deep learning is singular".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import size

__all__ = ["ProductModel", "product_prior_density", "fit_free_energy"]

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def product_prior_density(p, prior_bound: float = 1.0):
    r"""Density of :math:`p = ab` when :math:`a, b` are independent and uniform on :math:`[-B, B]`.

    :math:`\rho(p) = \log(B^2/|p|)/(2B^2)` for :math:`0 < |p| < B^2`, zero outside.
    """
    p = np.abs(np.asarray(p, dtype=float))
    b2 = prior_bound**2
    with np.errstate(divide="ignore"):
        out = np.where((p > 0) & (p < b2), np.log(b2 / np.where(p > 0, p, 1.0)) / (2 * b2), 0.0)
    return np.where(p == 0, np.inf, out)


def _graded_breakpoints(lo: float, hi: float, centres, scales) -> np.ndarray:
    """Panel edges on [lo, hi], geometrically graded towards each centre (ratio 2, down to scale*2^-60)."""
    pts = {lo, hi}
    for c, s in zip(centres, scales):
        if not lo <= c <= hi:
            continue
        pts.add(c)
        for k in range(-60, 12):
            for sign in (-1.0, 1.0):
                x = c + sign * s * 2.0**k
                if lo < x < hi:
                    pts.add(x)
    return np.array(sorted(pts))


def _logsumexp(v: np.ndarray) -> float:
    top = np.max(v)
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.sum(np.exp(v - top))))


@dataclass(frozen=True)
class ProductModel:
    r"""The model :math:`y = abx + \mathcal N(0,\sigma^2)`, :math:`x\sim\mathcal N(0,1)`, uniform prior on :math:`[-B,B]^2`.

    Attributes
    ----------
    true_product : float
        :math:`p_0 = a_0 b_0`, the truth. ``0`` puts the truth at the crossing of the two axes.
    noise_std : float
        :math:`\sigma`.
    prior_bound : float
        :math:`B`.
    """

    true_product: float = 0.0
    noise_std: float = 1.0
    prior_bound: float = 1.0

    def __post_init__(self):
        if not (self.noise_std > 0 and math.isfinite(self.noise_std)):
            raise ValueError(f"noise_std must be positive and finite, got {self.noise_std!r}")
        if not (self.prior_bound > 0 and math.isfinite(self.prior_bound)):
            raise ValueError(f"prior_bound must be positive and finite, got {self.prior_bound!r}")
        if not abs(self.true_product) < self.prior_bound**2:
            raise ValueError(
                f"true_product={self.true_product!r} is outside the prior's range of a*b, "
                f"(-{self.prior_bound**2}, {self.prior_bound**2}); raise prior_bound or lower true_product"
            )

    # ---- losses -------------------------------------------------------------------------------
    def population_loss(self, a, b):
        r""":math:`K(a,b) = \mathbb E_x[(ab-p_0)^2x^2]/(2\sigma^2) = (ab-p_0)^2/(2\sigma^2)` (a KL divergence)."""
        p = np.asarray(a, dtype=float) * np.asarray(b, dtype=float)
        return (p - self.true_product) ** 2 / (2 * self.noise_std**2)

    def sample(self, n: int, seed: int = 0):
        """Draw ``n`` pairs ``(x, y)`` from the true distribution (NumPy, deterministic in ``seed``)."""
        n = _check_n(n)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(n)
        y = self.true_product * x + self.noise_std * rng.standard_normal(n)
        return x, y

    def _energy(self, p, n: int, data):
        """:math:`n(L_n(p) - L_n(p_0))` (data) or :math:`nK(p)` (``data=None``), as a function of ``p``."""
        p = np.asarray(p, dtype=float)
        p0, s2 = self.true_product, self.noise_std**2
        if data is None:
            return n * (p - p0) ** 2 / (2 * s2)
        x, y = _check_data(data, n)
        sxx, sxy = float(np.dot(x, x)), float(np.dot(x, y))
        return ((p**2 - p0**2) * sxx - 2 * (p - p0) * sxy) / (2 * s2)

    # ---- posterior ----------------------------------------------------------------------------
    def posterior_grid(self, n: int, *, grid_size: int | None = None, data=None):
        r"""The posterior density :math:`p(a,b\mid D_n)\propto e^{-nL_n(ab)}\varphi(a,b)` on a square grid.

        Returns ``(a, b, density)`` with ``a``, ``b`` 1-D grids over :math:`[-B,B]` and ``density`` of
        shape ``(len(b), len(a))`` normalised to integrate to one on the grid. ``data=None`` uses the
        population loss :math:`K` (the "average" posterior).
        """
        n = _check_n(n)
        g = grid_size if grid_size is not None else size(401, 121)
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 2:
            raise ValueError(f"grid_size must be an integer ≥ 2 (points per axis), got {grid_size!r}")
        a = np.linspace(-self.prior_bound, self.prior_bound, int(g))
        A, Bm = np.meshgrid(a, a)
        energy = self._energy(A * Bm, n, data)
        logd = -(energy - energy.min())
        dens = np.exp(logd)
        da = a[1] - a[0]
        dens /= dens.sum() * da * da
        return a, a.copy(), dens

    # ---- free energy --------------------------------------------------------------------------
    def free_energy(self, n: int, *, data=None) -> float:
        r"""The normalised Bayes free energy :math:`F^0_n = -\log\int e^{-n(L_n(w)-L_n(w_0))}\varphi(w)\,dw`.

        With ``data=None`` the population loss :math:`K` replaces :math:`L_n - L_n(w_0)`. Watanabe's
        theorem: :math:`F^0_n = \lambda\log n - (m-1)\log\log n + O_p(1)`. Computed by graded
        Gauss--Legendre quadrature over :math:`p = ab` (see the module docstring); relative error
        below 1e-10 for the settings in the book (checked against a brute-force 2-D grid in the tests).
        """
        n = _check_n(n)
        b2 = self.prior_bound**2
        if data is None:
            peak = self.true_product
            curvature = n / self.noise_std**2
        else:
            x, y = _check_data(data, n)
            sxx = float(np.dot(x, x))
            peak = float(np.dot(x, y)) / sxx
            curvature = sxx / self.noise_std**2
        width = 1.0 / math.sqrt(curvature)
        edges = _graded_breakpoints(-b2, b2, [0.0, float(np.clip(peak, -b2, b2))], [b2, width])
        lo, hi = edges[:-1], edges[1:]
        half = (hi - lo)[:, None] / 2
        nodes = (lo[:, None] + hi[:, None]) / 2 + half * _GL_NODES[None, :]
        weights = half * _GL_WEIGHTS[None, :]
        with np.errstate(divide="ignore"):
            log_f = np.log(weights) + np.log(product_prior_density(nodes, self.prior_bound)) \
                - self._energy(nodes, n, data)
        return -_logsumexp(log_f.ravel())


def fit_free_energy(ns, free_energies, *, multiplicity: int | None = None) -> dict:
    r"""Least-squares fit of :math:`F_n = \lambda\log n - (m-1)\log\log n + c`.

    With ``multiplicity=None`` both :math:`\lambda` and :math:`m` are fitted (three unknowns); with
    ``multiplicity`` given, only :math:`\lambda` and :math:`c`. Returns a dict with ``lam``,
    ``multiplicity`` (a float when fitted), ``intercept`` and ``residual_rms``. Use ``n`` large enough
    that the :math:`O(1)` remainder has settled (say :math:`n\ge 10^3`).
    """
    ns = np.asarray(ns, dtype=float)
    f = np.asarray(free_energies, dtype=float)
    if ns.shape != f.shape or ns.ndim != 1:
        raise ValueError(f"ns and free_energies must be 1-D of equal length, got {ns.shape} and {f.shape}")
    if np.any(ns <= math.e):
        raise ValueError("every n must exceed e so that log log n is defined and positive")
    logn, loglog = np.log(ns), np.log(np.log(ns))
    if multiplicity is None:
        if len(ns) < 4:
            raise ValueError("fitting lambda and m needs at least 4 values of n")
        X = np.stack([logn, -loglog, np.ones_like(logn)], axis=1)
        coef, *_ = np.linalg.lstsq(X, f, rcond=None)
        lam, m_minus_1, c = coef
        m = 1.0 + m_minus_1
        resid = f - X @ coef
    else:
        X = np.stack([logn, np.ones_like(logn)], axis=1)
        target = f + (multiplicity - 1) * loglog
        coef, *_ = np.linalg.lstsq(X, target, rcond=None)
        lam, c = coef
        m = multiplicity
        resid = target - X @ coef
    return {"lam": float(lam), "multiplicity": m, "intercept": float(c),
            "residual_rms": float(np.sqrt(np.mean(resid**2)))}


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer (the sample size), got {n!r}")
    return int(n)


def _check_data(data, n: int):
    try:
        x, y = data
    except (TypeError, ValueError) as err:
        raise ValueError("data must be a pair (x, y) of 1-D arrays, e.g. from ProductModel.sample(n)") from err
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != (n,) or y.shape != (n,):
        raise ValueError(f"data must hold n={n} samples: got x.shape={x.shape}, y.shape={y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("data contains NaN or infinite values")
    return x, y
