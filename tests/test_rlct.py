"""slt_companion.symbolic: rlct, newton_polyhedron, blow_up, normal_crossing.

Reference values: normal crossings from the closed form lambda = min_j (h_j+1)/(2k_j) (Watanabe 2009, Thm 6.1;
../shared/PAPERS.md §1, the toy potentials of Lau et al.); Newton-polyhedron cases computed by hand in the
comments (the diagonal's hit point); sums of squares cross-checked against reduced-rank regression.
"""

from __future__ import annotations

import pytest
import sympy as sp

from slt_companion.symbolic import (RLCT, blow_up, newton_polyhedron, normal_crossing, rlct)
from slt_companion.theory import rrr_rlct

R = sp.Rational
x, y, z, u = sp.symbols("x y z u", real=True)
a1, a2, b1, b2 = sp.symbols("a1 a2 b1 b2", real=True)


def check(K, variables, lam, m, prior=1):
    res = rlct(K, variables, prior=prior)
    assert isinstance(res, RLCT) and isinstance(res.lam, sp.Rational) and isinstance(res.multiplicity, int)
    assert res == (lam, m), f"rlct({K}, prior={prior}) = {res}, expected ({lam}, {m})"


# ---- (a) normal crossings, flat prior -----------------------------------------------------------------

def test_nc_one_variable_regular():
    check(x**2, [x], R(1, 2), 1)                       # regular: d/2


def test_nc_one_variable_quartic():
    check(x**4, [x], R(1, 4), 1)


def test_nc_x2_y4():
    check(x**2 * y**4, [x, y], R(1, 4), 1)             # PAPERS §1 table


def test_nc_x2_y2_multiplicity_two():
    check(x**2 * y**2, [x, y], R(1, 2), 2)             # y = abx at the origin


def test_nc_three_way_tie_multiplicity_three():
    check(x**4 * y**4 * z**4, [x, y, z], R(1, 4), 3)


def test_nc_with_unused_variable():
    check(x**6 * y**2, [x, y, z], R(1, 6), 1)          # z does not appear: it only adds a constant factor


def test_nc_times_a_unit():
    check(x**2 * y**4 * (1 + x + y**2), [x, y], R(1, 4), 1)


def test_nc_with_positive_constant():
    check(R(3, 7) * x**2 * y**6, [x, y], R(1, 6), 1)


# ---- (a) normal crossings with a monomial prior --------------------------------------------------------

def test_nc_prior_x2y6_abs_x():
    check(x**2 * y**6, [x, y], R(1, 6), 1, prior=sp.Abs(x))            # min(2/2, 1/6)


def test_nc_prior_x6y2_xy():
    check(x**6 * y**2, [x, y], R(1, 3), 1, prior=sp.Abs(x * y))        # min(2/6, 2/2)


def test_nc_prior_x8y2_x6y3():
    check(x**8 * y**2, [x, y], R(7, 8), 1, prior=sp.Abs(x**6 * y**3))  # min(7/8, 4/2)


def test_nc_prior_x2y2_xy_multiplicity_two():
    check(x**2 * y**2, [x, y], R(1), 2, prior=x * y)                   # the prior enters as |prior|


def test_nc_prior_fractional_exponent_and_constant():
    check(x**2, [x], R(3, 4), 1, prior=5 * sp.Abs(x)**R(1, 2))         # (1/2 + 1)/2


def test_nc_prior_shifts_the_minimum():
    check(x**4 * y**2, [x, y], R(1, 4), 1, prior=y**2)                 # min(1/4, 3/2)
    check(x**4 * y**2, [x, y], R(1, 2), 1, prior=x**6)                 # min(7/4, 1/2)


# ---- (b) Newton non-degenerate polynomials and sums of squares ----------------------------------------

def test_newton_regular_quadratic_is_half_dimension():
    check(x**2 + y**2, [x, y], R(1), 1)
    check(x**2 + y**2 + z**2, [x, y, z], R(3, 2), 1)


def test_newton_x2_plus_y4():
    check(x**2 + y**4, [x, y], R(3, 4), 1)             # 1/2 + 1/4: the diagonal meets 2a + b = 4 at t = 4/3


def test_newton_x4_plus_y4():
    check(x**4 + y**4, [x, y], R(1, 2), 1)


def test_newton_edge_through_diagonal_point():
    check(x**4 + x**2 * y**2 + y**4, [x, y], R(1, 2), 1)   # (2,2) lies inside the edge: codimension 1


def test_newton_vertex_on_diagonal_multiplicity_two():
    check(x**4 + x**2 * y**2 + y**6, [x, y], R(1, 2), 2)   # (2,2) is a vertex: codimension 2
    check(x**6 + x**2 * y**2 + y**6, [x, y], R(1, 2), 2)


