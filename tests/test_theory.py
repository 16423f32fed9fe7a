"""Closed forms of slt_companion.theory: reduced-rank regression, deep linear networks, free energy.

Reference values: ../shared/PAPERS.md §2 (Aoyagi & Watanabe 2005) and §3 (Aoyagi 2024), each checked
there with exact arithmetic; the worked examples below are recomputed by hand in the comments.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy as sp

from slt_companion.symbolic import RLCT
from slt_companion.theory import bayesian_transition_n, bic, dln_rlct, free_energy, rrr_rlct

R = sp.Rational


def _rrr(M, H, N, r):
    """PAPERS.md lists (M, H, N, r); rrr_rlct takes (in_dim, out_dim, hidden, true_rank) = (M, N, H, r)."""
    return rrr_rlct(M, N, H, r)


# ---- reduced-rank regression: every branch ---------------------------------------------------------

def test_rrr_returns_named_tuple_of_rational_and_int():
    res = rrr_rlct(3, 3, 3, 1)
    assert isinstance(res, RLCT)
    assert isinstance(res.lam, sp.Rational) and isinstance(res.multiplicity, int)
    lam, m = res                                   # unpacks like a pair
    assert (lam, m) == (res.lam, res.multiplicity)


@pytest.mark.parametrize("MHNr, lam", [((3, 3, 3, 1), R(4)), ((4, 4, 4, 0), R(6)), ((2, 2, 2, 0), R(3, 2)),
                                       ((5, 4, 5, 0), R(8))])
def test_rrr_case1_even(MHNr, lam):
    M, H, N, r = MHNr
    assert (M + H + N + r) % 2 == 0
    assert _rrr(*MHNr) == (lam, 1)


@pytest.mark.parametrize("MHNr, lam", [((3, 3, 3, 0), R(7, 2)), ((2, 2, 2, 1), R(2)), ((5, 3, 5, 0), R(13, 2))])
def test_rrr_case1_odd_has_multiplicity_two(MHNr, lam):
    M, H, N, r = MHNr
    assert (M + H + N + r) % 2 == 1
    assert _rrr(*MHNr) == (lam, 2)


def test_rrr_case1_worked_example():
    # M = N = H = 3, r = 0: (2*3*6 - 0 - 9 + 1)/8 = 28/8 = 7/2, sum 9 odd => m = 2
    assert rrr_rlct(3, 3, 3, 0) == RLCT(R(7, 2), 2)


def test_rrr_case2_output_wider_than_input_plus_hidden():
    assert _rrr(4, 3, 8, 0) == (R(6), 1)              # HM/2 = 12/2
    # M=2, H=2, N=6, r=1: M+H=4 < N+r=7; (HM - Hr + Nr)/2 = (4 - 2 + 6)/2 = 4
    assert _rrr(2, 2, 6, 1) == (R(4), 1)


def test_rrr_case3_input_wider_than_output_plus_hidden():
    assert _rrr(8, 3, 4, 0) == (R(6), 1)
    assert _rrr(6, 2, 2, 1) == (R(4), 1)              # mirror image of case 2


def test_rrr_case4_many_hidden_units_is_regular_in_the_product():
    assert _rrr(3, 8, 4, 0) == (R(6), 1)              # MN/2: as if we fitted the N x M matrix directly
    assert _rrr(2, 7, 3, 2) == (R(3), 1)


def test_rrr_symmetric_in_input_and_output():
    for M, N, H in itertools.product(range(1, 6), repeat=3):
        for r in range(min(M, N, H) + 1):
            assert rrr_rlct(M, N, H, r) == rrr_rlct(N, M, H, r)


def test_rrr_never_exceeds_half_the_parameter_count_and_full_rank_truth_is_tight():
    for M, N, H in itertools.product(range(1, 6), repeat=3):
        d = H * (M + N)
        for r in range(min(M, N, H) + 1):
            lam, m = rrr_rlct(M, N, H, r)
            assert 0 < lam <= R(d, 2) and m in (1, 2)
        # with r = H <= min(M, N) the true set is a smooth GL(H)-orbit of dimension H^2 and K is
        # non-degenerate across it: lambda = (d - H^2)/2, half the codimension
        if H <= min(M, N):
            assert rrr_rlct(M, N, H, H).lam == R(d - H * H, 2)


def test_rrr_never_decreases_with_true_rank():
    for M, N, H in itertools.product(range(1, 6), repeat=3):
        lams = [rrr_rlct(M, N, H, r).lam for r in range(min(M, N, H) + 1)]
        assert all(a <= b for a, b in zip(lams, lams[1:]))
    assert rrr_rlct(4, 4, 3, 0).lam < rrr_rlct(4, 4, 3, 1).lam < rrr_rlct(4, 4, 3, 2).lam


def test_rrr_smallest_case_is_the_abx_model_of_chapter_one():
    # y = abx: true product 0 (the cross) has lambda 1/2 with m = 2; a non-zero truth has lambda 1/2, m = 1
    assert rrr_rlct(1, 1, 1, 0) == (R(1, 2), 2)
    assert rrr_rlct(1, 1, 1, 1) == (R(1, 2), 1)


@pytest.mark.parametrize("args, name", [((0, 3, 3, 0), "in_dim"), ((3, -1, 3, 0), "out_dim"),
                                        ((3, 3, 0, 0), "hidden"), ((3, 3, 3, -1), "true_rank"),
                                        ((3.5, 3, 3, 0), "in_dim"), ((3, 3, True, 0), "hidden")])
def test_rrr_invalid_dimensions(args, name):
    with pytest.raises(ValueError, match=name):
        rrr_rlct(*args)


def test_rrr_rank_exceeding_dimensions():
    with pytest.raises(ValueError, match="true_rank=3 exceeds"):
        rrr_rlct(4, 4, 2, 3)
    with pytest.raises(ValueError, match="true_rank"):
        rrr_rlct(2, 5, 5, 3)


# ---- deep linear networks -----------------------------------------------------------------------------

@pytest.mark.parametrize("widths, r, lam, m", [
    ([2, 3, 4], 1, R(7, 2), 1),
    ([5, 4, 3, 4, 5], 0, R(5), 4),
    ([5, 4, 3, 4, 5], 2, R(9), 2),
    ([10, 10, 10, 10], 0, R(67, 2), 3),
    ([10, 10, 10, 10], 5, R(46), 3),
    ([10, 1, 10], 0, R(5), 2),
])
def test_dln_paper_table(widths, r, lam, m):
    assert dln_rlct(widths, r) == RLCT(lam, m)


def test_dln_worked_example_by_hand():
    # [5,4,3,4,5], r = 2: M_j = [3,2,1,2,3]; S = {1,2,2}, l = 2, Sigma = 5, Mbar = 3, a = 1
    # base (-4 + 2*10)/2 = 8; a(l-a)/(4l) = 1/8; -(2*1/4)(5/2)^2 = -25/8; (1*2 + 1*2 + 2*2)/2 = 4
    assert R(8) + R(1, 8) - R(25, 8) + R(4) == 9
    assert dln_rlct([5, 4, 3, 4, 5], 2) == (R(9), 2)


def test_dln_agrees_with_rrr_for_one_hidden_layer():
    mismatches = []
    for M, H, N in itertools.product(range(1, 8), repeat=3):
        for r in range(min(M, H, N) + 1):
            if dln_rlct([M, H, N], r) != rrr_rlct(M, N, H, r):
                mismatches.append((M, H, N, r))
    assert not mismatches, mismatches


def test_dln_without_hidden_layer_is_regular():
    for M, N in itertools.product(range(1, 7), repeat=2):
        for r in range(min(M, N) + 1):
            assert dln_rlct([M, N], r) == (R(M * N, 2), 1)


def test_dln_symmetric_under_reversal_and_below_half_dimension():
    for widths in ([2, 3, 4, 5], [6, 2, 5, 3, 4], [3, 3, 3, 3, 3, 3], [7, 1, 4, 2]):
        d = sum(a * b for a, b in zip(widths, widths[1:]))
        for r in range(min(widths) + 1):
            res = dln_rlct(widths, r)
            assert res == dln_rlct(widths[::-1], r)
            assert 0 < res.lam <= R(d, 2)


def test_dln_lambda_constant_in_depth_for_square_layers_at_full_rank_bottleneck():
    # all widths H, true rank H: the product is an invertible H x H matrix, and every extra layer only adds
    # a GL(H) symmetry; lambda = H^2/2 whatever the depth (the paper's "r = H" special case)
    for H in (1, 2, 3, 4):
        for L in (1, 2, 3, 5):
            assert dln_rlct([H] * (L + 1), H) == (R(H * H, 2), 1)


def test_dln_accepts_tuples_and_numpy_integers():
    assert dln_rlct((np.int64(5), 4, 3, 4, 5), np.int64(2)) == (R(9), 2)


@pytest.mark.parametrize("widths, r, match", [
    ([3], 0, "at least an input and an output"),
    ([], 0, "at least an input and an output"),
    ([3, 0, 3], 0, r"widths\[1\]"),
    ([3, -2, 3], 0, r"widths\[1\]"),
    ([3, 2.5, 3], 0, r"widths\[1\]"),
    ([3, 2, 3], 3, "true_rank=3 exceeds"),
    ([3, 2, 3], -1, "true_rank"),
    (5, 0, "widths must be a list"),
    ("345", 0, "widths must be a list"),
])
def test_dln_invalid_input(widths, r, match):
    with pytest.raises(ValueError, match=match):
        dln_rlct(widths, r)


# ---- free energy and BIC --------------------------------------------------------------------------------

def test_free_energy_formula():
    n = np.array([10.0, 1e3, 1e6])
    got = free_energy(n, 0.25, R(7, 2), multiplicity=2)
    want = n * 0.25 + 3.5 * np.log(n) - np.log(np.log(n))
    assert np.allclose(got, want)
    assert np.allclose(free_energy(n, 0.0, 0.5), 0.5 * np.log(n))
    assert np.allclose(bic(n, 0.1, 4), 0.1 * n + 2 * np.log(n))


def test_free_energy_errors():
    with pytest.raises(ValueError, match="exceed 1"):
        free_energy(1, 0.0, 0.5)
    with pytest.raises(ValueError, match="exceed 1"):
        free_energy(float("nan"), 0.0, 0.5)                       # (nan slipped through as nan)
    with pytest.raises(ValueError, match="num_params"):
        bic(100, 0.1, -4)
    with pytest.raises(ValueError, match="positive"):
        bic(0, 0.1, 4)
    with pytest.raises(ValueError, match="multiplicity"):
        free_energy(10, 0.0, 0.5, multiplicity=0)
    with pytest.raises(ValueError, match="multiplicity"):
        free_energy(10, 0.0, 0.5, multiplicity=1.5)


# ---- Bayesian phase transitions ---------------------------------------------------------------------------

def test_transition_reproduces_the_tms_five_to_six_gon_numbers():
    # Chen et al. (2023), c = 6: L5 = 0.06874, L6 = 0.04819, lambda 7 -> 8.5, delta c = 2.7535 (PAPERS.md §6)
    assert abs(bayesian_transition_n(0.06874, 7, 0.04819, 8.5, const_b=2.7535) - 601) < 1
    assert abs(bayesian_transition_n(0.06874, 7, 0.04819, 8.5) - 445) < 1


def test_transition_solves_the_free_energy_equation():
    n = bayesian_transition_n(0.01, 0.25, 0.0, 1.0, multiplicity_a=2, const_a=0.3, const_b=-0.2)
    fa = free_energy(n, 0.01, 0.25, multiplicity=2) + 0.3
    fb = free_energy(n, 0.0, 1.0) - 0.2
    assert abs(fa - fb) < 1e-8
    # after the crossing the accurate phase b has the lower free energy, before it the simple phase a
    assert free_energy(2 * n, 0.01, 0.25, 2) + 0.3 > free_energy(2 * n, 0.0, 1.0) - 0.2
    assert free_energy(n / 2, 0.01, 0.25, 2) + 0.3 < free_energy(n / 2, 0.0, 1.0) - 0.2


def test_transition_errors():
    with pytest.raises(ValueError, match="lower loss"):
        bayesian_transition_n(0.0, 0.5, 0.1, 1.0)
    with pytest.raises(ValueError, match="no transition"):        # b is better on both counts: it always wins
        bayesian_transition_n(0.1, 1.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="multiplicity_a"):
        bayesian_transition_n(0.1, 0.5, 0.0, 1.0, multiplicity_a=0)
    with pytest.raises(ValueError, match="finite"):
        bayesian_transition_n(float("nan"), 0.5, 0.0, 1.0)


def test_transition_is_the_last_crossing_and_needs_only_the_lower_loss():
    """With m_b > m_a the curves can cross three times: the first crossing is not where b wins for good."""
    n = bayesian_transition_n(1e-7, 1.0, 0.0, 1.25, multiplicity_b=2)
    assert abs(n - 1.2988e7) / 1.2988e7 < 1e-3
    assert free_energy(1e5, 1e-7, 1.0) < free_energy(1e5, 0.0, 1.25, 2)                 # a preferred again in between
    # equal λ: the constants alone delay b; the crossing n = (c_b - c_a) / ΔL
    assert abs(bayesian_transition_n(0.01, 1.0, 0.0, 1.0, const_b=5.0) - 500) < 1e-6
    n = bayesian_transition_n(0.001, 0.5, 0.0, 1.5, const_a=2.0)                          # crosses at 7.4 and 6.8e3
    assert 6000 < n < 7500



def test_free_energy_and_bic_refuse_non_finite_loss_and_lambda():
    nan, inf = float("nan"), float("inf")
    for bad in (nan, inf, -inf, np.array([0.0, nan])):
        with pytest.raises(ValueError, match="loss must be a finite number"):
            free_energy(10, bad, 1)
        with pytest.raises(ValueError, match="loss must be a finite number"):
            bic(10, bad, 3)
    for bad in (nan, inf, sp.oo):
        with pytest.raises(ValueError, match="lam must be a finite number"):
            free_energy(10, 0.0, bad)
    assert free_energy(10, 0.5, sp.Rational(1, 2)) == pytest.approx(5 + 0.5 * np.log(10))
    assert bic(10, np.float32(0.5), 2) == pytest.approx(5 + np.log(10))
