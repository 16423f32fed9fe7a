"""Checkpoints as chains: ``estimate_llcs`` samples many centres in one batched SGLD run and gives, for each,
exactly what ``estimate_llc`` gives on its own (same seed), whatever else runs beside it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from slt_companion import config as slt_config
from slt_companion.convergence import LLCConvergenceWarning
from slt_companion.diagnostics import NegativeLLCWarning, SGLDDivergenceError
from slt_companion.llc import estimate_llc, estimate_llcs, half_mse


def _data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.randn(3, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g)
    return x, y


def _net(seed, hidden=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))


def _trained(seed, steps=300, hidden=4):
    x, y = _data()
    m = _net(seed, hidden)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        half_mse(m(x), y).backward()
        opt.step()
    return m


@pytest.fixture(scope="module")
def checkpoints():
    return [_trained(s, steps=100 * (s + 1)) for s in range(3)]


KW = dict(num_chains=3, batch_size=100, progress=False, seed=5)


def _same(a, b):
    assert a.llc_trace.shape == b.llc_trace.shape
    assert np.array_equal(a.llc_trace, b.llc_trace)
    assert (a.mean, a.rhat, a.ess, a.stop_reason, a.config) == (b.mean, b.rhat, b.ess, b.stop_reason, b.config)


def _alone_and_together(models, ignore=LLCConvergenceWarning, **kw):
    """Every model's estimate_llc, and estimate_llcs of all of them; asserts they are the same."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ignore)
        alone = [estimate_llc(m, half_mse, _data(), **kw) for m in models]
        together = estimate_llcs(models, half_mse, _data(), **kw)
    for a, b in zip(alone, together):
        _same(a, b)
    return together


@pytest.mark.parametrize("num_draws,step_size", [(200, 1e-4), ("auto", "auto")])
def test_batched_equals_one_at_a_time(checkpoints, num_draws, step_size):
    together = _alone_and_together(checkpoints, **KW, num_draws=num_draws, step_size=step_size)
    assert together[0].extras["batched"]["checkpoints"] == 3


def test_a_checkpoint_does_not_depend_on_its_neighbours(checkpoints):
    kw = dict(KW, num_draws=150, step_size=1e-4)
    m0, m1, m2 = checkpoints
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        ref = estimate_llcs([m1], half_mse, _data(), **kw)[0]
        _same(ref, estimate_llcs([m0, m1, m2], half_mse, _data(), **kw)[1])
        _same(ref, estimate_llcs([m2, m0, m1], half_mse, _data(), chunk_size=2, **kw)[2])


def _least_squares(shift: float):
    """A linear model at the least-squares fit, every weight moved by ``shift``."""
    x, y = _data()
    m = torch.nn.Sequential(torch.nn.Linear(3, 2))
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y).solution
    with torch.no_grad():
        m[0].weight.copy_(sol[:3].T + shift)
        m[0].bias.copy_(sol[3] + shift)
    return m


def test_each_checkpoint_stops_when_it_has_converged(monkeypatch):
    """Two centres whose chains mix at different speeds (measured: at ε = 1e-3 the shifted one passes the first
    check, the other has ESS 81 at the budget): each stops on its own and equals its one-at-a-time run, so the
    early one left the batch without changing the other."""
    # the first check at 250 draws, as in SLT_QUICK mode (with the full-size 2,000 it would fall on the budget)
    monkeypatch.setattr(slt_config, "QUICK", True)
    ms = [_least_squares(1.0), _least_squares(0.0)]
    together = _alone_and_together(ms, ignore=Warning, **KW, num_draws="auto", step_size=1e-3, max_draws=600)
    assert together[0].stop_reason == "converged" and together[1].stop_reason == "max_draws"
    assert together[0].config.num_draws < together[1].config.num_draws


