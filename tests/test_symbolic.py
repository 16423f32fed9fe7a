"""slt_companion.symbolic.fisher_information / fisher_rank: exact values, ranks, and clear errors."""

from __future__ import annotations

import pytest
import sympy as sp

from slt_companion.symbolic import fisher_information, fisher_rank

a, b, x, z = sp.symbols("a b x z")


def test_product_model_fisher_is_singular_everywhere():
    fisher = fisher_information(a * b * x, [a, b], [x], input_points=[1, 2, -1])
    # E[x^2] = 2 over the points; gradient (b x, a x)
    assert sp.simplify(fisher - sp.Rational(2) * sp.Matrix([[b**2, a * b], [a * b, a**2]])) == sp.zeros(2)
    assert sp.simplify(fisher.det()) == 0
    assert fisher_rank(fisher, {a: 1, b: 2}) == 1
    assert fisher_rank(fisher, {a: 0, b: 0}) == 0


def test_pointwise_matrix_and_noise_variance():
    fisher = fisher_information(a * x + b, [a, b], [x], noise_variance=4)
    assert fisher == sp.Matrix([[x**2, x], [x, 1]]) / 4


def test_regular_model_has_full_rank():
    fisher = fisher_information(a * x + b, [a, b], [x], input_points=[0, 1])
    assert fisher == sp.Matrix([[sp.Rational(1, 2), sp.Rational(1, 2)], [sp.Rational(1, 2), 1]])
    assert fisher_rank(fisher) == 2


@pytest.mark.parametrize("at, rank", [({a: 1, b: sp.Rational(3, 2)}, 2), ({a: 0, b: 1}, 1),
                                      ({a: 1, b: 0}, 1), ({a: 0, b: 0}, 0)])
def test_tanh_neuron_rank_drops_on_the_singular_set(at, rank):
    fisher = fisher_information(a * sp.tanh(b * x), [a, b], [x], input_points=[-1, 1, 2])
    assert fisher_rank(fisher, at) == rank


def test_multi_input_points():
    fisher = fisher_information(a * x + b * z, [a, b], [x, z], input_points=[(1, 0), (0, 1)])
    assert fisher == sp.eye(2) / 2


def test_non_symbolic_model_is_a_type_error():
    with pytest.raises(TypeError, match="model must be a sympy expression"):
        fisher_information(lambda w: w, [a], [x])
    with pytest.raises(TypeError, match="params must contain sympy Symbols"):
        fisher_information(a * x, ["a"], [x])
    with pytest.raises(TypeError, match="sympy Matrix"):
        fisher_rank([[1, 0], [0, 1]])


def test_mismatched_parameters_are_value_errors():
    with pytest.raises(ValueError, match=r"params lists \['b'\]"):
        fisher_information(a * x, [a, b], [x])
    with pytest.raises(ValueError, match="neither params nor inputs"):
        fisher_information(a * b * x, [a], [x])
    with pytest.raises(ValueError, match="share"):
        fisher_information(a * x, [a, x], [x])
    with pytest.raises(ValueError, match="lists a symbol twice"):
        fisher_information(a * x, [a, a], [x])
    with pytest.raises(ValueError, match="coordinates"):
        fisher_information(a * x, [a], [x], input_points=[(1, 2)])
    with pytest.raises(ValueError, match="params is empty"):
        fisher_information(a * x, [], [x])
    with pytest.raises(ValueError, match="noise_variance"):
        fisher_information(a * x, [a], [x], noise_variance=-1)
    with pytest.raises(ValueError, match="free symbols"):
        fisher_rank(fisher_information(a * b * x, [a, b], [x], input_points=[1]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), sp.nan, sp.oo, sp.zoo])
def test_non_finite_noise_variance_is_an_error(bad):
    # issue 20.8: noise_variance=nan was accepted and gave a matrix of nan
    a, b, x = sp.symbols("a b x")
    with pytest.raises(ValueError, match="noise_variance must be a finite positive number"):
        fisher_information(a * b * x, [a, b], [x], noise_variance=bad)
    s = sp.Symbol("s", positive=True)                 # a positive symbol is still fine
    assert fisher_information(a * x, [a], [x], noise_variance=s)[0, 0] == x ** 2 / s


def test_fisher_rank_tolerance_is_a_finite_number_at_least_zero():
    m = sp.Matrix([[1, 0], [0, sp.Rational(1, 10**12)]])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol must be a finite number ≥ 0"):
            fisher_rank(m, tol=bad)
    assert fisher_rank(m) == 1 and fisher_rank(m, tol=0) == 2 and fisher_rank(m, tol=1e-13) == 2
