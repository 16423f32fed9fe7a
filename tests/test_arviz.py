"""The ArviZ bridge (slt_companion.arviz_interop): our R̂ / ESS equal ArviZ's on the same draws, and an LLC
estimate converts to an ArviZ object that az.summary and az.plot_trace accept."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import warnings

with warnings.catch_warnings():       # arviz 0.23 announces its 1.x refactor on import; it is pinned in requirements.txt
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

from slt_companion import diagnostics

# arviz 0.23's matplotlib backend calls an API matplotlib 3.11 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")
from slt_companion.arviz_interop import to_arviz

RTOL = 1e-6


def _ar1(chains, draws, phi, seed):
    rng = np.random.default_rng(seed)
    x = np.empty((chains, draws))
    x[:, 0] = rng.normal(size=chains) / np.sqrt(1 - phi ** 2)
    noise = rng.normal(size=(chains, draws))
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def _az_ess(draws):
    return float(az.ess(np.asarray(draws), method="bulk"))


def _az_rhat(draws):
    return float(az.rhat(np.asarray(draws), method="rank"))


@pytest.fixture(scope="module")
def estimate():
    from slt_companion.data import teacher_student
    from slt_companion.llc import estimate_llc, half_mse
    from slt_companion.models import DeepLinearNetwork

    d = teacher_student(2000, 3, 3, 1, seed=0)
    model = DeepLinearNetwork((3, 2, 3)).fit_least_squares(d.x, d.y)
    return estimate_llc(model, half_mse, d.xy, num_chains=2, num_draws=200, num_burnin=100, step_size=1e-4,
                        progress=False)


@pytest.mark.parametrize("chains,draws", [(4, 200), (2, 1000), (8, 57), (3, 333), (2, 5), (6, 1001)])
@pytest.mark.parametrize("phi", [0.0, 0.5, 0.95, -0.3])
def test_diagnostics_equal_arviz(chains, draws, phi):
    """Same algorithm (Vehtari et al. 2021) as ArviZ: bulk ESS and rank R̂ agree to rounding error, for odd
    lengths (the middle draw dropped by the split), sticky and anti-correlated chains, and chains at different
    levels."""
    for shift in (0.0, 0.5):
        x = _ar1(chains, draws, phi, seed=chains * draws) + shift * np.arange(chains)[:, None]
        assert diagnostics.ess(x) == pytest.approx(_az_ess(x), rel=RTOL)
        assert diagnostics.rhat(x) == pytest.approx(_az_rhat(x), rel=RTOL)


def test_diagnostics_equal_arviz_with_ties():
    x = np.round(_ar1(4, 200, 0.5, seed=9), 1)          # ties get the average rank in both
    assert diagnostics.ess(x) == pytest.approx(_az_ess(x), rel=RTOL)
    assert diagnostics.rhat(x) == pytest.approx(_az_rhat(x), rel=RTOL)


def test_to_arviz_summary_and_trace_plot(estimate):
    est = estimate
    burn = est.config.num_burnin
    idata = to_arviz(est)
    post = idata["posterior"]
    assert post["llc"].dims == ("chain", "draw") and post["llc"].shape == est.llc_trace.shape == (2, 200)
    np.testing.assert_array_equal(post["llc"].values, est.llc_trace)
    np.testing.assert_array_equal(post["loss"].values, est.trace[:, burn:])
    np.testing.assert_array_equal(idata["warmup_posterior"]["loss"].values, est.trace[:, :burn])
    assert post.attrs["num_burnin"] == burn and post.attrs["num_draws"] == 200
    assert post.attrs["init_loss"] == pytest.approx(est.init_loss)

    # the draws ArviZ sees give our diagnostics, through its own summary table
    row = az.summary(idata, round_to="none").loc["llc"]
    assert float(row["ess_bulk"]) == pytest.approx(est.ess, rel=RTOL)
    assert float(row["r_hat"]) == pytest.approx(est.rhat, rel=RTOL)
    assert float(row["mean"]) == pytest.approx(est.mean, rel=1e-12)
    assert diagnostics.ess(est.llc_trace) == pytest.approx(_az_ess(est.llc_trace), rel=RTOL)
    assert diagnostics.rhat(est.llc_trace) == pytest.approx(_az_rhat(est.llc_trace), rel=RTOL)

    import matplotlib.pyplot as plt

    az.plot_trace(idata)
    plt.close("all")


def test_missing_arviz_says_what_to_install(estimate, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_arviz(name, *args, **kwargs):
        if name.split(".")[0] in ("arviz", "arviz_base"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_arviz)
    with pytest.raises(ImportError, match="pip install arviz=="):
        to_arviz(estimate)