def test_a_diverging_checkpoint_is_rerun_alone_and_raises_like_estimate_llc(checkpoints):
    stiff = _trained(0)
    with torch.no_grad():
        stiff[2].weight.mul_(30.0)   # 900 times the curvature in the first layer's weights
    kw = dict(KW, num_draws=100, step_size=1e-3)
    with pytest.raises(SGLDDivergenceError) as alone:
        estimate_llc(stiff, half_mse, _data(), **kw)
    with pytest.raises(SGLDDivergenceError) as together, warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        estimate_llcs([checkpoints[0], stiff], half_mse, _data(), **kw)
    # the error names the checkpoint and keeps the estimates finished before it
    err = together.value
    assert err.checkpoint == 1 and list(err.completed) == [0]
    assert str(err).startswith("checkpoint 1 (models[1]): " + str(alone.value))
    assert ".completed" in str(err)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        _same(err.completed[0], estimate_llc(checkpoints[0], half_mse, _data(), **kw))
    with pytest.raises(SGLDDivergenceError, match=r"^checkpoint 0 \(models\[0\]\): SGLD diverged") as first:
        estimate_llcs([stiff, checkpoints[0]], half_mse, _data(), **kw)
    assert first.value.checkpoint == 0 and first.value.completed == {} and ".completed" not in str(first.value)


def test_a_diverging_checkpoint_of_a_trajectory_is_named_with_its_training_step():
    from slt_companion.dynamics import llc_over_trajectory

    stiff = _trained(0)
    with torch.no_grad():
        stiff[2].weight.mul_(30.0)
    traj = _trajectory([_trained(0, steps=50), stiff], [50, 300])
    with pytest.raises(SGLDDivergenceError, match=r"^checkpoint 1 of the trajectory \(training step 300\)") as err, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        llc_over_trajectory(traj, _net(9), half_mse, _data(), **dict(KW, num_draws=100, step_size=1e-3))
    assert err.value.checkpoint == 1 and list(err.value.completed) == [0]


def _trajectory(ms, steps):
    from slt_companion.train import Trajectory

    return Trajectory(steps=np.array(steps),
                      params=torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in ms]),
                      names=[n for n, _ in ms[0].named_parameters()],
                      shapes=[tuple(p.shape) for p in ms[0].parameters()],
                      train_loss=np.zeros(max(steps)), lr=np.zeros(max(steps)))


def _cached_curve_setting(tmp_path, monkeypatch):
    """A two-checkpoint trajectory and sampler settings cached under ``curve`` in ``tmp_path``."""
    monkeypatch.setenv("SLT_CACHE_DIR", str(tmp_path))
    traj = _trajectory([_trained(0, steps=s) for s in (50, 100)], [50, 100])
    kw = dict(FAST, cache_name="curve")
    return traj, kw