def test_newton_with_prior():
    check(x**2 + y**4, [x, y], R(1), 1, prior=sp.Abs(y))   # ray t(1,2) meets 2a + b = 4 at t = 1
    # vertices (6,0),(2,2),(0,6); facets a+2b>=6, 2a+b>=6; ray t(2,1): t = max(6/4, 6/5) = 3/2
    check(x**6 + x**2 * y**2 + y**6, [x, y], R(2, 3), 1, prior=x)


def test_newton_mixed_dimensions():
    check(x**2 * y**4 + z**2, [x, y, z], R(3, 4), 1)       # 1/4 + 1/2: independent blocks add
    check(x**2 * y**2 + u**2 * z**2, [x, y, z, u], R(1), 3)   # lambdas add, multiplicities add minus one


def test_sum_of_squares_with_cross_terms():
    check((x**2 + y**2)**2, [x, y], R(1, 2), 1)            # r^4 in polar coordinates
    check((x + y)**2 + (x - y)**2, [x, y], R(1), 1)
    check((x**2 + y**2) * (x**2 + 2 * y**2), [x, y], R(1, 2), 1)


def test_edge_polynomial_without_real_root_is_decided_by_sturm():
    check(x**4 + x**2 * y**2 + y**4 + x**3 * y, [x, y], R(1, 2), 1)   # edge polynomial 1 + u + u^2 + u^4 has no real root


def test_sum_of_squares_two_dimensional_face_certified_by_groebner():
    K = (x**2 - y * z)**2 + y**4 + z**4       # the face {(4,0,0),(0,4,0),(0,0,4),(2,1,1),(0,2,2)}
    res = rlct(K, [x, y, z])
    assert res == (R(3, 4), 1)
    # the same polynomial expanded has no visible sum-of-squares structure: refused, not guessed
    with pytest.raises(NotImplementedError, match="cannot decide"):
        rlct(sp.expand(K), [x, y, z])


def test_reduced_rank_regression_with_one_hidden_unit_matches_aoyagi_watanabe():
    # y = b a^T x, M = N = 2, H = 1, truth 0: K = ||b a^T||^2 = (b1^2 + b2^2)(a1^2 + a2^2)
    K = (b1**2 + b2**2) * (a1**2 + a2**2)
    assert rlct(K, [a1, a2, b1, b2]) == rrr_rlct(2, 2, 1, 0) == (R(1), 2)
    K = b1**2 * (a1**2 + a2**2)                # M = 2, N = 1, H = 1
    assert rlct(K, [a1, a2, b1]) == rrr_rlct(2, 1, 1, 0) == (R(1, 2), 1)
    assert rlct(b1**2 * a1**2, [a1, b1]) == rrr_rlct(1, 1, 1, 0)


def test_single_monomial_and_newton_paths_agree():
    for K, prior in [(x**2 * y**4, 1), (x**6 * y**2, sp.Abs(x * y)), (x**2 * y**2, x * y)]:
        P = newton_polyhedron(K, [x, y], prior=prior)
        assert rlct(K, [x, y], prior=prior) == (1 / P.distance, P.hit_codim)


# ---- (c) refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [(y**2 - x**3)**2, (x - y)**2, (x**2 + y**3)**2, x**2 * (y - z)**2 + z**8])
def test_degenerate_raises_not_implemented(K):
    variables = [x, y, z] if K.has(z) else [x, y]
    with pytest.raises(NotImplementedError, match="degenerate"):
        rlct(K, variables)


def test_undecidable_face_raises_not_implemented():
    motzkin = x**4 * y**2 + x**2 * y**4 + z**6 - 3 * x**2 * y**2 * z**2   # >= 0, not a sum of squares
    with pytest.raises(NotImplementedError, match="cannot decide"):
        rlct(motzkin, [x, y, z])


# ---- ValueErrors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [sp.sin(x)**2, sp.sqrt(x**2 + y**2), x**2 / (1 + y), sp.exp(x) - 1])
def test_not_a_polynomial(K):
    with pytest.raises(ValueError, match="not a polynomial"):
        rlct(K, [x, y])


@pytest.mark.parametrize("K", [x**2 - y**4, -x**2, x**3 + y**2, x * y, x**2 * y**2 - x**6 - y**6,
                               x**2 + 3 * x * y + y**2])
def test_negative_near_zero(K):
    with pytest.raises(ValueError, match="negative"):
        rlct(K, [x, y])


def test_nonzero_at_origin_and_zero_function():
    with pytest.raises(ValueError, match=r"K\(0\) = 1"):
        rlct(1 + x**2, [x])
    with pytest.raises(ValueError, match="identically zero"):
        rlct(sp.Integer(0), [x])


