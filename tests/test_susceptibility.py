"""Tests of slt_companion.llc.susceptibility against the closed form of a linear-Gaussian model."""

import numpy as np
import pytest
import torch

from slt_companion.llc import SusceptibilityEstimate, default_nbeta, half_mse, loss_observable, susceptibility
from slt_companion.models import DeepLinearNetwork


def _problem(n=200, n2=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g, dtype=torch.float64)
    Y = (X @ torch.tensor([1.0, -1.0], dtype=torch.float64) + torch.randn(n, generator=g, dtype=torch.float64))[:, None]
    X2 = torch.randn(n2, 2, generator=g, dtype=torch.float64)
    Y2 = (X2 @ torch.tensor([1.0, 1.0], dtype=torch.float64) + torch.randn(n2, generator=g, dtype=torch.float64))[:, None]
    model = DeepLinearNetwork([2, 1]).double().fit_least_squares(X, Y)
    return model, (X, Y), (X2, Y2)


def _weights(p):
    return p["layers.0.weight"][0]


def _exact(model, data, pert, nbeta, gamma, mode):
    """χ of w and of L_q' for w ~ N(ŵ, (nβH + γI)⁻¹): Cov(½wᵀAw + aᵀw, ½wᵀBw + bᵀw) = ½tr(AΣBΣ) + (Am+a)ᵀΣ(Bm+b)."""
    (X, Y), (X2, Y2) = data, pert
    H, h = (X.T @ X / len(X)).numpy(), -(X.T @ Y / len(X)).numpy()[:, 0]
    H2, h2 = (X2.T @ X2 / len(X2)).numpy(), -(X2.T @ Y2 / len(X2)).numpy()[:, 0]
    m = model.layers[0].weight.detach().numpy()[0]
    S = np.linalg.inv(nbeta * H + gamma * np.eye(2))
    B, b = (H2 - H, h2 - h) if mode == "mixture" else (H2, h2)
    g = B @ m + b
    chi_w = -nbeta * S @ g
    chi_l = -nbeta * (0.5 * np.trace(H2 @ S @ B @ S) + (H2 @ m + h2) @ S @ g)
    return np.append(chi_w, chi_l), float(np.linalg.eigvalsh(nbeta * H + gamma * np.eye(2)).max())


@pytest.mark.parametrize("mode", ["mixture", "add"])
def test_closed_form_linear_gaussian(mode):
    model, data, pert = _problem()
    nbeta, gamma = default_nbeta(200), 1.0
    exact, hmax = _exact(model, data, pert, nbeta, gamma, mode)
    est = susceptibility(model, half_mse, data, {"shift": pert}, {"w": _weights, "L": loss_observable(model, half_mse, pert)},
                         num_chains=4, num_draws=2000, num_burnin=200, step_size=0.1 / hmax, localization=gamma,
                         nbeta=nbeta, batch_size=200, seed=0, progress=False, mode=mode)
    assert isinstance(est, SusceptibilityEstimate)
    assert est.observables == ["w[0]", "w[1]", "L"] and est.perturbations == ["shift"]
    assert est.value.shape == (1, 3) and est.per_chain.shape == (4, 1, 3) and np.isfinite(est.sem).all()
    err = np.abs(est.value[0] - exact)
    assert (err <= 3 * est.sem[0] + 0.1 * np.abs(exact)).all(), (est.value[0], exact, est.sem[0])
    assert est["shift", "w[1]"] == pytest.approx(est.value[0, 1])


def test_deterministic_for_fixed_seed():
    model, data, pert = _problem(n=50, n2=20)
    kw = dict(num_chains=2, num_draws=50, num_burnin=10, step_size=1e-3, nbeta=20.0, batch_size=16, seed=3,
              progress=False)
    a = susceptibility(model, half_mse, data, pert, _weights, **kw)
    b = susceptibility(model, half_mse, data, pert, _weights, **kw)
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(a.observable_trace, b.observable_trace)
    c = susceptibility(model, half_mse, data, pert, _weights, **dict(kw, seed=4))
    assert not np.array_equal(a.value, c.value)
    d = SusceptibilityEstimate.from_dict(a.to_dict())
    np.testing.assert_array_equal(d.value, a.value)
    assert d.config == a.config
    assert set(d.extras) == set(a.extras)                      # the diagnostics come back too


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="both"), "mode"),
    (dict(thin=0), "thin"),
    (dict(thin=20, num_draws=50), "num_draws // thin"),
    (dict(observables=3.0), "observables"),
    (dict(observables={"m": lambda p: torch.ones(2, 2)}), "scalar or a 1-D"),
    (dict(observables={"nan": lambda p: p["layers.0.weight"].sum() * float("nan")}), "NaN"),
    (dict(perturbation_data=(torch.ones(5, 3, dtype=torch.float64), torch.ones(5, 1, dtype=torch.float64))),
     "perturbation_data"),
    (dict(perturbation_data={}), "empty"),
    (dict(step_size="big"), "step_size"),
])
def test_argument_errors(kwargs, match):
    model, data, pert = _problem(n=50, n2=20)
    args = dict(perturbation_data=pert, observables=_weights)
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    kw = dict(num_chains=2, num_draws=50, num_burnin=10, step_size=1e-3, nbeta=20.0, batch_size=16, progress=False)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        susceptibility(model, half_mse, data, args["perturbation_data"], args["observables"], **kw)