def test_a_cached_curve_with_a_key_missing_or_arrays_of_another_length_is_recomputed(tmp_path, monkeypatch):
    from slt_companion import cache
    from slt_companion.dynamics import llc_over_trajectory

    traj, kw = _cached_curve_setting(tmp_path, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        good = llc_over_trajectory(traj, _net(9), half_mse, _data(), **kw)
        (path,) = tmp_path.glob("curve-*.npz")
        for edit in (lambda d: d.pop("converged"), lambda d: d.update(mean=np.array([1.0, 2.0, 3.0]))):
            entry = cache.load(path)
            edit(entry)
            cache.save(path, entry)
            with pytest.warns(RuntimeWarning, match="cache entry .*curve-.* is corrupt .*recomputing"):
                again = llc_over_trajectory(traj, _net(9), half_mse, _data(), **kw)
            assert np.array_equal(again["mean"], good["mean"]) and np.array_equal(again["converged"], good["converged"])
        assert np.array_equal(llc_over_trajectory(traj, _net(9), half_mse, _data(), **kw)["mean"], good["mean"])


def test_two_lambda_losses_under_one_cache_name_are_two_curves(tmp_path, monkeypatch):
    """The cache key holds the loss's code, not only its name: two lambdas (both ``<lambda>``) are two losses."""
    from slt_companion.dynamics import llc_over_trajectory

    traj, kw = _cached_curve_setting(tmp_path, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Warning)
        one = llc_over_trajectory(traj, _net(9), lambda o, y: ((o - y) ** 2).mean() / 2, _data(), **kw)
        two = llc_over_trajectory(traj, _net(9), lambda o, y: ((o - y) ** 2).mean(), _data(), **kw)
        again = llc_over_trajectory(traj, _net(9), lambda o, y: ((o - y) ** 2).mean() / 2, _data(), **kw)
    assert not np.array_equal(one["init_loss"], two["init_loss"])
    np.testing.assert_allclose(two["init_loss"], 2 * one["init_loss"], rtol=1e-6)
    assert np.array_equal(again["mean"], one["mean"]) and len(list(tmp_path.glob("curve-*.npz"))) == 2


def test_per_chain_step_sizes_are_each_checkpoints_as_in_estimate_llc(checkpoints):
    # estimate_llcs(step_size=tuple) once failed inside, naming the joint num_chains (checkpoints × chains)
    kw = dict(KW, num_draws=60, num_chains=2)
    _alone_and_together(checkpoints, **dict(kw, step_size=(1e-4, 2e-4)))
    with pytest.raises(ValueError, match=r"step_size has 3 values but num_chains=2"):
        estimate_llcs(checkpoints, half_mse, _data(), **dict(kw, step_size=(1e-4, 2e-4, 3e-4)))


def test_tensor_attributes_that_differ_between_checkpoints_are_refused():
    """A tensor that is neither a parameter nor a buffer is not carried per checkpoint: every checkpoint would be
    run with models[0]'s."""
    class Scaled(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.c = torch.tensor(c)

        def forward(self, x):
            return self.lin(x) * self.c

    a, b = Scaled(1.0), Scaled(2.0)
    b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"models\[1\]\.c is a tensor attribute .*differs.*register_buffer\('c'"):
        estimate_llcs([a, b], half_mse, _data(), **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Warning)
        estimate_llcs([a, Scaled(1.0)], half_mse, _data(), **FAST)          # equal attributes run
        # weight_norm keeps `weight` as a plain tensor its pre-hook recomputes from weight_g, weight_v: not refused
        from torch.nn.utils import weight_norm

        normed = [_net(s) for s in (0, 1)]
        for n_ in normed:
            weight_norm(n_[2])
        estimate_llcs(normed, half_mse, _data(), **FAST)


def test_state_dicts_with_a_template(checkpoints):
    kw = dict(KW, num_draws=100, step_size=1e-4)
    states = [m.state_dict() for m in checkpoints]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        a = estimate_llcs(checkpoints, half_mse, _data(), **kw)
        b = estimate_llcs(states, half_mse, _data(), template=_net(9), **kw)
    for x, y in zip(a, b):
        _same(x, y)
    with pytest.raises(ValueError, match="template="):
        estimate_llcs(states, half_mse, _data(), **kw)
    bad = dict(states[1], **{"0.weight": torch.zeros(5, 3)})
    with pytest.raises(ValueError, match=r"models\[1\] does not fit template"):
        estimate_llcs([states[0], bad], half_mse, _data(), template=_net(9), **kw)


def test_models_of_different_shapes_are_refused_by_name(checkpoints):
    with pytest.raises(ValueError, match=r"models\[1\] is not the architecture.*out_features 4 vs 5"):
        estimate_llcs([checkpoints[0], _net(0, hidden=5)], half_mse, _data(), **KW, num_draws=50, step_size=1e-4)

    class Bare(torch.nn.Module):                     # no attribute says its size: the parameters' shapes do
        def __init__(self, h):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3, h))
            self.v = torch.nn.Parameter(torch.zeros(h, 2))

        def forward(self, x):
            return torch.tanh(x @ self.w) @ self.v
    with pytest.raises(ValueError, match="checkpoint 1's sampled parameters differ"):
        estimate_llcs([Bare(4), Bare(5)], half_mse, _data(), **KW, num_draws=50, step_size=1e-4)
    with pytest.raises(ValueError, match="models is empty"):
        estimate_llcs([], half_mse, _data())
    with pytest.raises(ValueError, match="chunk_size"):
        estimate_llcs(checkpoints, half_mse, _data(), chunk_size=0)


def test_one_warning_lists_the_unconverged_checkpoints(checkpoints):
    with pytest.warns(LLCConvergenceWarning, match=r"did not converge at 3 of 3 checkpoints") as rec:
        estimate_llcs(checkpoints, half_mse, _data(), **KW, num_draws=40, step_size=1e-4)
    assert sum(issubclass(w.category, LLCConvergenceWarning) for w in rec) == 1


