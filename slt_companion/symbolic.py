"""Exact computations with SymPy: Fisher information and learning coefficients.

- :func:`fisher_information`, :func:`fisher_rank` -- the (degenerate) Fisher information of a model;
- :func:`rlct` -- the learning coefficient and multiplicity of a polynomial K at 0 (normal crossings,
  Newton non-degenerate polynomials, sums of squares; monomial priors), or a clear refusal;
- :func:`newton_polyhedron`, :func:`blow_up`, :func:`normal_crossing` -- the tools to resolve a singularity by hand.

Used in: Part I, chapters "Why deep learning is singular", "The learning coefficient", "Resolving singularities",
"Learning coefficients we know exactly".
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations
from math import gcd
from typing import Iterable, NamedTuple, Sequence

import numpy as np
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
    try:
        sigma2 = sp.sympify(noise_variance)
    except (sp.SympifyError, TypeError) as err:
        raise ValueError(f"noise_variance must be a positive number or sympy expression, got {noise_variance!r}") from err
    if sigma2.has(sp.nan, sp.zoo, sp.oo, -sp.oo) or sigma2.is_finite is False or sigma2.is_positive is False \
            or sigma2.is_zero:
        raise ValueError(f"noise_variance must be a finite positive number (σ², or a positive sympy symbol), "
                         f"got {noise_variance!r}")

    grad = sp.Matrix([sp.diff(model, p) for p in params])
    pointwise = grad * grad.T / sigma2
    if input_points is None:
        return pointwise

    if isinstance(input_points, (str, bytes, sp.Basic)) or not hasattr(input_points, "__iter__"):
        raise ValueError(f"input_points must be a list of input points (numbers, or tuples of one number per "
                         f"input symbol), got {input_points!r}")
    points = list(input_points)
    if not points:
        raise ValueError("input_points is empty; pass at least one input (or None for the pointwise matrix)")
    total = sp.zeros(len(params), len(params))
    for point in points:
        if isinstance(point, np.ndarray):                 # a row of a NumPy array of points
            point = point.tolist()
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
    taken from the singular values of a 50-digit evaluation, counting those above ``tol`` (a finite number ≥ 0)
    times the largest. Exact kernels are shown separately by multiplying with a symbolic null vector.
    """
    if not isinstance(matrix, sp.MatrixBase):
        raise TypeError(f"matrix must be a sympy Matrix, got {type(matrix).__name__}")
    from ._checks import check_positive

    check_positive("tol", tol, allow_zero=True)            # a relative cut-off: nan counted nothing, -1 everything
    m = matrix.subs(at) if at else matrix
    if 0 in m.shape:
        return 0                                    # an empty matrix (no parameters or no outputs) has rank 0
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


# ===================================================================================================
# Learning coefficients: Newton polyhedra, normal crossings, blow-ups
# ===================================================================================================
#
# Conventions. K is a polynomial in ``variables`` (real), K >= 0 near the origin and K(0) = 0. The prior is
# |c * prod_j w_j^{h_j}| near the origin (h_j > -1), i.e. 1 or a monomial. The learning coefficient (real
# log canonical threshold) lambda and its multiplicity m are defined by the largest pole -lambda (of order m)
# of the zeta function  zeta(z) = int K(w)^z phi(w) dw  over a small neighbourhood of 0 (Watanabe 2009, ch. 2).
#
# The algorithm (Varchenko 1976; Arnold, Gusein-Zade & Varchenko 1988; Lin 2011, ch. 4): let P be the Newton
# polyhedron of K, conv(supp K) + R^d_{>=0}, and v = (h_1+1, ..., h_d+1). If K is non-degenerate -- for every
# compact face sigma of P the face polynomial K_sigma has no singular zero in the real torus (R\{0})^d -- then
#     lambda = 1/t,  t = min{s : s*v in P},   m = codimension of the face of P that contains t*v.
# For K >= 0 a zero of K_sigma is automatically singular (it is a minimum), so non-degeneracy means K_sigma > 0
# on the torus; conversely K_sigma < 0 somewhere on the torus means K < 0 arbitrarily close to 0 (follow the
# curve w = (c_1 s^{a_1}, ..., c_d s^{a_d}), a in the normal cone of sigma). So deciding the sign of every
# compact face polynomial on the torus settles both the validity of the input and of the formula.