def test_intervention_helpers():
    from slt_companion.interventions import feature_slice, tms_data_frequencies, train_tms

    d = tms_data_frequencies(2000, [1, 1, 1, 1, 1, 0.1], seed=0)
    x = d.x
    assert x.shape == (2000, 6) and ((x != 0).sum(1) == 1).all()
    counts = (x != 0).sum(0).numpy()
    assert counts[5] < 0.3 * counts[:5].mean()
    np.testing.assert_array_equal(x, tms_data_frequencies(2000, [1, 1, 1, 1, 1, 0.1], seed=0).x)
    xs, ys = feature_slice(d, 5)
    assert (xs[:, 5] != 0).all() and len(xs) == counts[5]
    out = train_tms(torch.stack([x[:100], x[100:200]]), steps=20, seed=0)
    assert out["W"].shape == (2, 2, 6) and out["b"].shape == (2, 6) and out["train_loss"].shape == (2,)
    for bad, match in (([1, -1], "frequencies"), ([0, 0], "frequencies")):
        with pytest.raises(ValueError, match=match):
            tms_data_frequencies(10, bad)
    with pytest.raises(ValueError, match="feature"):
        feature_slice(d, 6)
    with pytest.raises(ValueError, match="X must"):
        train_tms(x)


def test_params_restriction_freezes_the_rest():
    """With params= only that component is sampled; observables still see every parameter (the rest at w*)."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(60, 2, generator=g, dtype=torch.float64)
    Y = X[:, :1] + 0.1 * torch.randn(60, 1, generator=g, dtype=torch.float64)
    model = DeepLinearNetwork([2, 2, 1]).double().fit_least_squares(X, Y)
    est = susceptibility(model, half_mse, (X, Y), (X[:20], Y[:20]),
                         {"frozen": lambda p: p["layers.0.weight"].sum(), "sampled": lambda p: p["layers.1.weight"].sum()},
                         params="layers.1", num_chains=2, num_draws=100, num_burnin=10, step_size=1e-3, nbeta=20.0,
                         batch_size=30, progress=False)
    assert np.ptp(est.observable_trace[..., 0]) == 0 and abs(est.value[0, 0]) < 1e-20
    assert est.value[0, 1] != 0.0 and np.ptp(est.observable_trace[..., 1]) > 0


def test_converged_says_per_perturbation_what_the_warning_says():
    import warnings

    from slt_companion.convergence import LLCConvergenceWarning

    model, data, pert = _problem(n=50, n2=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = susceptibility(model, half_mse, data, {"a": pert, "b": pert}, _weights, num_chains=2, num_draws=50,
                             num_burnin=10, step_size=1e-3, nbeta=20.0, batch_size=16, seed=3, progress=False)
    warned = any(issubclass(w.category, LLCConvergenceWarning) for w in caught)
    assert est.converged.shape == (2,) and est.converged.dtype == bool
    assert warned == (not est.converged.all())
    d = est.to_dict()
    rng = np.random.default_rng(0)
    mixed = SusceptibilityEstimate.from_dict(dict(d, perturbation_trace=rng.standard_normal((4, 2000, 2))))
    assert mixed.converged.all()                                   # independent draws: R̂ ≈ 1, ESS ≈ 8,000
    stuck = rng.standard_normal((4, 2000, 2)) + np.array([0.0, 5.0, 10.0, 15.0])[:, None, None]
    assert not SusceptibilityEstimate.from_dict(dict(d, perturbation_trace=stuck)).converged.any()   # chains apart
    flat = SusceptibilityEstimate.from_dict(dict(d, perturbation_trace=np.zeros((2, 50, 2))))
    assert flat.converged.all()                                    # a constant trace: nothing to diagnose
