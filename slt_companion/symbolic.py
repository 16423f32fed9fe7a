"""Exact computations with SymPy: Fisher information and (later) learning coefficients.

Used in: Part I, chapter "Why deep learning is singular".
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import sympy as sp

__all__ = ["fisher_information", "fisher_rank", "RLCT"]


class RLCT(NamedTuple):
    """A learning coefficient: ``lam`` (:math:`\\lambda`, an exact ``sympy.Rational``) and its ``multiplicity`` m."""

    lam: sp.Rational
    multiplicity: int


def _as_symbols(name: str, items, *, allow_empty: bool = False) -> tuple:
    if isinstance(items, sp.Symbol):
        items = (items,)
    try:
        items = tuple(items)
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of sympy Symbols, got {type(items).__name__}") from err
    if not items and not allow_empty:
        raise ValueError(f"{name} is empty; pass the sympy Symbols of the model's {name}")
    bad = [s for s in items if not isinstance(s, sp.Symbol)]
    if bad:
        raise TypeError(f"{name} must contain sympy Symbols only; {bad[0]!r} is a {type(bad[0]).__name__}")
    if len(set(items)) != len(items):
        raise ValueError(f"{name} lists a symbol twice: {items}")
    return items


def fisher_information(model, params: Sequence[sp.Symbol], inputs: Sequence[sp.Symbol] = (), *,
                       input_points: Iterable | None = None, noise_variance=1) -> sp.Matrix:
    r"""The Fisher information matrix of a regression model with Gaussian noise, exactly.

    For :math:`y = f(x, w) + \mathcal N(0, \sigma^2)` the Fisher information is

    .. math:: I(w)_{ij} = \frac{1}{\sigma^2}\, \mathbb E_x\big[\partial_i f(x,w)\, \partial_j f(x,w)\big],

    a Gram matrix of the functions :math:`x \mapsto \partial_i f(x, w)`; it is singular exactly where
    those functions are linearly dependent (Murfet et al. 2020, *Deep Learning is Singular, and That's Good*,
    §2; Watanabe 2009, §1.2).

    Parameters
    ----------
    model : sympy.Expr
        :math:`f(x, w)`, an expression in ``params`` and ``inputs``.
    params : sequence of sympy.Symbol
        The parameters :math:`w`, in the order of the matrix's rows and columns.
    inputs : sequence of sympy.Symbol
        The input variables :math:`x` (may be empty for a model with no input).
    input_points : iterable, optional
        Inputs at which to average: each a number (one input variable) or a tuple of numbers.
        ``None`` returns the pointwise matrix :math:`\nabla f \nabla f^\top / \sigma^2`, a function of
        ``inputs``; otherwise the exact empirical average over the points (use rationals for exactness).
    noise_variance : sympy number, default 1
        :math:`\sigma^2`.

    Returns
    -------
    sympy.Matrix, ``len(params)`` square, symmetric.
    """
    if not isinstance(model, sp.Basic):
        raise TypeError(
            f"model must be a sympy expression in the parameters and inputs, got {type(model).__name__}; "
            "build it from sympy.symbols(...), e.g. a*sympy.tanh(b*x)."
        )
    params = _as_symbols("params", params)
    inputs = _as_symbols("inputs", inputs, allow_empty=True)
    overlap = set(params) & set(inputs)
    if overlap:
        raise ValueError(f"params and inputs share {sorted(map(str, overlap))}; a symbol is one or the other")
    free = model.free_symbols
    missing = [p for p in params if p not in free]
    if missing:
        raise ValueError(
            f"params lists {[str(p) for p in missing]}, which do not appear in model; "
            f"the model's symbols are {sorted(map(str, free))}."
        )
    unknown = free - set(params) - set(inputs)
    if unknown:
        raise ValueError(
            f"model has symbols {sorted(map(str, unknown))} that are neither params nor inputs; "
            "list them in params or inputs, or substitute values for them first."
        )
    sigma2 = sp.sympify(noise_variance)
    if sigma2.is_positive is False or sigma2.is_zero:
        raise ValueError(f"noise_variance must be positive, got {noise_variance!r}")

    grad = sp.Matrix([sp.diff(model, p) for p in params])
    pointwise = grad * grad.T / sigma2
    if input_points is None:
        return pointwise

    points = list(input_points)
    if not points:
        raise ValueError("input_points is empty; pass at least one input (or None for the pointwise matrix)")
    total = sp.zeros(len(params), len(params))
    for point in points:
        values = tuple(point) if isinstance(point, (tuple, list)) else (point,)
        if len(values) != len(inputs):
            raise ValueError(
                f"input point {point!r} has {len(values)} coordinates but inputs has {len(inputs)} symbols"
            )
        total += pointwise.subs(dict(zip(inputs, map(sp.sympify, values))))
    return total / len(points)


def fisher_rank(matrix: sp.Matrix, at: dict | None = None, *, tol: float = 1e-10) -> int:
    """Rank of a (Fisher) matrix, optionally after substituting parameter values ``at``.

    Entries with transcendental functions (``tanh(3/2)``) defeat exact zero-testing, so the rank is
    taken from the singular values of a 50-digit evaluation, counting those above ``tol`` times the
    largest. Exact kernels are shown separately by multiplying with a symbolic null vector.
    """
    if not isinstance(matrix, sp.MatrixBase):
        raise TypeError(f"matrix must be a sympy Matrix, got {type(matrix).__name__}")
    m = matrix.subs(at) if at else matrix
    if m.free_symbols:
        raise ValueError(
            f"matrix still has free symbols {sorted(map(str, m.free_symbols))}; give their values in at="
        )
    import mpmath

    with mpmath.workdps(50):
        num = mpmath.matrix([[sp.N(v, 50) for v in row] for row in m.tolist()])
        sv = mpmath.svd_r(num, compute_uv=False)
        svals = [abs(s) for s in sv]
    top = max(svals) if svals else 0
    if top == 0:
        return 0
    return sum(1 for s in svals if s > tol * top)