__all__ += ["rlct", "newton_polyhedron", "blow_up", "normal_crossing", "NewtonPolyhedron", "Facet", "Face",
            "BlowUp", "NormalCrossing"]


class Facet(NamedTuple):
    """A facet ``<normal, alpha> >= offset`` of a Newton polyhedron (``normal`` primitive, non-negative)."""

    normal: tuple
    offset: int


class Face(NamedTuple):
    """A compact face: its ``vertices``, its ``dim``, the support ``points`` of K on it, the face ``polynomial``, and a
    strictly positive ``normal`` with ``offset`` such that the face is ``{alpha in P : <normal, alpha> = offset}``."""

    vertices: tuple
    dim: int
    points: tuple
    polynomial: sp.Expr
    normal: tuple
    offset: int


class NewtonPolyhedron(NamedTuple):
    r"""The Newton polyhedron :math:`P = \mathrm{conv}(\mathrm{supp}\,K) + \mathbb R^d_{\ge 0}` of K, and where a ray meets it.

    ``vertices`` (exponent tuples), ``facets`` (every facet, as :class:`Facet`), ``faces`` (every *compact* face,
    of every dimension, as :class:`Face`), ``direction`` :math:`v = h + 1` (all ones for a flat prior),
    ``distance`` :math:`t` with :math:`tv` on the boundary of :math:`P`, ``hit_point`` :math:`tv`,
    ``hit_facets`` (the facets containing it) and ``hit_codim`` (the codimension of the face containing it).
    """

    variables: tuple
    vertices: tuple
    facets: tuple
    faces: tuple
    direction: tuple
    distance: sp.Rational
    hit_point: tuple
    hit_facets: tuple
    hit_codim: int


class BlowUp(NamedTuple):
    """One chart of a blow-up: the pulled-back ``K``, the ``jacobian`` determinant, the ``substitution`` made
    (old variable -> expression in the chart's coordinates) and the ``exceptional`` divisor's coordinate."""

    K: sp.Expr
    jacobian: sp.Expr
    substitution: dict
    exceptional: sp.Symbol


class NormalCrossing(NamedTuple):
    """``K = monomial * unit`` near 0: ``exponents`` of the monomial and the ``unit`` (a polynomial, non-zero at 0)."""

    exponents: tuple
    unit: sp.Expr


# ---- input checking -----------------------------------------------------------------------------

def _poly_of(K, variables, name: str = "K") -> tuple:
    """(Poly over QQ, variables) or a ValueError/TypeError that says what is wrong."""
    variables = _as_symbols("variables", variables)
    if isinstance(K, sp.Poly):
        K = K.as_expr()
    try:
        expr = sp.sympify(K)
    except (sp.SympifyError, TypeError) as err:
        raise ValueError(f"{name} must be a SymPy expression, got {K!r}") from err
    if not isinstance(expr, sp.Basic):
        raise ValueError(f"{name} must be a SymPy expression, got {type(K).__name__}")
    if expr.has(sp.Float):
        expr = sp.nsimplify(expr, rational=True)
    extra = expr.free_symbols - set(variables)
    if extra:
        raise ValueError(
            f"{name} has symbols {sorted(map(str, extra))} that are not in variables {[str(v) for v in variables]}; "
            "substitute numbers for them or list them in variables"
        )
    if not expr.is_polynomial(*variables):
        raise ValueError(
            f"{name} = {expr} is not a polynomial in {[str(v) for v in variables]}; rlct decides polynomials only "
            "(replace an analytic K by a polynomial with the same Newton polyhedron only if you can justify it)"
        )
    poly = sp.Poly(sp.expand(expr), *variables)
    if not poly.domain.is_QQ and not poly.domain.is_ZZ:
        raise ValueError(f"{name} must have rational coefficients, got coefficients in {poly.domain}")
    return poly.set_domain(sp.QQ), variables


