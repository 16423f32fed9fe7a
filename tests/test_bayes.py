"""slt_companion.bayes: the free energy by quadrature against brute force, its slope, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slt_companion.bayes import ProductModel, fit_free_energy, product_prior_density


def logsumexp(v) -> float:
    v = np.asarray(v, dtype=float).ravel()
    top = v.max()
    return float(top + np.log(np.exp(v - top).sum()))


def _brute_force_free_energy(model: ProductModel, n: int, data=None, grid: int = 4001) -> float:
    """-log of the 2-D integral of exp(-n(L_n - L_n(w0))) over the uniform prior, on a fine midpoint grid."""
    B = model.prior_bound
    edges = np.linspace(-B, B, grid + 1)
    mid = (edges[:-1] + edges[1:]) / 2
    A, Bm = np.meshgrid(mid, mid)
    energy = model._energy(A * Bm, n, data)
    cell = (2 * B / grid) ** 2 / (2 * B) ** 2  # prior mass of a cell
    return -float(logsumexp(-energy) + math.log(cell))


@pytest.mark.parametrize("p0", [0.0, 0.3])
@pytest.mark.parametrize("n", [10, 100, 1000])
def test_quadrature_matches_brute_force(p0, n):
    model = ProductModel(true_product=p0)
    exact = model.free_energy(n)
    brute = _brute_force_free_energy(model, n)
    assert exact == pytest.approx(brute, rel=2e-3, abs=2e-3)


def test_quadrature_with_data_matches_brute_force():
    model = ProductModel(true_product=0.0)
    data = model.sample(200, seed=3)
    assert model.free_energy(200, data=data) == pytest.approx(_brute_force_free_energy(model, 200, data),
                                                             rel=2e-3, abs=2e-3)


def test_prior_density_integrates_to_one():
    edges = np.linspace(-1, 1, 200001)
    mid, h = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]  # midpoints avoid the log singularity at 0
    assert product_prior_density(mid).sum() * h == pytest.approx(1.0, abs=2e-3)
    assert product_prior_density(1.5) == 0.0


@pytest.mark.parametrize("p0, lam, m", [(0.0, 0.5, 2), (0.3, 0.5, 1)])
def test_free_energy_slope_is_the_learning_coefficient(p0, lam, m):
    """F_n = λ log n − (m−1) log log n + O(1): λ = 1/2, not d/2 = 1, with m = 2 at the origin."""
    model = ProductModel(true_product=p0)
    ns = np.logspace(4, 10, 13).astype(int)
    F = [model.free_energy(int(n)) for n in ns]
    fit = fit_free_energy(ns, F, multiplicity=m)
    assert fit["lam"] == pytest.approx(lam, abs=0.01)
    assert fit["residual_rms"] < 0.05


def test_posterior_grid_is_normalised_and_concentrates_on_the_true_set():
    model = ProductModel(true_product=0.3)
    a, b, dens = model.posterior_grid(1000, grid_size=201)
    da = a[1] - a[0]
    assert dens.sum() * da * da == pytest.approx(1.0)
    A, Bm = np.meshgrid(a, b)
    mass_near = dens[np.abs(A * Bm - 0.3) < 0.1].sum() * da * da
    assert mass_near > 0.95


def test_sampling_is_deterministic():
    model = ProductModel(true_product=0.3, noise_std=0.5)
    x1, y1 = model.sample(50, seed=7)
    x2, y2 = model.sample(50, seed=7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="noise_std"):
        ProductModel(noise_std=0)
    with pytest.raises(ValueError, match="prior_bound"):
        ProductModel(prior_bound=-1)
    with pytest.raises(ValueError, match="true_product"):
        ProductModel(true_product=2.0)
    model = ProductModel()
    with pytest.raises(ValueError, match="n must be a positive integer"):
        model.free_energy(0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        model.free_energy(10.5)
    with pytest.raises(ValueError, match="n=10 samples"):
        model.free_energy(10, data=model.sample(5))
    x, y = model.sample(10)
    y[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.free_energy(10, data=(x, y))
    with pytest.raises(ValueError, match="at least 4"):
        fit_free_energy([10, 100, 1000], [1, 2, 3])
    with pytest.raises(ValueError, match="exceed e"):
        fit_free_energy([1, 100, 1000, 10000], [1, 2, 3, 4])
