"""Rank-normalised ESS and split R-hat against known cases (iid draws, sticky and shifted chains)."""

import numpy as np
import pytest

from slt_companion.diagnostics import (SGLDDivergenceError, autocovariance, ess, rank_normalize, rhat, z_change,
                                       split_chains)


def ar1(rng, chains, draws, phi):
    x = np.zeros((chains, draws))
    x[:, 0] = rng.standard_normal(chains) / np.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + rng.standard_normal(chains)
    return x


def test_iid_normal_draws_have_ess_near_n_and_rhat_near_one():
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((4, 1000))
    assert 3200 < ess(draws) < 4800
    assert rhat(draws) < 1.01


def test_ar1_ess_matches_the_theoretical_value():
    # AR(1) with coefficient phi: integrated autocorrelation time (1 + phi) / (1 - phi) = 19 for phi = 0.9
    rng = np.random.default_rng(1)
    draws = ar1(rng, 4, 5000, 0.9)
    expected = draws.size / 19.0
    assert 0.7 * expected < ess(draws) < 1.3 * expected


def test_shifted_chain_gives_large_rhat():
    rng = np.random.default_rng(2)
    draws = rng.standard_normal((4, 500))
    draws[0] += 3.0
    assert rhat(draws) > 1.3


def test_chains_with_different_spread_are_caught_by_the_folded_rhat():
    rng = np.random.default_rng(3)
    draws = rng.standard_normal((4, 2000))
    draws[:2] *= 4.0          # same mean, different scale: bulk R-hat misses it, folded catches it
    assert rhat(draws) > 1.05


def test_stuck_chain_has_tiny_ess_and_large_rhat():
    rng = np.random.default_rng(4)
    trend = np.linspace(0, 5, 1000)[None, :] + 0.01 * rng.standard_normal((4, 1000))
    assert ess(trend) < 50
    assert rhat(trend) > 1.5


def test_invariance_to_monotone_transformations():
    rng = np.random.default_rng(5)
    draws = ar1(rng, 4, 800, 0.5)
    assert ess(draws) == pytest.approx(ess(np.exp(draws)))
    assert rhat(draws) == pytest.approx(rhat(np.exp(draws)))


def test_helpers():
    a = np.arange(10.0)[None, :]
    assert split_chains(np.arange(11.0)[None, :]).shape == (2, 5)
    z = rank_normalize(np.array([[3.0, 1.0, 2.0, 2.0]]))
    assert z[0, 1] < z[0, 2] == z[0, 3] < z[0, 0]
    acov = autocovariance(a)
    assert acov[0, 0] == pytest.approx(np.var(a))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 4 draws"):
        ess(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        rhat(np.array([[1.0, np.nan, 2.0, 3.0, 4.0]]))
    with pytest.raises(ValueError, match="chains, draws"):
        ess(np.zeros((2, 3, 4)))
    assert np.isnan(ess(np.ones((2, 10))))


def test_divergence_error_names_the_step_and_a_smaller_step_size():
    err = SGLDDivergenceError(step=17, chain=2, loss=float("inf"), step_size=1e-3)
    msg = str(err)
    assert "step 17" in msg and "chain 2" in msg and "step_size=0.0001" in msg
    assert err.step == 17 and err.step_size == 1e-3


def test_divergence_error_pickles_with_its_attributes():
    import pickle
    err = SGLDDivergenceError(step=5, chain=1, loss=float("nan"), step_size=2e-3, what="an exploding loss",
                              checkpoint=3, where="checkpoint 3 (step 40)", completed={0: "estimate 0"})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is SGLDDivergenceError and str(back) == str(err)
    assert (back.step, back.chain, back.step_size, back.checkpoint, back.completed) == (5, 1, 2e-3, 3, {0: "estimate 0"})


def test_z_change_is_the_difference_in_combined_standard_errors():
    assert z_change(1.0, 0.3, 2.0, 0.4) == pytest.approx(2.0)          # (2 - 1) / sqrt(0.3² + 0.4²)
    assert z_change(2.0, 0.3, 1.0, 0.4) == pytest.approx(-2.0)         # a fall is negative
    assert isinstance(z_change(1, 1, 2, 1), float)
    z = z_change(np.array([1.0, 2.0]), np.array([0.1, 0.2]), np.array([3.0, 1.0]), 0.2)   # arrays broadcast
    np.testing.assert_allclose(z, [2 / np.hypot(0.1, 0.2), -1 / np.hypot(0.2, 0.2)])
    assert z_change(1.0, 0.0, 2.0, 0.0) == np.inf and np.isnan(z_change(1.0, 0.0, 1.0, 0.0))
    assert np.isnan(z_change(1.0, float("nan"), 2.0, 0.1))               # an estimate not made: no z
    with pytest.raises(ValueError, match="sem_to"):
        z_change(1.0, 0.1, 2.0, -0.1)


@pytest.mark.parametrize("fn", [ess, rhat])
@pytest.mark.parametrize("shape, match", [((0, 10), r"draws holds no chains: shape \(chains, draws\) = \(0, 10\)"),
                                          ((0, 0), r"draws holds no chains"),
                                          ((3, 0), r"at least 4 draws per chain, got 0 \(shape \(chains, draws\) = \(3, 0\)\)")])
def test_no_chains_or_no_draws_are_named(fn, shape, match):
    with pytest.raises(ValueError, match=match):
        fn(np.zeros(shape))