def _check_K(K, variables) -> tuple:
    poly, variables = _poly_of(K, variables)
    if poly.is_zero:
        raise ValueError("K is identically zero; its learning coefficient is not defined (every point is a zero)")
    const = poly.as_dict().get((0,) * len(variables), 0)
    if const != 0:
        raise ValueError(
            f"K(0) = {const} is not 0: the learning coefficient is defined at a zero of K; "
            "subtract the minimum or move the origin to a true parameter"
        )
    return poly, variables


def _prior_exponents(prior, variables) -> tuple:
    """Exponents h (Rationals > -1) of a monomial prior |c * prod w_j^{h_j}|."""
    try:
        expr = sp.sympify(prior)
    except (sp.SympifyError, TypeError) as err:
        raise ValueError(f"prior must be 1 or a monomial in the variables, got {prior!r}") from err
    if isinstance(expr, sp.Basic) and expr.has(sp.Float):     # w**1.0, 0.5*w**2: read as the exact rationals
        expr = sp.nsimplify(expr, rational=True)
    h = {v: sp.Integer(0) for v in variables}
    const = sp.Integer(1)

    def walk(e, power):
        nonlocal const
        if e.is_number:
            val = sp.nsimplify(e) if e.has(sp.Float) else e
            const *= val ** power
            return
        if isinstance(e, sp.Symbol):
            if e not in h:
                raise ValueError(f"prior has a symbol {e} that is not in variables {[str(v) for v in variables]}")
            h[e] += power
            return
        if isinstance(e, sp.Abs):
            walk(e.args[0], power)
            return
        if isinstance(e, sp.Pow) and e.exp.is_number and e.exp.is_rational:
            walk(e.base, power * sp.nsimplify(e.exp))
            return
        if isinstance(e, sp.Mul):
            for f in e.args:
                walk(f, power)
            return
        raise ValueError(
            f"prior = {expr} is not 1 or a monomial c*prod(w_j**h_j) in the variables; a prior that is positive and "
            "smooth at 0 does not change lambda, so pass prior=1 for it"
        )

    walk(expr, sp.Integer(1))
    if const.is_zero or not const.is_finite:
        raise ValueError(f"prior = {expr} has constant factor {const}; it must be non-zero and finite")
    bad = {str(v): e for v, e in h.items() if not e > -1}
    if bad:
        raise ValueError(f"prior exponents must exceed -1 to be integrable near 0, got {bad}")
    return tuple(h[v] for v in variables)


# ---- exact linear algebra on small integer matrices -----------------------------------------------

def _rank(rows) -> int:
    m = [[Fraction(x) for x in r] for r in rows]
    rank, ncols = 0, (len(m[0]) if m else 0)
    for c in range(ncols):
        piv = next((i for i in range(rank, len(m)) if m[i][c] != 0), None)
        if piv is None:
            continue
        m[rank], m[piv] = m[piv], m[rank]
        for i in range(len(m)):
            if i != rank and m[i][c] != 0:
                f = m[i][c] / m[rank][c]
                m[i] = [a - f * b for a, b in zip(m[i], m[rank])]
        rank += 1
    return rank