def test_refined_over_checkpoints_is_batched_and_agrees(checkpoints):
    """params= leaves the other weights at each checkpoint's own values: each chain carries its checkpoint's
    frozen weights through the batched run, and each result equals estimate_llc(params=...)."""
    together = _alone_and_together(checkpoints, **KW, num_draws=100, step_size=1e-4, params=["2.weight", "2.bias"])
    assert together[0].extras["batched"]["checkpoints"] == 3


def test_checkpoints_equal_in_the_sampled_weights_are_told_apart_by_the_frozen_ones(checkpoints):
    """Two checkpoints with the same last layer but different first layers are different points: the paired
    baseline (the loss at each chain's own centre) must use each one's own frozen weights."""
    import copy

    twin = copy.deepcopy(checkpoints[0])
    with torch.no_grad():
        twin[0].weight.mul_(0.5)
    together = _alone_and_together([checkpoints[0], twin], **KW, num_draws=60, step_size=1e-4,
                                   params=["2.weight", "2.bias"])
    assert together[0].mean != together[1].mean


def test_llc_over_trajectory_equals_estimate_llc_at_a_checkpoint():
    from slt_companion.dynamics import llc_over_trajectory
    from slt_companion.train import Trajectory

    ms = [_trained(0, steps=s) for s in (50, 200, 400)]
    names = [n for n, _ in ms[0].named_parameters()]
    traj = Trajectory(steps=np.array([50, 200, 400]),
                      params=torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in ms]),
                      names=names, shapes=[tuple(p.shape) for p in ms[0].parameters()],
                      train_loss=np.zeros(400), lr=np.zeros(400))
    kw = dict(KW, num_draws=120, step_size=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        curve = llc_over_trajectory(traj, _net(9), half_mse, _data(), chunk_size=2, **kw)
        one = estimate_llc(traj.model_at(1, _net(9)), half_mse, _data(), **kw)
        # the same chains run with no burn-in: every step, from w* on, is a draw
        burnin = one.config.num_burnin
        flat = estimate_llc(traj.model_at(1, _net(9)), half_mse, _data(), **dict(kw, num_burnin=0,
                                                                                  num_draws=burnin + 120))
    assert curve["mean"][1] == one.mean and curve["rhat"][1] == one.rhat
    assert one.burnin_llc_trace.shape == (KW["num_chains"], burnin) and burnin > 0
    whole = np.concatenate([one.burnin_llc_trace, one.llc_trace], axis=1)
    assert np.array_equal(whole, flat.llc_trace)
    assert curve["relaxation"].shape == (3, burnin + 120)
    assert np.array_equal(curve["relaxation"][1], whole.mean(0))


def test_losses_at_a_checkpoint_are_computed_once_and_follow_its_state(monkeypatch):
    """The per-sample losses at a model's own parameters are computed once per (state, loss, data): a second head
    of the same checkpoints reuses them (same numbers as computed afresh); changing a weight, the data or the loss
    computes them again."""
    from slt_companion import sampling

    calls = []
    real = sampling._Problem.per_sample_losses
    monkeypatch.setattr(sampling._Problem, "per_sample_losses",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    x, y = _data()
    models = [_trained(s, steps=50) for s in (1, 2)]
    kw = dict(num_chains=2, num_draws=20, num_burnin=0, step_size=1e-4, batch_size=50, progress=False, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # 50 training steps: not a minimum, and short chains; the numbers are not the point
        first = estimate_llcs(models, half_mse, (x, y), params="0.weight", **kw)
        n_first = len(calls)
        again = estimate_llcs(models, half_mse, (x, y), params="2", **kw)       # other parameters, same states
        assert len(calls) == n_first == 2, calls                              # nothing computed again
        sampling.clear_center_losses()
        fresh = estimate_llcs(models, half_mse, (x, y), params="2", **kw)
        assert [e.mean for e in fresh] == [e.mean for e in again]
        assert [e.init_loss for e in fresh] == [e.init_loss for e in again] == [e.init_loss for e in first]
        n = len(calls)
        with torch.no_grad():
            models[0][0].weight.add_(0.01)                                    # a new state: computed again
        estimate_llcs(models, half_mse, (x, y), params="2", **kw)
        assert len(calls) == n + 1, calls
        x.mul_(1.0)                                                           # the data changed (in place)
        estimate_llc(models[1], half_mse, (x, y), **kw)
        assert len(calls) == n + 2, calls
        estimate_llc(models[1], lambda o, t: half_mse(o, t), (x, y), **kw)     # another loss function
        assert len(calls) == n + 3, calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_on_cuda_agrees_with_one_at_a_time_and_with_the_cpu(checkpoints):
    """On a GPU the batched run's kernels see other shapes than one checkpoint alone, so the two agree up to
    rounding that the chains carry along (within chain noise), and the GPU agrees with the CPU in distribution
    (its noise comes from its own generators): within the two estimates' ESS-aware errors, since these small tanh
    networks mix slowly (ESS 8-20 after 400 draws)."""
    import copy

    kw = dict(KW, num_draws=400, num_burnin=100, step_size=1e-4)
    gpu_models = [copy.deepcopy(m).cuda() for m in checkpoints]
    xy = tuple(t.cuda() for t in _data())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        together = estimate_llcs(gpu_models, half_mse, xy, device="cuda", **kw)
        alone = [estimate_llc(m, half_mse, xy, device="cuda", **kw) for m in gpu_models]
        cpu = estimate_llcs(checkpoints, half_mse, _data(), **kw)
    for t, a, c in zip(together, alone, cpu):
        assert np.isfinite(t.llc_trace).all() and t.extras["batched"]["checkpoints"] == 3
        sem = max(t.std, a.std, c.std) / np.sqrt(KW["num_chains"])
        assert abs(t.mean - a.mean) < 3 * sem, (t.mean, a.mean, sem)
        assert abs(t.mean - c.mean) < 4 * np.hypot(t.sem, c.sem), (t, c)


FAST = dict(num_chains=2, num_draws=20, num_burnin=5, step_size=1e-4, progress=False)


def test_checkpoints_of_another_architecture_or_state_are_refused(checkpoints):
    """Every checkpoint is sampled through models[0]'s forward: one of another class, or in another mode, is an
    error naming it (it once gave models[0]'s function at its weights, silently)."""
    x, y = _data()
    relu = _net(0)
    relu[1] = torch.nn.ReLU()
    with pytest.raises(ValueError, match=r"models\[1\] is not the architecture"):
        estimate_llcs([checkpoints[0], relu], half_mse, (x, y), **FAST)
    training = _trained(1, steps=10).eval()           # the others are in training mode
    with pytest.raises(ValueError, match=r"models\[2\]"):
        estimate_llcs([checkpoints[0], checkpoints[1], training], half_mse, (x, y), **FAST)


def test_estimate_llcs_checks_its_arguments_as_estimate_llc_does(checkpoints):
    x, y = _data()
    with pytest.raises(TypeError, match=r"pass \[model\]"):
        estimate_llcs(checkpoints[0], half_mse, (x, y), **FAST)
    for bad in ({"num_chains": 2.5}, {"num_draws": 20.5}, {"seed": 1.5}, {"batch_size": None}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            estimate_llcs(checkpoints[:2], half_mse, (x, y), **{**FAST, **bad})
    wide = _trained(0, steps=10).double()
    with pytest.raises(TypeError, match=r"checkpoint 1 \(models\[1\]\)"):
        estimate_llcs([checkpoints[0], wide], half_mse, (x, y), **FAST)


def test_the_negative_llc_warning_points_at_the_callers_line():
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimate_llcs([_net(0)], half_mse, (x, y), **FAST)                  # untrained: λ̂ < 0
    from slt_companion.diagnostics import NegativeLLCWarning
    negative = [w for w in caught if issubclass(w.category, NegativeLLCWarning)]
    assert negative and all(w.filename == __file__ for w in negative), [(w.filename, w.lineno) for w in negative]


def test_every_convergence_warning_points_at_the_callers_line():
    """However deep in the package an unconverged estimate is found, the warning names the reader's line."""
    from slt_companion.dynamics import llc_over_trajectory
    from slt_companion.train import Trajectory

    x, y = _data()
    ms = [_trained(0, steps=s) for s in (50, 100)]
    traj = Trajectory(steps=np.array([50, 100]),
                      params=torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in ms]),
                      names=[n for n, _ in ms[0].named_parameters()], shapes=[tuple(p.shape) for p in ms[0].parameters()],
                      train_loss=np.zeros(100), lr=np.zeros(100))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimate_llc(ms[1], half_mse, (x, y), **FAST)                           # 20 draws: cannot converge
        estimate_llcs(ms, half_mse, (x, y), **FAST)
        llc_over_trajectory(traj, _net(9), half_mse, (x, y), **FAST)
    unconverged = [w for w in caught if issubclass(w.category, LLCConvergenceWarning)]
    assert len(unconverged) >= 3, [str(w.message) for w in unconverged]
    assert all(w.filename == __file__ for w in unconverged), [(w.filename, w.lineno) for w in unconverged]


class _ScaledNet(torch.nn.Module):
    """A hidden layer scaled per feature by a buffer, and a read-out. Its fast path reads the buffer from the module
    (as a fast path may), so it cannot serve a batch of checkpoints whose buffers differ."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin, self.out = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
        self.register_buffer("scale", torch.rand(4) + 0.5)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x) * self.scale))

    def forward_batched(self, params, x):
        h = torch.baddbmm(params["lin.bias"][:, None], x, params["lin.weight"].transpose(1, 2)) * self.scale
        return torch.baddbmm(params["out.bias"][:, None], torch.tanh(h), params["out.weight"].transpose(1, 2))


@pytest.mark.parametrize("params", [None, ["out.weight", "out.bias"]])
def test_checkpoints_whose_buffers_differ_are_not_given_to_a_fast_path(params):
    """Checkpoints that differ in a buffer: the batched run uses vmap (which carries each chain's buffers), not the
    model's fast path (which would read the first checkpoint's buffer for every chain)."""
    import copy

    m0 = _ScaledNet(0)
    m1 = copy.deepcopy(m0)
    m1.scale.mul_(3.0)
    kw = dict(KW, num_draws=60, step_size=1e-4, params=params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        warnings.simplefilter("ignore", NegativeLLCWarning)      # untrained: only the agreement matters here
        alone = [estimate_llc(m, half_mse, _data(), **kw) for m in (m0, m1)]
        together = estimate_llcs([m0, m1], half_mse, _data(), **kw)
    assert abs(alone[0].mean - alone[1].mean) > 1e-3 * abs(alone[0].mean)     # the buffer matters
    for a, b in zip(alone, together):
        assert np.allclose(a.llc_trace, b.llc_trace, rtol=1e-5, atol=1e-6)


def test_auto_chunk_size_follows_the_step_activations(checkpoints, monkeypatch):
    """On a CPU the default run holds as many checkpoints as keep one step's activations under CHUNK_BYTES (at
    least 1, at most CHECKPOINTS_PER_RUN), and the estimates do not depend on it (checkpoints as chains)."""
    from slt_companion import llc as llc_mod
    from slt_companion.sampling import _Problem

    x, y = _data()
    prob = _Problem(checkpoints[0], half_mse, (x, y), None, "cpu")
    per = prob.step_bytes(3, 100)
    # 3 chains x 100 rows: the tanh layer keeps at least its (3, 100, 4) float32 output
    assert per >= 3 * 100 * 4 * 4
    assert prob.step_bytes(6, 100) > per and prob.step_bytes(3, 200) > per       # it grows with chains and batch

    def auto():
        return llc_mod.auto_chunk_size(checkpoints[0], half_mse, (x, y), num_chains=3, batch_size=100)

    assert auto() == min(llc_mod.CHECKPOINTS_PER_RUN, llc_mod.CHUNK_BYTES // per)
    monkeypatch.setattr(llc_mod, "CHUNK_BYTES", 2 * per + 1)
    assert auto() == 2
    monkeypatch.setattr(llc_mod, "CHUNK_BYTES", per // 2)
    assert auto() == 1                                                            # never 0
    kw = dict(KW, num_draws=120, step_size=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCConvergenceWarning)
        one_each = estimate_llcs(checkpoints, half_mse, (x, y), **kw)           # chunk_size=None: 1 here
        all_three = estimate_llcs(checkpoints, half_mse, (x, y), chunk_size=3, **kw)
    assert [e.extras["batched"]["checkpoints"] if "batched" in e.extras else 1 for e in one_each] == [1, 1, 1]
    assert all(e.extras["batched"]["checkpoints"] == 3 for e in all_three)
    for a, b in zip(one_each, all_three):
        np.testing.assert_allclose(a.llc_trace, b.llc_trace, rtol=1e-5, atol=1e-6)