def test_bad_variables_and_prior():
    with pytest.raises(ValueError, match="not in variables"):
        rlct(x**2 + z**2, [x, y])
    with pytest.raises(ValueError, match="monomial"):
        rlct(x**2, [x], prior=1 + x)
    with pytest.raises(ValueError, match="exceed -1"):
        rlct(x**2, [x], prior=x**-2)
    with pytest.raises(ValueError, match="not in variables"):
        rlct(x**2, [x], prior=y)
    with pytest.raises(ValueError, match="variables"):
        rlct(x**2, [])


# ---- newton_polyhedron -------------------------------------------------------------------------------------

def test_newton_polyhedron_structure():
    P = newton_polyhedron(x**4 + x**2 * y**2 + y**6 + x**3 * y**5, [x, y])
    assert P.vertices == ((0, 6), (2, 2), (4, 0))
    normals = {f.normal: f.offset for f in P.facets}
    assert normals == {(1, 0): 0, (0, 1): 0, (1, 1): 4, (2, 1): 6}
    assert P.distance == 2 and P.hit_point == (2, 2) and P.hit_codim == 2
    assert sorted(f.dim for f in P.faces) == [0, 0, 0, 1, 1]
    edge = next(f for f in P.faces if f.dim == 1 and set(f.vertices) == {(4, 0), (2, 2)})
    assert sp.expand(edge.polynomial - (x**4 + x**2 * y**2)) == 0


def test_newton_polyhedron_prior_direction():
    P = newton_polyhedron(x**2 + y**4, [x, y], prior=sp.Abs(y))
    assert P.direction == (1, 2) and P.distance == 1 and P.hit_point == (1, 2) and P.hit_codim == 1


# ---- blow-ups and normal crossings -------------------------------------------------------------------------

def test_blow_up_charts_of_the_cusp():
    f = y**2 - x**3
    cx = blow_up(f, [x, y], chart=x)
    assert cx.substitution == {y: x * y} and cx.jacobian == x
    assert sp.expand(cx.K - x**2 * (y**2 - x)) == 0
    cy = blow_up(f, [x, y], chart=y)
    assert sp.expand(cy.K - y**2 * (1 - x**3 * y)) == 0
    nc = normal_crossing(cy.K, [x, y])
    assert nc is not None and nc.exponents == (0, 2)
    assert normal_crossing(cx.K, [x, y]) is None


def test_resolving_the_cusp_gives_five_twelfths():
    # three point blow-ups: the chart that matters ends with f = y^6 x^2 (1 - x), Jacobian y^4 x
    f = y**2 - x**3
    s1 = blow_up(f, [x, y], chart=x)                     # y -> x y
    s2 = blow_up(s1.K, [x, y], chart=y)                  # x -> y x
    s3 = blow_up(s2.K, [x, y], chart=y)                  # x -> y x
    jac = sp.expand(s1.jacobian.subs(s2.substitution, simultaneous=True).subs(s3.substitution, simultaneous=True)
                    * s2.jacobian.subs(s3.substitution, simultaneous=True) * s3.jacobian)
    assert sp.expand(s3.K + y**6 * x**2 * (x - 1)) == 0
    assert jac == y**4 * x
    nc = normal_crossing(s3.K**2, [x, y])
    assert nc.exponents == (4, 12)
    assert rlct(y**12 * x**4, [x, y], prior=jac) == (R(5, 12), 1)


def test_blow_up_errors():
    with pytest.raises(ValueError, match="chart"):
        blow_up(x * y, [x, y], chart=z)
    with pytest.raises(ValueError, match="at least two"):
        blow_up(x * y, [x, y], center=[x], chart=x)
    with pytest.raises(ValueError, match="not in variables"):
        blow_up(x * y, [x, y], center=[x, z], chart=x)


def test_summands_that_cancel_on_a_face_are_still_used_correctly():
    # (x^2 - yz)^2 + 2x^2yz + y^4 + z^4 = x^4 + y^2z^2 + y^4 + z^4: the x^2yz terms cancel in K but not in the
    # summands; the face polynomial (all even, positive) decides it
    K = (x**2 - y * z)**2 + 2 * x**2 * y * z + y**4 + z**4
    assert rlct(K, [x, y, z]) == rlct(x**4 + y**2 * z**2 + y**4 + z**4, [x, y, z]) == (R(3, 4), 1)
    P = newton_polyhedron(K, [x, y, z])
    top = next(f for f in P.faces if f.dim == 2)
    assert top.normal == (1, 1, 1) and top.offset == 4
    assert all(sum(a) == 4 for a in top.points)
