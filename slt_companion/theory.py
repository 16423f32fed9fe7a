r"""Closed forms from the literature.

- :func:`free_energy` -- Watanabe's asymptotic expansion of the Bayes free energy.
- :func:`bic` -- the Bayesian information criterion (correct for regular models only).
- :func:`rrr_rlct` -- the learning coefficient of reduced-rank regression (Aoyagi & Watanabe 2005).
- :func:`dln_rlct` -- the learning coefficient of deep linear networks (Aoyagi 2024).
- :func:`bayesian_transition_n` -- where two phases' asymptotic free energies cross (internal model selection).

Both learning-coefficient functions return an :class:`~slt_companion.symbolic.RLCT` named tuple
``(lam, multiplicity)``: ``lam`` an exact :class:`sympy.Rational`, ``multiplicity`` a Python ``int``
(the order :math:`m` of the pole of the zeta function, the coefficient of :math:`-\log\log n` plus one).
Unpack it (``lam, m = rrr_rlct(...)``) or use the fields (``rrr_rlct(...).lam``).

Used in: Part I, chapters "Why deep learning is singular", "Free energy and Bayesian phase transitions",
"Learning coefficients we know exactly"; Part II, validation chapter.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from .symbolic import RLCT
from ._checks import check_int

__all__ = ["free_energy", "bic", "rrr_rlct", "dln_rlct", "bayesian_transition_n", "RLCT"]


def _check_finite(name: str, value) -> None:
    """A ValueError naming ``name`` unless ``value`` (a number or an array of them) is all finite numbers."""
    try:
        ok = bool(np.all(np.isfinite(np.asarray(value, dtype=float))))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number (or an array of them), got {value!r}")


def free_energy(n, loss, lam, multiplicity: int = 1):
    r"""Watanabe's asymptotic free energy :math:`F_n \approx nL_n(w_0) + \lambda\log n - (m-1)\log\log n`.

    Watanabe (2009), *Algebraic Geometry and Statistical Learning Theory*, Thm 6.7 (the :math:`O_p(1)`
    remainder is dropped). ``n`` may be an array; ``loss`` is :math:`L_n(w_0)` (0 for the normalised
    free energy), ``lam`` the learning coefficient :math:`\lambda`, ``multiplicity`` its order :math:`m`.
    """
    n = np.asarray(n, dtype=float)
    if np.any(~(n > 1)) or np.any(~np.isfinite(n)):
        raise ValueError(f"n must be finite and exceed 1 (log log n must be defined), got {n!r}")
    multiplicity = check_int("multiplicity", multiplicity)
    _check_finite("loss", loss)
    lam = float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number (a learning coefficient), got {lam!r}")
    out = n * loss + lam * np.log(n)
    if multiplicity > 1:
        out = out - (multiplicity - 1) * np.log(np.log(n))
    return out


def bic(n, loss, num_params: int):
    r"""The Bayesian information criterion :math:`nL_n(\hat w) + \tfrac d2\log n` (Schwarz 1978).

    Correct to :math:`O_p(1)` for regular models only; for singular models it overstates the
    complexity, :math:`d/2 > \lambda`.
    """
    n = np.asarray(n, dtype=float)
    if np.any(~(n > 0)) or np.any(~np.isfinite(n)):
        raise ValueError(f"n must be finite and positive (a sample size), got {n!r}")
    num_params = check_int("num_params", num_params, 0)
    _check_finite("loss", loss)
    return n * loss + num_params / 2 * np.log(n)


# ---------------------------------------------------------------------------------------------------
# Reduced-rank regression and deep linear networks
# ---------------------------------------------------------------------------------------------------

def rrr_rlct(in_dim: int, out_dim: int, hidden: int, true_rank: int) -> RLCT:
    r"""Learning coefficient and multiplicity of reduced-rank regression (Aoyagi & Watanabe 2005).

    The model is :math:`y = BAx + \varepsilon` with :math:`A \in \mathbb{R}^{H\times M}`, :math:`B \in \mathbb{R}^{N\times H}`
    (``in_dim`` :math:`=M`, ``hidden`` :math:`=H`, ``out_dim`` :math:`=N`, :math:`d = H(M+N)` parameters), and the
    truth is a matrix :math:`B_0A_0` of rank ``true_rank`` :math:`=r \le \min(M, N, H)`; the prior is positive at
    the truth. With the four cases of Aoyagi & Watanabe (2005), Main Theorem:

    1. :math:`N+r \le M+H`, :math:`M+r \le N+H`, :math:`H+r \le M+N`:

       - :math:`M+H+N+r` even: :math:`\lambda = \frac{2(H+r)(M+N) - (M-N)^2 - (H+r)^2}{8}`, :math:`m = 1`;
       - :math:`M+H+N+r` odd: :math:`\lambda = \frac{2(H+r)(M+N) - (M-N)^2 - (H+r)^2 + 1}{8}`, :math:`m = 2`;
    2. :math:`M+H < N+r`: :math:`\lambda = \frac{HM - Hr + Nr}{2}`, :math:`m = 1`;
    3. :math:`N+H < M+r`: :math:`\lambda = \frac{HN - Hr + Mr}{2}`, :math:`m = 1`;
    4. :math:`M+N < H+r`: :math:`\lambda = \frac{MN}{2}`, :math:`m = 1`.

    Returns
    -------
    RLCT
        named tuple ``(lam, multiplicity)``: ``lam`` a :class:`sympy.Rational`, ``multiplicity`` an ``int``.

    Raises
    ------
    ValueError
        if a dimension is not a positive integer, or ``true_rank`` is negative or exceeds
        ``min(in_dim, out_dim, hidden)`` (the truth would not be realisable).

    Examples
    --------
    >>> rrr_rlct(3, 3, 3, 0)
    RLCT(lam=7/2, multiplicity=2)

    Used in: Part I, "Learning coefficients we know exactly"; Part II, validation.
    """
    M = check_int("in_dim", in_dim)
    N = check_int("out_dim", out_dim)
    H = check_int("hidden", hidden)
    r = check_int("true_rank", true_rank, 0)
    if r > min(M, N, H):
        raise ValueError(
            f"true_rank={r} exceeds min(in_dim, out_dim, hidden) = min({M}, {N}, {H}) = {min(M, N, H)}: "
            "a rank-r truth needs at least r hidden units and r input/output dimensions"
        )
    if M + H < N + r:                       # case 2
        lam, mult = sp.Rational(H * M - H * r + N * r, 2), 1
    elif N + H < M + r:                     # case 3
        lam, mult = sp.Rational(H * N - H * r + M * r, 2), 1
    elif M + N < H + r:                     # case 4
        lam, mult = sp.Rational(M * N, 2), 1
    else:                                   # case 1: all three inequalities hold
        num = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
        if (M + H + N + r) % 2 == 0:
            lam, mult = sp.Rational(num, 8), 1
        else:
            lam, mult = sp.Rational(num + 1, 8), 2
    return RLCT(lam, mult)


def _dln_subset(ms: list[int]) -> list[int]:
    """Aoyagi's subset S: the shortest prefix (|S| = l+1, l >= 1) of the sorted M_j meeting (i)-(iii)."""
    order = sorted(ms)
    for size in range(2, len(order) + 1):
        sub, rest = order[:size], order[size:]
        ell = size - 1
        if rest and not max(sub) < min(rest):                 # (i): never splits ties
            continue
        if not sum(sub) >= ell * max(sub):                    # (ii)
            continue
        if rest and not sum(sub) < ell * min(rest):           # (iii)
            continue
        return sub
    raise RuntimeError(f"no subset satisfies Aoyagi's conditions for M = {ms}; please report this")  # pragma: no cover


