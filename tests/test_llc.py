"""The LLC estimator: accuracy on a reduced-rank regression, determinism, the paired baseline, errors."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from slt_companion import cache
from slt_companion.data import teacher_student
from slt_companion.llc import LLCEstimate, default_nbeta, estimate_llc
from slt_companion.models import DeepLinearNetwork
from slt_companion.theory import rrr_rlct


def mse(out, y):
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


@pytest.fixture(scope="module")
def rrr():
    d = teacher_student(10_000, 4, 4, 1, seed=0)
    m = DeepLinearNetwork([4, 3, 4]).fit_least_squares(d.x, d.y)
    return m, d


@pytest.fixture(scope="module")
def rrr_estimate(rrr):
    m, d = rrr
    return estimate_llc(m, mse, d.xy, num_chains=4, num_draws=800, num_burnin=500, seed=0, progress=False)


def test_rrr_estimate_is_within_ten_percent_of_aoyagi_watanabe(rrr_estimate):
    lam = float(rrr_rlct(4, 4, 3, 1).lam)          # Aoyagi-Watanabe case 1, (M, H, N, r) = (4, 3, 4, 1)
    assert lam == 6.0
    est = rrr_estimate
    assert abs(est.mean - lam) < 0.10 * lam, est
    assert est.rhat < 1.05 and est.ess > 50
    assert est.trace.shape == (4, 500 + 800) and est.llc_trace.shape == (4, 800)
    assert est.per_chain.shape == (4,) and math.isclose(est.per_chain.mean(), est.mean, rel_tol=1e-9)
    assert est.config.nbeta == pytest.approx(10_000 / math.log(10_000))


def test_init_loss_is_the_full_data_loss(rrr, rrr_estimate):
    m, d = rrr
    with torch.no_grad():
        assert rrr_estimate.init_loss == pytest.approx(float(mse(m(d.x), d.y)), rel=1e-5)


def test_same_seed_identical_estimate(rrr):
    m, d = rrr
    kw = dict(num_chains=2, num_draws=100, num_burnin=20, step_size=1e-4, progress=False)
    a = estimate_llc(m, mse, d.xy, seed=3, **kw)
    b = estimate_llc(m, mse, d.xy, seed=3, **kw)
    c = estimate_llc(m, mse, d.xy, seed=4, **kw)
    assert a.mean == b.mean and np.array_equal(a.trace, b.trace)
    assert a.mean != c.mean


def test_auto_step_size_is_deterministic_and_recorded(rrr, rrr_estimate):
    info = rrr_estimate.extras["auto_step"]
    assert rrr_estimate.config.step_size == pytest.approx(0.1 / info["h_max"])
    assert info["h_max"] >= info["h0"] > 0


def test_paired_baseline_beats_full_and_one_batch(rrr):
    m, d = rrr
    kw = dict(num_chains=4, num_draws=200, num_burnin=50, step_size=2e-5, seed=1, progress=False)
    paired = estimate_llc(m, mse, d.xy, baseline="paired", **kw)
    full = estimate_llc(m, mse, d.xy, baseline="full", **kw)
    batch = estimate_llc(m, mse, d.xy, baseline="batch", **kw)
    # same chains, so the same draws: the means agree, the chain-to-chain spread does not
    assert paired.mean == pytest.approx(full.mean, abs=3 * full.std)
    assert paired.llc_trace.std() < full.llc_trace.std() / 3   # per-draw minibatch noise cancels
    assert paired.sem < full.sem / 2
    # one batch's loss differs from L_n(w*) by O(1/sqrt(batch)), times nβ ~ 1000: far off
    assert abs(batch.extras["batch_init_loss"] - paired.init_loss) * paired.config.nbeta > 5
    assert abs(batch.mean - paired.mean) > 5


def test_refined_llc_of_one_layer_is_smaller(rrr, rrr_estimate):
    m, d = rrr
    est = estimate_llc(m, mse, d.xy, params="layers.0", num_chains=2, num_draws=200, num_burnin=100,
                       step_size=rrr_estimate.config.step_size, seed=0, progress=False)
    assert est.trace.shape == (2, 300)
    assert 0 < est.mean < rrr_estimate.mean


def test_nbeta_and_cache_roundtrip(rrr_estimate, tmp_path, monkeypatch):
    assert default_nbeta(100) == pytest.approx(100 / math.log(100))
    with pytest.raises(ValueError, match="n must be at least 2"):
        default_nbeta(1)
    monkeypatch.setenv("SLT_CACHE_DIR", str(tmp_path))
    stored = cache.cached("llc-test", {"k": 1}, rrr_estimate.to_dict)
    again = LLCEstimate.from_dict(cache.cached("llc-test", {"k": 1}, lambda: {}))
    assert again.mean == rrr_estimate.mean and again.config == rrr_estimate.config
    assert np.array_equal(again.llc_trace, stored["llc_trace"])


def test_plot_draws_theory_beside_estimate(rrr_estimate):
    import matplotlib

    matplotlib.use("Agg")
    ax = rrr_estimate.plot(theory=6.0)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("theory" in s for s in labels) and ax.get_xlabel() and ax.get_ylabel()


def test_errors_name_the_argument(rrr):
    m, d = rrr
    with pytest.raises(ValueError, match="first 8 rows of data x"):
        estimate_llc(m, mse, (torch.randn(100, 5), torch.randn(100, 4)), progress=False)
    with pytest.raises(TypeError, match="dtype"):
        estimate_llc(m, mse, (d.x.double(), d.y.double()), progress=False)
    with pytest.raises(ValueError, match="step_size"):
        estimate_llc(m, mse, d.xy, step_size="fast", progress=False)
    with pytest.raises(ValueError, match="baseline"):
        estimate_llc(m, mse, d.xy, baseline="median", progress=False)
    with pytest.raises(ValueError, match="num_draws"):
        estimate_llc(m, mse, d.xy, num_draws=0, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        estimate_llc(m, lambda out, y: (out - y) ** 2, d.xy, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            estimate_llc(m, mse, d.xy, device="cuda", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_estimate_on_cuda(rrr):
    """With the library's defaults (draws until converged) a GPU run converges to Aoyagi's λ = 6 and agrees with the
    CPU's run within the two estimates' errors (ESS-aware): the GPU draws its noise from its own generators, so the
    two agree in distribution (six seeds on the CPU, 2026-11-30: all converged, 5.81-6.37)."""
    import copy

    m, d = rrr
    gm = copy.deepcopy(m).cuda()
    gpu = estimate_llc(gm, mse, (d.x.cuda(), d.y.cuda()), num_chains=4, seed=0, device="cuda", progress=False)
    cpu = estimate_llc(m, mse, d.xy, num_chains=4, seed=0, progress=False)
    assert gpu.converged and cpu.converged, (gpu, cpu)
    assert abs(gpu.mean - 6.0) < 0.6, gpu
    assert abs(gpu.mean - cpu.mean) < 4 * math.hypot(gpu.sem, cpu.sem), (gpu, cpu)


def test_ground_truth_cases_are_defined_with_exact_theory():
    from slt_companion.llc import GROUND_TRUTH, ground_truth_problem

    expected = {"normal crossing w²": 0.25, "normal crossing w₁w₂²": 0.25, "RRR 4-3-4, rank 1": 6.0,
                "RRR 5-4-5, rank 2": 10.5, "DLN 5-4-3-4-5, rank 2": 9.0, "DLN 6-4-2-4-6, rank 1": 7.0,
                "RRR 4-3-4, rank 0, noise-free at the teacher": 5.0,
                "DLN 3-3-3-3, full rank, noise-free at the teacher": 4.5}
    assert set(expected) <= set(GROUND_TRUTH) and len(GROUND_TRUTH) >= 20
    for name, lam_expected in expected.items():
        model, data, lam, mult = ground_truth_problem(name)
        assert float(lam) == lam_expected
    assert sum(len(w) >= 4 for w in (c.get("widths", ()) for c in GROUND_TRUTH.values())) >= 2  # ≥ 3 layers
    with pytest.raises(ValueError, match="unknown ground-truth case"):
        ground_truth_problem("nope")


def test_toy_potential_exact_converges_and_matches_the_regular_case():
    from slt_companion.llc import toy_potential_exact

    a = toy_potential_exact((1, 2), 1000, seed=0)
    assert a == pytest.approx(toy_potential_exact((1, 2), 1000, seed=0, points=801), abs=1e-6)
    # w2 alone: a regular one-parameter model; with the truth as centre the target is below 1/2 at finite n
    b = np.mean([toy_potential_exact((0, 1), 100_000, seed=s) for s in range(5)])
    assert 0.35 < b < 0.55
    with pytest.raises(ValueError, match="exponents"):
        toy_potential_exact((0, 0), 100)


# ---- issue 20: bad input is an error before sampling, never a silently wrong λ̂ -------------------------------
def _small_problem(out_dim=1, n=200):
    d = teacher_student(n, 3, out_dim, 1, seed=1)
    return DeepLinearNetwork([3, 2, out_dim]).fit_least_squares(d.x, d.y), d


FAST = dict(num_chains=2, num_draws=20, num_burnin=0, step_size=1e-4, progress=False)


def test_targets_that_broadcast_against_the_output_are_an_error():
    # issue 20.2: y (n,) against model(x) (n, 1) broadcast to (n, n) inside the loss and gave a wrong λ̂ silently
    m, d = _small_problem()
    with pytest.raises(ValueError, match=r"broadcast to \(200, 200\).*y = y.reshape\(-1, 1\)"):
        estimate_llc(m, lambda o, y: 0.5 * ((o - y) ** 2).mean(), (d.x, d.y[:, 0]), **FAST)
    est = estimate_llc(m, lambda o, y: 0.5 * ((o - y) ** 2).mean(), (d.x, d.y), **FAST)   # matching shapes run
    assert math.isfinite(est.mean)


def test_a_loss_summed_over_the_batch_is_an_error():
    # issue 20.3: a summed loss makes λ̂ wrong by the batch size; it was detected (per_sample_losses) but not reported
    m, d = _small_problem()
    with pytest.raises(ValueError, match="adds up the per-sample losses.*mean"):
        estimate_llc(m, lambda o, y: 0.5 * ((o - y) ** 2).sum(), d.xy, **FAST)
    with pytest.raises(ValueError, match="adds up"):          # also with a baseline that never calls per_sample_losses
        estimate_llc(m, lambda o, y: 0.5 * ((o - y) ** 2).sum(), d.xy, baseline="full", **FAST)


def test_non_finite_data_or_loss_is_named_before_sampling():
    # issue 20.4: NaN/inf in the data or the loss at w* were blamed on dropout, the fast path or the step size
    m, d = _small_problem()
    x, y = d.x.clone(), d.y.clone()
    x[150, 1] = float("nan")
    y[7, 0] = float("inf")
    for data, name in (((x, d.y), "data x holds 1 NaN/inf entries .* row 150"), ((d.x, y), "data y .* row 7")):
        with pytest.raises(ValueError, match=name) as err:
            estimate_llc(m, mse, data, **FAST)
        assert "dropout" not in str(err.value) and "step" not in str(err.value)
    with pytest.raises(ValueError, match=r"loss_fn\(model\(x\), y\) is nan at the centre w\*") as err:
        estimate_llc(m, lambda o, t: mse(o, t) * float("nan"), d.xy, **FAST)
    assert "dropout" not in str(err.value)
    big = d.y.clone()
    big[100, 0] = 1e30                      # finite data whose loss overflows: not "step size too large at step 0"
    with pytest.raises(ValueError, match="is inf at the centre w\\* on the full data"):
        estimate_llc(m, mse, (d.x, big), **FAST)
    bad = copy.deepcopy(m)
    with torch.no_grad():
        next(bad.parameters())[0, 0] = float("inf")
    with pytest.raises(ValueError, match="parameters .* NaN/inf"):
        estimate_llc(bad, mse, d.xy, **FAST)


def test_numpy_and_torch_numbers_are_accepted():
    # issue 20.8: np.float32(1e-4) or torch.tensor(1e-4) was rejected as "must be a finite number > 0"
    m, d = _small_problem()
    ref = estimate_llc(m, mse, d.xy, **FAST)
    for cast in (np.float32, np.float64, torch.tensor):
        kw = {**FAST, "step_size": cast(1e-4), "localization": cast(1.0), "nbeta": cast(default_nbeta(200))}
        est = estimate_llc(m, mse, d.xy, **kw)
        assert isinstance(est.config.step_size, float) and isinstance(est.config.nbeta, float)
        assert est.mean == pytest.approx(ref.mean, rel=1e-5)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        estimate_llc(m, mse, d.xy, **{**FAST, "step_size": np.float32(-1e-4)})


def test_a_flat_loss_is_not_called_non_finite():
    # issue 20.8: a zero Hessian (flat loss, localization=0) was reported as "a non-finite Hessian"
    m, d = _small_problem()
    with pytest.raises(ValueError, match="is zero .*pass a number as step_size, or a localization > 0") as err:
        estimate_llc(m, lambda o, y: 0.0 * o.sum() + 1.0, d.xy, **{**FAST, "step_size": "auto", "localization": 0.0})
    assert "non-finite" not in str(err.value)


def test_duplicate_params_names_are_an_error():
    # issue 20.8: params=["layers.0.weight"] * 2 sampled that weight twice (doubling the dimension)
    d = teacher_student(200, 3, 1, 1, seed=1)
    m = DeepLinearNetwork([3, 2, 2, 1]).fit_least_squares(d.x, d.y)
    with pytest.raises(ValueError, match=r"params lists \['layers.0.weight'\] more than once"):
        estimate_llc(m, mse, d.xy, params=["layers.0.weight", "layers.0.weight"], **FAST)
    assert estimate_llc(m, mse, d.xy, params=["layers.0.weight"], **FAST).mean == estimate_llc(
        m, mse, d.xy, params="layers.0", **FAST).mean


def test_a_negative_estimate_warns():
    # issue 20.8: a negative λ̂ (here with R̂ ≈ 2: chains that disagree) was returned without a warning
    from slt_companion.diagnostics import NegativeLLCWarning
    from slt_companion.llc import _summarize
    from slt_companion.sampling import SamplerConfig

    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=2, num_draws=200)
    noise = np.random.default_rng(0).normal(size=(2, 200))
    disagree = np.stack([noise[0] - 6.0, noise[1] + 2.0])
    with pytest.warns(NegativeLLCWarning, match=r"λ̂ = -2.* negative: the chains disagree \(R̂ = 1\.[5-9]\d > 1\.1\)"):
        est = _summarize(disagree, disagree, 0.0, cfg, "paired", 0.0, {})
    assert est.mean < 0 and est.rhat > 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _summarize(noise - 0.01, noise, 0.0, cfg, "paired", 0.0, {})      # within its error of 0: no warning
    m, d = _small_problem()
    off = copy.deepcopy(m)                              # w* away from the minimum: the chains go downhill
    with torch.no_grad():
        next(off.parameters()).add_(0.5)
    with pytest.warns(NegativeLLCWarning, match="negative.*local minimum"):
        est = estimate_llc(off, mse, d.xy, **{**FAST, "step_size": 1e-3, "num_draws": 50})
    assert est.mean < 0


def test_a_hook_added_after_an_estimate_is_not_served_the_old_centre_losses():
    """The per-sample losses at w* are remembered with the model; a forward hook (or a plain attribute the forward
    reads) changes the function without changing a tensor, and must not reuse them."""
    from slt_companion.llc import half_mse

    x, y = _hook_data()
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    kw = dict(num_chains=2, num_draws=20, num_burnin=5, step_size=1e-4, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = estimate_llc(net, half_mse, (x, y), **kw).init_loss
        handle = net[1].register_forward_hook(lambda mod, inp, out: out * 0)
        with torch.no_grad():
            truth = float(half_mse(net(x), y))
        hooked = estimate_llc(net, half_mse, (x, y), **kw).init_loss
        handle.remove()
        again = estimate_llc(net, half_mse, (x, y), **kw).init_loss
    assert hooked == pytest.approx(truth, rel=1e-5) and hooked != pytest.approx(before, rel=1e-3)
    assert again == pytest.approx(before, rel=1e-6)


def test_data_edited_in_place_outside_torch_is_not_served_the_old_centre_losses():
    """Editing the data through a NumPy array that shares its memory, or through ``.data``, does not bump torch's
    version counters; the remembered per-sample losses at w* must not outlive the edit."""
    from slt_companion.llc import half_mse

    x, y0 = _hook_data()
    arr = y0.numpy().copy()
    y = torch.from_numpy(arr)                           # shares arr's memory
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    kw = dict(num_chains=2, num_draws=20, num_burnin=5, step_size=1e-4, progress=False)

    def truth():
        with torch.no_grad():
            return float(half_mse(net(x), y))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = estimate_llc(net, half_mse, (x, y), **kw)
        again = estimate_llc(net, half_mse, (x, y), **kw)
        arr += 1.0
        after_numpy = estimate_llc(net, half_mse, (x, y), **kw).init_loss
        assert after_numpy == pytest.approx(truth(), rel=1e-6)
        y.data.add_(1.0)
        after_data = estimate_llc(net, half_mse, (x, y), **kw).init_loss
        assert after_data == pytest.approx(truth(), rel=1e-6)
    assert again.mean == first.mean and again.init_loss == first.init_loss      # unedited: the same numbers
    assert after_numpy != pytest.approx(first.init_loss, rel=1e-3) and after_data != pytest.approx(after_numpy)


def _hook_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    return x, x @ torch.randn(3, 2, generator=g)


def test_half_mse_of_one_number_per_sample_is_its_mean():
    from slt_companion.llc import half_mse

    out, y = torch.arange(4.0), torch.zeros(4)
    assert float(half_mse(out, y)) == pytest.approx(0.5 * (0 + 1 + 4 + 9) / 4)
    assert float(half_mse(out, y)) == float(half_mse(out[:, None], y[:, None]))       # (n,) as (n, 1)
    batched = half_mse.batched(torch.stack([out, 2 * out]), torch.zeros(2, 4))
    assert torch.allclose(batched, torch.stack([half_mse(out, y), half_mse(2 * out, y)]))


def test_to_dict_keeps_the_diagnostics_and_the_burn_in(rrr_estimate, tmp_path, monkeypatch):
    """``from_dict(to_dict())`` (and a trip through the cache) gives back ``extras`` (the auto step size's
    diagnostics, ...) and ``burnin_llc_trace``, not only the numbers."""
    from dataclasses import replace

    est = replace(rrr_estimate, extras={**rrr_estimate.extras,
                                        "probe": {"array": np.arange(3.0), "n": np.int64(4), "why": "a test"}})
    monkeypatch.setenv("SLT_CACHE_DIR", str(tmp_path))
    for d in (est.to_dict(), cache.cached("llc-extras", {"k": 1}, est.to_dict)):
        back = LLCEstimate.from_dict(d)
        assert back.extras["probe"] == {"array": [0.0, 1.0, 2.0], "n": 4, "why": "a test"}
        assert set(back.extras) == set(est.extras)
        if est.burnin_llc_trace is None:
            assert back.burnin_llc_trace is None
        else:
            assert np.array_equal(back.burnin_llc_trace, est.burnin_llc_trace)


def test_a_too_small_max_draws_is_named_not_the_internal_min_draws():
    m = DeepLinearNetwork([2, 2])
    with pytest.raises(ValueError, match="max_draws must be an integer ≥ 4 .*got 3"):
        estimate_llc(m, mse, (torch.zeros(16, 2), torch.zeros(16, 2)), num_draws="auto", max_draws=3,
                     step_size=1e-3, progress=False)
