"""slt_companion.volume: V(eps) and Z_n by log-coordinate quadrature, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

from slt_companion.bayes import ProductModel
from slt_companion.volume import fit_volume_scaling, free_energy_quadrature, log_partition, volume

x, y = sp.symbols("x y", real=True)
EPS = np.logspace(-14, -4, 11)


def test_volume_of_a_regular_one_dimensional_well_is_sqrt_eps():
    V = volume(x**2, [x], EPS, points=20_000)
    assert np.allclose(V, np.sqrt(EPS), rtol=2e-3)


def test_volume_of_the_cross_has_a_log_factor():
    # |xy| < d on [-1,1]^2 (uniform): d (1 - log d), d = sqrt(eps)
    V = volume(x**2 * y**2, [x, y], EPS, points=300)
    d = np.sqrt(EPS)
    assert np.allclose(V, d * (1 - np.log(d)), rtol=0.015)


def test_volume_with_a_monomial_prior_and_center():
    # prior |x - 1/2| on [-1/2, 3/2]: V = int_{|t|<sqrt(eps)} |t| dt / 2 = eps / 2
    V = volume((x - sp.Rational(1, 2))**2, [x], EPS, prior=x, center=[0.5], points=20_000)
    assert np.allclose(V, EPS / 2, rtol=2e-3)


@pytest.mark.parametrize("K, lam, m", [(x**2 * y**4, 0.25, 1), (x**2 + y**4, 0.75, 1), (x**2 * y**2, 0.5, 2)])
def test_fitted_exponent_matches_the_learning_coefficient(K, lam, m):
    eps = np.logspace(-14, -4, 21)
    fit = fit_volume_scaling(eps, volume(K, [x, y], eps, points=200), multiplicity=m)
    assert abs(fit["lam"] - lam) < 0.02, fit
    assert fit["multiplicity"] == m


def test_fit_of_exact_power_law_is_exact():
    eps = np.logspace(-12, -2, 9)
    fit = fit_volume_scaling(eps, 3.0 * eps**0.3 * (-np.log(eps)) ** 2)
    assert abs(fit["lam"] - 0.3) < 1e-10 and abs(fit["multiplicity"] - 3) < 1e-9
    assert abs(fit["log_c"] - math.log(3.0)) < 1e-9


def test_log_partition_matches_the_product_model():
    # ProductModel: K = (ab)^2 / (2 sigma^2); sigma^2 = 1/2 gives K = a^2 b^2, same uniform prior on [-1,1]^2
    ns = [10, 1_000, 100_000]
    F = free_energy_quadrature(x**2 * y**2, [x, y], ns, points=1000)
    ref = [ProductModel(0.0, noise_std=math.sqrt(0.5)).free_energy(n) for n in ns]
    assert np.allclose(F, ref, atol=2e-3)
    assert np.allclose(log_partition(x**2 * y**2, [x, y], ns, points=1000), -F)


def test_errors():
    with pytest.raises(ValueError, match="negative"):
        volume(x**2 - y**2, [x, y], EPS, points=50)
    with pytest.raises(ValueError, match="eps must be positive"):
        volume(x**2, [x], [0.0, 1e-3], points=50)
    with pytest.raises(ValueError, match="not in variables"):
        volume(x**2 + y**2, [x], EPS, points=50)
    with pytest.raises(ValueError, match="bound"):
        volume(x**2, [x], EPS, bound=-1.0, points=50)
    with pytest.raises(ValueError, match="center"):
        volume(x**2, [x], EPS, center=[0.0, 1.0], points=50)
    with pytest.raises(ValueError, match="equal length"):
        fit_volume_scaling(EPS, EPS[:-1])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        fit_volume_scaling(np.array([0.5, 2.0]), np.array([0.1, 0.2]), multiplicity=1)
    with pytest.raises(ValueError, match="every n"):
        log_partition(x**2, [x], [0, 10], points=50)


def test_fit_with_the_multiplicity_fixed_needs_three_eps():
    """Two points (or one) fit a line exactly: the 'fit' had residual 0 and a minimum-norm λ from one point."""
    from slt_companion.volume import fit_volume_scaling

    for eps in ([1e-3], [1e-3, 1e-4]):
        with pytest.raises(ValueError, match="at least 3"):
            fit_volume_scaling(eps, np.sqrt(eps), multiplicity=1)
    assert abs(fit_volume_scaling([1e-2, 1e-3, 1e-4], np.sqrt([1e-2, 1e-3, 1e-4]), multiplicity=1)["lam"] - 0.5) < 1e-12


def test_fit_of_m_needs_four_distinct_eps_and_finite_volumes():
    """Repeated eps gave a zero-residual 'fit' through three points; an infinite V gave nan silently."""
    eps = [1e-2, 1e-2, 1e-3, 1e-4]
    with pytest.raises(ValueError, match="at least 4 distinct values of eps, got 3"):
        fit_volume_scaling(eps, np.sqrt(eps))
    four = np.array([1e-2, 1e-3, 1e-4, 1e-5])
    assert abs(fit_volume_scaling(four, np.sqrt(four))["lam"] - 0.5) < 1e-9
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="every V must be a finite number"):
            fit_volume_scaling(four, np.array([1e-1, 1e-2, bad, 1e-3]))
        with pytest.raises(ValueError, match="every V must be a finite number"):
            fit_volume_scaling(four, np.array([1e-1, 1e-2, bad, 1e-3]), multiplicity=1)


def test_infinite_depth_and_n_are_refused():
    with pytest.raises(ValueError, match="depth must be a finite number > 0, got inf"):
        volume(x**2, [x], EPS, points=50, depth=math.inf)
    with pytest.raises(ValueError, match="depth must be a finite number > 0"):
        volume(x**2, [x], EPS, points=50, depth=-1.0)
    with pytest.raises(ValueError, match=r"every n must be a finite number > 0, got \[10.0, inf\]"):
        log_partition(x**2, [x], [10, math.inf], points=50)