def dln_rlct(widths, true_rank: int) -> RLCT:
    r"""Learning coefficient and multiplicity of a deep linear network (Aoyagi 2024, Theorem 1).

    The model is :math:`y = W_L\cdots W_1 x + \varepsilon` with :math:`W_s \in \mathbb{R}^{H^{(s+1)}\times H^{(s)}}`;
    ``widths`` :math:`= [H^{(1)}, \dots, H^{(L+1)}]` lists the input width, the hidden widths and the output
    width (so ``len(widths) = L + 1``, :math:`d = \sum_s H^{(s)}H^{(s+1)}`). The truth is a product matrix of rank
    ``true_rank`` :math:`= r \le \min_s H^{(s)}`. Let :math:`M_j = H^{(j)} - r` and let :math:`S` be the set of
    :math:`\ell+1` indices (:math:`\ell\ge1`) with

    (i) :math:`\max_{j\in S} M_j < \min_{k\notin S} M_k`, (ii) :math:`\sum_S M_j \ge \ell\max_S M_j`,
    (iii) :math:`\sum_S M_j < \ell\min_{k\notin S} M_k` (conditions on :math:`S^c` are void if :math:`S` is everything).

    With :math:`\Sigma = \sum_S M_j`, :math:`\bar M = \lceil \Sigma/\ell\rceil` and :math:`a = \Sigma - (\bar M-1)\ell`,

    .. math::
        \lambda = \frac{-r^2 + r(H^{(1)} + H^{(L+1)})}{2} + \frac{a(\ell-a)}{4\ell}
                  - \frac{\ell(\ell-1)}{4}\Big(\frac{\Sigma}{\ell}\Big)^2 + \frac12\sum_{i<j\in S} M_iM_j,
        \qquad m = a(\ell-a) + 1 .

    With one hidden layer this is :func:`rrr_rlct` (tested on a grid); with no hidden layer
    (``widths = [M, N]``) the model is regular and :math:`\lambda = MN/2`.

    Returns
    -------
    RLCT
        named tuple ``(lam, multiplicity)``: ``lam`` a :class:`sympy.Rational`, ``multiplicity`` an ``int``.

    Raises
    ------
    ValueError
        if ``widths`` has fewer than two entries or a non-positive / non-integer width, or ``true_rank``
        is negative or exceeds ``min(widths)``.

    Examples
    --------
    >>> dln_rlct([5, 4, 3, 4, 5], 2)
    RLCT(lam=9, multiplicity=2)

    Used in: Part I, "Learning coefficients we know exactly"; Part II, validation.
    """
    if isinstance(widths, (str, bytes, set, frozenset, dict)) or not hasattr(widths, "__iter__"):
        raise ValueError(f"widths must be a list of layer widths [input, hidden..., output] (in that order), got "
                         f"{widths!r}")
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"widths must list at least an input and an output width, got {widths!r}")
    widths = [check_int(f"widths[{i}]", w) for i, w in enumerate(widths)]
    r = check_int("true_rank", true_rank, 0)
    if r > min(widths):
        raise ValueError(
            f"true_rank={r} exceeds the narrowest width min(widths) = {min(widths)}: a product of matrices "
            "has rank at most its narrowest layer"
        )
    ms = [w - r for w in widths]
    sub = _dln_subset(ms)
    ell = len(sub) - 1
    total = sum(sub)
    m_bar = -(-total // ell)                 # ceil(total / ell) in integers
    a = total - (m_bar - 1) * ell
    pairs = sum(sub[i] * sub[j] for i in range(len(sub)) for j in range(i + 1, len(sub)))
    lam = (sp.Rational(-r * r + r * (widths[0] + widths[-1]), 2)
           + sp.Rational(a * (ell - a), 4 * ell)
           - sp.Rational(ell * (ell - 1), 4) * sp.Rational(total, ell) ** 2
           + sp.Rational(pairs, 2))
    return RLCT(sp.Rational(lam), int(a * (ell - a) + 1))


def bayesian_transition_n(loss_a, lam_a, loss_b, lam_b, *, multiplicity_a: int = 1, multiplicity_b: int = 1,
                          const_a: float = 0.0, const_b: float = 0.0) -> float:
    r"""The sample size at which the posterior switches from phase *a* to phase *b* (internal model selection).

    Each phase (a region of parameter space around a critical point) has local free energy
    :math:`F_\alpha(n) = nL_\alpha + \lambda_\alpha\log n - (m_\alpha-1)\log\log n + c_\alpha` (Watanabe 2009;
    Chen et al. 2023, "Dynamical versus Bayesian phase transitions"). With :math:`L_b < L_a` and
    :math:`\lambda_b > \lambda_a` the simpler phase *a* wins at small :math:`n` and the more accurate phase *b* at
    large :math:`n`; this returns the crossing :math:`n_c > e` of :math:`F_a = F_b` after which *b* wins for good
    (the last one, where the curves cross several times; solved by bisection in :math:`\log n`, relative accuracy
    1e-12). ``const_*`` are the :math:`O(1)` terms; with them (or the multiplicities) a transition can exist with
    :math:`\lambda_b \le \lambda_a` too. Only :math:`L_b < L_a` is required.

    Example (Chen et al. 2023, TMS with c = 6, 5-gon -> 6-gon): ``bayesian_transition_n(0.06874, 7, 0.04819, 8.5,
    const_b=2.7535)`` is about 601 (445 without the constant).

    Used in: Part I, "Free energy and Bayesian phase transitions".
    """
    for name, val in (("loss_a", loss_a), ("lam_a", lam_a), ("loss_b", loss_b), ("lam_b", lam_b),
                      ("const_a", const_a), ("const_b", const_b)):
        if not np.isfinite(float(val)):
            raise ValueError(f"{name} must be a finite number, got {val!r}")
    multiplicity_a, multiplicity_b = check_int("multiplicity_a", multiplicity_a), check_int("multiplicity_b", multiplicity_b)
    dl, dlam = float(loss_a) - float(loss_b), float(lam_b) - float(lam_a)
    if not dl > 0:
        raise ValueError(f"phase b must have the lower loss (loss_b < loss_a), got loss_a={loss_a}, loss_b={loss_b}; "
                         "otherwise b never overtakes a")
    dm = multiplicity_a - multiplicity_b

    def gap(logn):   # F_a - F_b; positive means b is preferred
        n = math.exp(logn)
        llog = math.log(logn)
        return n * dl - dlam * logn - dm * llog + (float(const_a) - float(const_b))

    lo = 1.0 + 1e-9
    # beyond log n = T the gap only grows (its derivative e^t dl - dlam - dm/t > 0 there): once positive past T, b
    # wins for good. Search up to a positive gap past T, then take the last sign change below it.
    T = max(2.0, math.log(max(abs(dlam) + abs(dm), 1e-300) / dl) + 1e-9)
    hi = T
    while gap(hi) <= 0:
        hi *= 2.0
        if hi > 700:
            raise ValueError("no transition below n = e^700; check the inputs")
    grid = np.linspace(lo, hi, 20_000)
    vals = np.array([gap(g) for g in grid])
    neg = np.nonzero(vals <= 0)[0]
    if len(neg) == 0:
        raise ValueError("phase b has the lower free energy at every n > e (its lower loss, with the λ, multiplicity "
                         "and constant differences, already wins there); there is no transition")
    a, b = grid[neg[-1]], grid[neg[-1] + 1]
    for _ in range(200):
        mid = 0.5 * (a + b)
        if gap(mid) <= 0:
            a = mid
        else:
            b = mid
    return math.exp(0.5 * (a + b))