def _normal_of(rows, d):
    """The primitive integer vector orthogonal to ``rows`` if their span has dimension d-1, else None."""
    m = [[Fraction(x) for x in r] for r in rows]
    pivots, rank = [], 0
    for c in range(d):
        piv = next((i for i in range(rank, len(m)) if m[i][c] != 0), None)
        if piv is None:
            continue
        m[rank], m[piv] = m[piv], m[rank]
        pv = m[rank][c]
        m[rank] = [a / pv for a in m[rank]]
        for i in range(len(m)):
            if i != rank and m[i][c] != 0:
                f = m[i][c]
                m[i] = [a - f * b for a, b in zip(m[i], m[rank])]
        pivots.append(c)
        rank += 1
    if rank != d - 1:
        return None
    free = next(c for c in range(d) if c not in pivots)
    vec = [Fraction(0)] * d
    vec[free] = Fraction(1)
    for r, c in enumerate(pivots):
        vec[c] = -m[r][free]
    den = 1
    for x in vec:
        den = den * x.denominator // gcd(den, x.denominator)
    ints = [int(x * den) for x in vec]
    g = 0
    for x in ints:
        g = gcd(g, abs(x))
    return tuple(x // g for x in ints)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


# ---- the Newton polyhedron ----------------------------------------------------------------------------

def _minimal_points(points):
    pts = sorted(set(points))
    return [p for p in pts if not any(q != p and all(qi <= pi for qi, pi in zip(q, p)) for q in pts)]


_MAX_FACET_CANDIDATES = 300_000


def _facets(points, d):
    from math import comb

    work = sum(comb(d, nj) * comb(len(points), d - nj) for nj in range(d))
    if work > _MAX_FACET_CANDIDATES:
        raise NotImplementedError(
            f"the Newton polyhedron has {len(points)} candidate vertices in {d} variables; enumerating its facets "
            f"exactly would test {work:,} hyperplanes, more than this function allows ({_MAX_FACET_CANDIDATES:,})"
        )
    facets = set()
    for nj in range(d):                        # nj coordinates j with normal_j = 0 (recession directions)
        for J in combinations(range(d), nj):
            k = d - nj                         # number of points spanning the rest
            if k > len(points):
                continue
            units = [tuple(1 if i == j else 0 for i in range(d)) for j in J]
            for pts in combinations(points, k):
                rows = units + [tuple(a - b for a, b in zip(p, pts[0])) for p in pts[1:]]
                a = _normal_of(rows, d) if rows else None
                if rows and a is None:
                    continue
                if not rows:                   # d == 1: the facet is a single point
                    a = (1,)
                if all(x <= 0 for x in a):
                    a = tuple(-x for x in a)
                if any(x < 0 for x in a):
                    continue
                off = min(_dot(a, p) for p in points)
                if _dot(a, pts[0]) == off:
                    facets.add((a, off))
    return sorted(facets)


def newton_polyhedron(K, variables, prior=1) -> NewtonPolyhedron:
    r"""The Newton polyhedron of the polynomial K at the origin, its compact faces, and where the ray
    :math:`s\,(h+1)` (the diagonal :math:`s(1,\dots,1)` for a flat prior) meets its boundary.

    :math:`P = \mathrm{conv}\{\alpha : c_\alpha \ne 0\} + \mathbb R^d_{\ge0}` for :math:`K = \sum_\alpha c_\alpha w^\alpha`.
    Every facet is returned as ``<normal, alpha> >= offset``; every compact face with its face polynomial
    :math:`K_\sigma = \sum_{\alpha\in\sigma} c_\alpha w^\alpha`. For a non-degenerate K,
    ``1/distance`` is the learning coefficient and ``hit_codim`` its multiplicity (see :func:`rlct`).
    Exact (rational arithmetic throughout). Used in: Part I, "Resolving singularities".
    """
    poly, variables = _check_K(K, variables)
    h = _prior_exponents(prior, variables)
    d = len(variables)
    terms = poly.as_dict()
    points = _minimal_points(terms)
    facets = [Facet(a, off) for a, off in _facets(points, d)]
    # compact faces: intersections of facets' point sets whose containing facets' normals sum to a positive vector
    on = {f: frozenset(p for p in points if _dot(f.normal, p) == f.offset) for f in facets}
    sets = {s for s in on.values() if s}
    frontier = set(sets)
    while frontier:
        new = set()
        for s in frontier:
            for t in list(sets):
                u = s & t
                if u and u not in sets:
                    new.add(u)
        sets |= new
        frontier = new
    faces, vertices = [], set()
    for s in sets:
        containing = [f for f in facets if s <= on[f]]
        normal = tuple(sum(f.normal[i] for f in containing) for i in range(d))
        if not all(x > 0 for x in normal):
            continue
        offset = sum(f.offset for f in containing)
        support = tuple(sorted(a for a in terms if _dot(normal, a) == offset))
        pts = sorted(s)
        dim = _rank([tuple(x - y for x, y in zip(p, pts[0])) for p in pts[1:]]) if len(pts) > 1 else 0
        faces.append((dim, tuple(pts), support, normal, offset))
        if dim == 0:
            vertices.add(pts[0])
    face_objs = []
    for dim, pts, support, normal, offset in sorted(faces):
        verts = tuple(p for p in pts if p in vertices)
        fpoly = sp.Add(*[sp.Rational(terms[a].numerator, terms[a].denominator)
                         * sp.Mul(*[v**e for v, e in zip(variables, a)]) for a in support])
        face_objs.append(Face(verts, dim, support, fpoly, normal, offset))
    # the ray s*v, v = h + 1
    v = tuple(sp.Rational(x) + 1 for x in h)
    ratios = [(sp.Rational(f.offset) / _dot(f.normal, v), f) for f in facets if f.offset > 0]
    t = max(r for r, _ in ratios)
    hit = tuple(f for r, f in ratios if r == t)
    codim = _rank([f.normal for f in hit])
    return NewtonPolyhedron(variables, tuple(sorted(vertices)), tuple(facets), tuple(face_objs), v, t,
                            tuple(t * x for x in v), hit, codim)


# ---- the sign of a face polynomial on the real torus ----------------------------------------------------

_POSITIVE, _NEGATIVE, _ZERO, _UNKNOWN = "positive", "negative", "zero", "unknown"


def _face_sign(face: Face, variables, structural_terms, rng_seed: int = 0):
    """(status, detail) for the face polynomial on the real torus (R\\{0})^d."""
    fp = sp.Poly(face.polynomial, *variables)
    terms = fp.as_dict()
    if all(c > 0 and all(e % 2 == 0 for e in a) for a, c in terms.items()):
        return _POSITIVE, "a sum of positive even monomials"
    if face.dim == 0:
        return _NEGATIVE, f"its vertex term {face.polynomial} takes negative values"
    if face.dim == 1:
        alpha, beta = face.vertices
        diff = [b - a for a, b in zip(alpha, beta)]
        g = 0
        for x in diff:
            g = gcd(g, abs(x))
        delta = [x // g for x in diff]
        u = sp.Symbol("u")
        coeffs = {}
        for a, c in terms.items():
            steps = {(x - y) // dd for x, y, dd in zip(a, alpha, delta) if dd != 0}
            (j,) = steps
            coeffs[j] = c
        p = sp.Poly(sum(sp.Rational(c.numerator, c.denominator) * u**j for j, c in coeffs.items()), u)
        # the vertex terms are positive even monomials (checked before), so the face polynomial is
        # w^alpha * p(w^delta) with w^alpha > 0, and w^delta ranges over all of R\{0} (delta is primitive)
        real = p.count_roots()                    # exact (Sturm), counts multiplicity
        if real == 0:
            return _POSITIVE, f"p(u) = {p.as_expr()} has no real root, u = monomial"
        factors = sp.factor_list(p.as_expr())[1]
        odd = [f for f, k in factors if k % 2 == 1 and sp.Poly(f, u).count_roots() > 0]
        if odd:
            return _NEGATIVE, f"it is w^{tuple(alpha)} * ({p.as_expr()}) with u = w^{tuple(delta)}, which changes sign"
        return _ZERO, f"it is w^{tuple(alpha)} * ({sp.factor(p.as_expr())}) with u = w^{tuple(delta)}, which vanishes on the torus"
    # dimension >= 2: exact certificates first
    if structural_terms is not None:
        gens = [sp.Poly(tm, *variables) for tm in structural_terms]
        parts = []
        for g_ in gens:
            # each summand's part on the face (its support may include points that cancel in K itself)
            gd = g_.as_dict()
            sel = [(a, c) for a, c in gd.items() if _dot(face.normal, a) == face.offset]
            if sel:
                parts.append(sp.Add(*[c * sp.Mul(*[v**e for v, e in zip(variables, a)]) for a, c in sel]))
        if _no_torus_zero(parts, variables):
            return _POSITIVE, "its non-negative summands have no common zero in the complex torus"
        sing = [face.polynomial] + [v * sp.diff(face.polynomial, v) for v in variables]
        if _no_torus_zero(sing, variables):
            return _POSITIVE, "it is non-negative and has no singular zero in the complex torus"
    # search for a negative value (an exact certificate that K < 0 near 0)
    import random
    rnd = random.Random(rng_seed)
    f = sp.lambdify(variables, face.polynomial, "math")
    for _ in range(2000):
        pt = [Fraction(rnd.choice([-1, 1]) * rnd.randint(1, 40), rnd.randint(1, 40)) for _ in variables]
        if f(*[float(x) for x in pt]) < 0:
            val = face.polynomial.subs(dict(zip(variables, [sp.Rational(x.numerator, x.denominator) for x in pt])))
            if val < 0:
                return _NEGATIVE, f"it is {val} < 0 at {tuple(map(str, pt))}"
    return _UNKNOWN, ("deciding whether it vanishes somewhere on the real torus needs real algebraic geometry "
                      "beyond this function (no sum-of-squares certificate was found)")


def _no_torus_zero(polys, variables) -> bool:
    """True if the polynomials have no common zero with all coordinates non-zero (complex), by Groebner basis."""
    polys = [sp.expand(p) for p in polys if sp.expand(p) != 0]
    if not polys:
        return False
    z = sp.Dummy("z")
    try:
        G = sp.groebner(polys + [1 - z * sp.Mul(*variables)], *variables, z, order="grevlex")
    except Exception:  # pragma: no cover - sympy failures mean "cannot certify"
        return False
    return list(G.exprs) == [1]


def _structural_terms(K, variables):
    """If K is written as a sum of manifestly non-negative terms (squares, even powers, positive constants times
    those), return the list of terms; else None. Certifies K >= 0 everywhere."""
    expr = sp.sympify(K)

    def nonneg(e) -> bool:
        if e.is_number:
            return bool(e >= 0)
        if isinstance(e, sp.Abs):
            return True
        if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
            return e.exp % 2 == 0 or nonneg(e.base)
        if isinstance(e, sp.Mul):
            return all(nonneg(f) for f in e.args)
        if isinstance(e, sp.Add):
            return all(nonneg(f) for f in e.args)
        return False

    terms = list(expr.args) if isinstance(expr, sp.Add) else [expr]
    if all(nonneg(t) for t in terms):
        return [sp.expand(t) for t in terms]
    return None


# ---- the learning coefficient -----------------------------------------------------------------------------

def rlct(K, variables, prior=1) -> RLCT:
    r"""The learning coefficient (real log canonical threshold) :math:`\lambda` and multiplicity :math:`m` of K at 0.

    :math:`(\lambda, m)` are defined by the largest pole :math:`z=-\lambda` (of order :math:`m`) of the zeta function
    :math:`\zeta(z) = \int_U K(w)^z\,\varphi(w)\,dw` over a small neighbourhood :math:`U` of the origin
    (Watanabe 2009, Def. 2.7 and Thm 6.1; Lin 2011, ch. 4). Equivalently, the prior volume of
    :math:`\{K < \varepsilon\}` scales like :math:`c\,\varepsilon^\lambda(-\log\varepsilon)^{m-1}`.

    Parameters
    ----------
    K : sympy.Expr
        A polynomial in ``variables`` with rational coefficients, :math:`K(0) = 0` and :math:`K \ge 0` near 0.
    variables : sequence of sympy.Symbol
        The coordinates :math:`w_1,\dots,w_d` (real).
    prior : sympy.Expr, default 1
        1 or a monomial :math:`c\prod_j w_j^{h_j}` (:math:`h_j > -1` rational, ``Abs`` allowed); it enters as
        :math:`|{\rm prior}|`, so the Jacobian of a :func:`blow_up` can be passed as it is.

    What it decides
    ---------------
    (a) **normal crossings** :math:`K = c\prod_j w_j^{2k_j}` (times a unit), prior :math:`\prod_j |w_j|^{h_j}`:
        :math:`\lambda = \min_j (h_j+1)/(2k_j)`, :math:`m = \#\{j \text{ attaining the minimum}\}`;
    (b) **Newton non-degenerate** K (sums of squares included): with :math:`v = (h_1+1,\dots,h_d+1)`,
        :math:`\lambda = 1/t` where :math:`tv` is the point where the ray meets the boundary of the Newton polyhedron,
        and :math:`m` is the codimension of the face containing it (Varchenko 1976; Arnold, Gusein-Zade & Varchenko 1988; Lin 2011, ch. 4).
        Non-degenerate means: every compact face polynomial :math:`K_\sigma` has no singular zero in the real torus
        :math:`(\mathbb R\setminus 0)^d`; for :math:`K\ge0` that is :math:`K_\sigma > 0` there. This is checked
        exactly: positive even monomials, Sturm sequences for edges, Groebner bases for higher faces.

    Raises
    ------
    NotImplementedError
        when K is degenerate (a face polynomial vanishes on the torus, e.g. :math:`(y^2-x^3)^2`, whose
        :math:`\lambda = 5/12` needs a resolution by :func:`blow_up`), or when the sign of a face polynomial cannot
        be decided. The message names the face. Never a silent wrong answer.
    ValueError
        when K is not a polynomial in ``variables``, is identically zero, :math:`K(0)\ne0`, or takes negative
        values arbitrarily close to 0 (the message gives the face polynomial that shows it); or a bad prior.

    Examples
    --------
    >>> a, b = sympy.symbols("a b")
    >>> rlct(a**2 * b**2, [a, b])
    RLCT(lam=1/2, multiplicity=2)
    >>> rlct(a**2 + b**4, [a, b])
    RLCT(lam=3/4, multiplicity=1)

    Used in: Part I, "The learning coefficient", "Resolving singularities", "Learning coefficients we know exactly".
    """
    poly, variables = _check_K(K, variables)
    h = _prior_exponents(prior, variables)
    terms = poly.as_dict()
    # (a) a single monomial: normal crossing, closed form
    if len(terms) == 1:
        (alpha, c), = terms.items()
        if c < 0 or any(e % 2 for e in alpha):
            raise ValueError(f"K = {poly.as_expr()} takes negative values arbitrarily close to 0 "
                             "(a monomial is non-negative only with a positive coefficient and even exponents)")
        ratios = [(sp.Rational(hj) + 1) / e for hj, e in zip(h, alpha) if e > 0]
        lam = min(ratios)
        return RLCT(sp.Rational(lam), sum(1 for r in ratios if r == lam))
    # (b) Newton polyhedron
    P = newton_polyhedron(poly.as_expr(), variables, prior=prior)
    structural = _structural_terms(K, variables)
    undecided, degenerate = [], []
    for face in sorted(P.faces, key=lambda f: f.dim):
        status, why = _face_sign(face, variables, structural)
        if status == _NEGATIVE:
            raise ValueError(
                f"K takes negative values arbitrarily close to 0: the face polynomial {face.polynomial} of its "
                f"Newton polyhedron (face with vertices {list(face.vertices)}) is negative somewhere on the torus "
                f"({why}); K must be non-negative near 0 (a KL divergence or a sum of squares)"
            )
        if status == _ZERO:
            degenerate.append((face, why))
        elif status == _UNKNOWN:
            undecided.append((face, why))
    if degenerate:
        face, why = degenerate[0]
        raise NotImplementedError(
            f"K is degenerate with respect to its Newton polyhedron: the face polynomial {sp.factor(face.polynomial)} "
            f"(face with vertices {list(face.vertices)}) vanishes at points of the torus where no coordinate is 0 "
            f"({why}). There the Newton polyhedron does not determine lambda; resolve the singularity first "
            "(blow_up, then rlct in each chart with the Jacobian as prior) or change coordinates"
        )
    if undecided:
        face, why = undecided[0]
        raise NotImplementedError(
            f"cannot decide whether K is Newton non-degenerate: for the face polynomial {face.polynomial} "
            f"(face with vertices {list(face.vertices)}) {why}. Without that the Newton-polyhedron formula "
            "could be wrong, so no answer is given"
        )
    return RLCT(sp.Rational(1) / P.distance, int(P.hit_codim))


# ---- normal crossings and blow-ups --------------------------------------------------------------------------

def normal_crossing(K, variables):
    r"""If K is in normal-crossing form at the origin, :math:`K = w^\alpha\,u(w)` with :math:`u(0)\ne0`, return
    :class:`NormalCrossing` ``(exponents=alpha, unit=u)``; otherwise ``None``.

    This is the target of a resolution of singularities: in a chart where K (and the Jacobian) are normal
    crossing, :func:`rlct` is the closed form (a). Used in: Part I, "Resolving singularities".
    """
    poly, variables = _poly_of(K, variables)
    if poly.is_zero:
        return None
    terms = poly.as_dict()
    alpha = tuple(min(a[i] for a in terms) for i in range(len(variables)))
    if alpha not in terms:
        return None
    mono = sp.Mul(*[v**e for v, e in zip(variables, alpha)])
    unit = sp.factor(sp.cancel(poly.as_expr() / mono))
    return NormalCrossing(alpha, unit)


def blow_up(K, variables, center=None, chart=None) -> BlowUp:
    r"""Pull K back along one chart of the blow-up of the coordinate subspace ``center`` (default: the origin).

    The blow-up of :math:`\{w_i = 0,\ i\in C\}` is covered by one chart per :math:`j\in C`; in chart ``j`` the
    substitution is :math:`w_i \mapsto w_j w_i` for :math:`i\in C\setminus\{j\}` (the new coordinates keep the old
    names), the exceptional divisor is :math:`\{w_j = 0\}` and the Jacobian determinant is :math:`w_j^{|C|-1}`.
    The learning coefficient of K is the minimum over all charts, and over all points of each chart near the
    exceptional divisor, of the learning coefficient of the pulled-back K with prior ``|Jacobian| * prior``
    (Watanabe 2009, §3.5; Hironaka's theorem says finitely many blow-ups reach normal crossings).

    Parameters
    ----------
    K : sympy.Expr
        Any expression in ``variables`` (need not be polynomial).
    variables : sequence of sympy.Symbol
    center : sequence of sympy.Symbol, optional
        The coordinates that vanish on the blown-up subspace, at least two; default all of ``variables``.
    chart : sympy.Symbol
        Which coordinate of ``center`` becomes the exceptional divisor's equation.

    Returns
    -------
    BlowUp
        ``(K, jacobian, substitution, exceptional)``, with ``K`` factored.

    Used in: Part I, "Resolving singularities".
    """
    variables = _as_symbols("variables", variables)
    center = variables if center is None else _as_symbols("center", center)
    outside = [c for c in center if c not in variables]
    if outside:
        raise ValueError(f"center lists {[str(c) for c in outside]}, which are not in variables")
    if len(center) < 2:
        raise ValueError(f"center must have at least two coordinates (blowing up a hypersurface changes nothing), got {center}")
    if chart is None or chart not in center:
        raise ValueError(f"chart must be one of the center's coordinates {[str(c) for c in center]}, got {chart!r}")
    expr = sp.sympify(K)
    subs = {c: chart * c for c in center if c != chart}
    pulled = sp.factor(expr.subs(subs, simultaneous=True))
    return BlowUp(pulled, chart ** (len(center) - 1), subs, chart)
