"""The batched SGLD engine: exactness on a Gaussian, determinism, per-chain RNG, errors."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from slt_companion.data import teacher_student
from slt_companion.diagnostics import SGLDDivergenceError
from slt_companion.models import DeepLinearNetwork
from slt_companion.sampling import NonFunctionalModelError, SamplerConfig, select_params, sgld


def mse(out, y):
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


class Point(nn.Module):
    """f(x; w) = w for every x: with y = 0 the loss is ½‖w‖², a Gaussian posterior."""

    def __init__(self, d=3):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def point_data(n=1000, d=3):
    return torch.zeros(n, 1), torch.zeros(n, d)


def test_gaussian_posterior_variance_matches_the_discretised_langevin_law():
    # target exp(-(nβ + γ)‖w‖²/2); SGLD's stationary variance per coordinate is 1/(h (1 - εh/4)), h = nβ + γ
    nbeta, gamma, eps = 100.0, 1.0, 6e-3
    h = nbeta + gamma
    cfg = SamplerConfig(step_size=eps, nbeta=nbeta, localization=gamma, num_chains=4, num_draws=2500,
                        num_burnin=100, batch_size=50, seed=0)
    res = sgld(Point(), mse, point_data(), cfg, progress=False, record_params=True)
    w = res.params[:, cfg.num_burnin:].reshape(-1, 3).numpy()
    expected = 1.0 / (h * (1 - eps * h / 4))
    assert np.allclose(w.var(axis=0), expected, rtol=0.08)
    assert abs(w.mean()) < 0.01
    # the regular model's LLC: nβ E[½‖w‖²] = (d/2) nβ/h (1 - εh/4)^-1
    llc = nbeta * (res.draws - res.center_loss[:, cfg.num_burnin:]).mean().item()
    assert llc == pytest.approx(1.5 * nbeta / h / (1 - eps * h / 4), rel=0.08)


def test_same_seed_same_trace_and_different_seed_different_trace():
    d = teacher_student(1000, 3, 3, 1, seed=0)
    m = DeepLinearNetwork([3, 2, 3]).fit_least_squares(d.x, d.y)
    cfg = SamplerConfig(step_size=1e-4, nbeta=100.0, num_chains=3, num_draws=50, num_burnin=10, batch_size=100)
    a = sgld(m, mse, d.xy, cfg, progress=False)
    b = sgld(m, mse, d.xy, cfg, progress=False)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.final, b.final)
    c = sgld(m, mse, d.xy, SamplerConfig(**{**cfg.to_dict(), "seed": 1}), progress=False)
    assert not torch.equal(a.loss, c.loss)
    # chains have their own streams: chain 0 does not depend on how many chains run beside it
    one = sgld(m, mse, d.xy, SamplerConfig(**{**cfg.to_dict(), "num_chains": 1}), progress=False)
    assert torch.allclose(one.loss[0], a.loss[0], rtol=1e-5, atol=1e-6)
    # ... and the chains differ from each other
    assert not torch.allclose(a.loss[0], a.loss[1])


def _recovered_noise(W: torch.Tensor, eps: float, nbeta: float) -> torch.Tensor:
    """Each chain's ξ_t from its recorded states ``W (C, T, D)`` of a run on ``Point`` with full batches and γ = 0,
    where W_{t+1} = (1 - ε nβ/2) W_t + sqrt(ε) ξ_t."""
    return (W[:, 1:] - (1 - eps * nbeta / 2) * W[:, :-1]) / math.sqrt(eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_by_default_each_chains_noise_is_normals_in_the_models_dtype(dtype):
    # the default RNG contract (sampling.FLOAT64_NOISE = False): Point model, full batch (no minibatch draws), γ = 0, so
    # W_{t+1} = (1 - ε nβ/2) W_t + sqrt(ε) ξ_t and the recorded states give back each chain's ξ: randn(T, D) in
    # the model's dtype from the chain's generator (float64 draws rounded to float32 would be a different stream)
    from slt_companion import sampling
    from slt_companion.sampling import chain_generators
    assert not sampling.FLOAT64_NOISE
    nbeta, eps, T, C = 10.0, 1e-3, 40, 3
    cfg = SamplerConfig(step_size=eps, nbeta=nbeta, localization=0.0, num_chains=C, num_draws=T, num_burnin=0,
                        batch_size=1000, seed=5)
    res = sgld(Point().to(dtype), mse, tuple(t.to(dtype) for t in point_data()), cfg, progress=False,
               record_params=True)
    xi = _recovered_noise(res.params, eps, nbeta)                         # (C, T - 1, D), W_0 = 0
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    for c, (g, g64) in enumerate(zip(chain_generators(5, C), chain_generators(5, C))):
        own = torch.randn(T, 3, generator=g, dtype=dtype).double()
        assert torch.allclose(xi[c], own[:-1], atol=tol)
        if dtype == torch.float32:
            rounded = torch.randn(T, 3, generator=g64, dtype=torch.float64).float().double()
            assert not torch.allclose(xi[c], rounded[:-1], atol=1e-2)


def test_with_float64_noise_each_chains_noise_is_float64_normals_from_its_own_generator_rounded(monkeypatch):
    # the RNG contract with sampling.FLOAT64_NOISE = True (the stream before 2026-12-01): a float32 model's noise is
    # each chain's float64 normals, from its own generator, rounded once
    from slt_companion import sampling
    from slt_companion.sampling import chain_generators
    monkeypatch.setattr(sampling, "FLOAT64_NOISE", True)
    nbeta, eps, T, C = 10.0, 1e-3, 40, 2
    cfg = SamplerConfig(step_size=eps, nbeta=nbeta, localization=0.0, num_chains=C, num_draws=T, num_burnin=0,
                        batch_size=1000, seed=5)
    res = sgld(Point(), mse, point_data(), cfg, progress=False, record_params=True)
    xi = _recovered_noise(res.params, eps, nbeta)
    for c, g in enumerate(chain_generators(5, C)):
        own = torch.randn(T, 3, generator=g, dtype=torch.float64).float().double()
        assert torch.allclose(xi[c], own[:-1], atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("device_noise", [True, False])
def test_on_cuda_each_chains_noise_comes_from_its_own_cuda_generator(device_noise, monkeypatch):
    # on a CUDA device each chain's noise is drawn there, from a CUDA generator seeded like the chain's CPU one
    # (in the model's dtype, float64 here); with sampling.DEVICE_NOISE = False it is the CPU's stream, copied
    # over. Either way chain c's noise does not depend on how many chains run beside it.
    from slt_companion import sampling
    from slt_companion.sampling import chain_generators
    monkeypatch.setattr(sampling, "DEVICE_NOISE", device_noise)
    nbeta, eps, T = 10.0, 1e-3, 80                                       # 80 steps: two blocks of draws
    xy = tuple(t.cuda() for t in point_data())
    xis = {}
    for C in (3, 1):
        cfg = SamplerConfig(step_size=eps, nbeta=nbeta, localization=0.0, num_chains=C, num_draws=T, num_burnin=0,
                            batch_size=1000, seed=5)
        res = sgld(Point().double().cuda(), mse, tuple(t.double() for t in xy), cfg, progress=False,
                   record_params=True)
        assert res.device.startswith("cuda")
        xis[C] = _recovered_noise(res.params, eps, nbeta)
    for c, g in enumerate(chain_generators(5, 3)):
        if device_noise:
            g = torch.Generator(device="cuda").manual_seed(g.initial_seed())
        # drawn a block at a time (CUDA's Philox streams, unlike the CPU's, depend on how a draw is cut up)
        own = torch.cat([torch.randn(min(sampling.BLOCK, T - s), 3, generator=g, dtype=torch.float64,
                                     device=g.device) for s in range(0, T, sampling.BLOCK)]).cpu()
        assert torch.allclose(xis[3][c], own[:-1], atol=1e-9)
    assert torch.allclose(xis[1][0], xis[3][0], atol=1e-9)


def test_model_is_not_modified_and_centre_loss_is_the_same_batch():
    d = teacher_student(500, 3, 3, 1, seed=0)
    m = DeepLinearNetwork([3, 2, 3]).fit_least_squares(d.x, d.y)
    before = [p.detach().clone() for p in m.parameters()]
    cfg = SamplerConfig(step_size=1e-4, nbeta=50.0, num_chains=2, num_draws=20, num_burnin=0, batch_size=500)
    res = sgld(m, mse, d.xy, cfg, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(before, m.parameters()))
    # full batch: every centre loss is L_n(w*)
    with torch.no_grad():
        full = float(mse(m(d.x), d.y))
    assert torch.allclose(res.center_loss, torch.full_like(res.center_loss, full), rtol=1e-5)
    assert res.loss[:, 0].sub(full).abs().max() < 1e-5      # step 0 is evaluated at w*


def test_params_restricts_sampling():
    d = teacher_student(500, 3, 3, 1, seed=0)
    m = DeepLinearNetwork([3, 2, 3]).fit_least_squares(d.x, d.y)
    assert select_params(m, "layers.1") == ["layers.1.weight"]
    assert select_params(m, lambda name, p: name.startswith("layers.0")) == ["layers.0.weight"]
    cfg = SamplerConfig(step_size=1e-4, nbeta=50.0, num_chains=2, num_draws=10, num_burnin=0, batch_size=100)
    res = sgld(m, mse, d.xy, cfg, params=["layers.1.weight"], progress=False)
    assert res.param_names == ["layers.1.weight"] and res.final.shape == (2, 6)
    with pytest.raises(ValueError, match="not parameters of the model"):
        sgld(m, mse, d.xy, cfg, params=["nope"], progress=False)
    with pytest.raises(ValueError, match="selects no parameters"):
        sgld(m, mse, d.xy, cfg, params=lambda name, p: False, progress=False)


def test_a_name_prefix_is_a_module_path_with_or_without_its_dot():
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])          # modules "0" .. "10"
    assert select_params(net, "1") == select_params(net, "1.") == ["1.weight", "1.bias"]   # not "10.*"
    assert select_params(net, "1.weight") == ["1.weight"]
    with pytest.raises(ValueError, match=r"params='1\.w' selects no parameters \(a prefix is matched at dots"):
        select_params(net, "1.w")
    with pytest.raises(ValueError, match=r"params='nope' selects no parameters; the model's parameters are"):
        select_params(net, "nope")


def test_per_chain_step_sizes_and_rmsprop_run():
    x, y = point_data()
    cfg = SamplerConfig(step_size=(1e-4, 1e-3, 1e-2), nbeta=100.0, num_chains=3, num_draws=300,
                        num_burnin=50, batch_size=50)
    res = sgld(Point(), mse, (x, y), cfg, progress=False, record_params=True)
    spread = res.params[:, :20].std(dim=(1, 2))      # early on, larger steps have moved further
    assert spread[0] < spread[1] < spread[2]
    cfg2 = SamplerConfig(step_size=1e-3, nbeta=100.0, num_chains=2, num_draws=200, num_burnin=50,
                         batch_size=50, preconditioner="rmsprop")
    assert torch.isfinite(sgld(Point(), mse, (x, y), cfg2, progress=False).loss).all()


def test_divergence_raises_with_the_step_and_a_smaller_step_size():
    d = teacher_student(1000, 3, 3, 1, seed=0)
    m = DeepLinearNetwork([3, 2, 3]).fit_least_squares(d.x, d.y)
    cfg = SamplerConfig(step_size=0.5, nbeta=1000.0, num_chains=2, num_draws=100, num_burnin=0, batch_size=100)
    with pytest.raises(SGLDDivergenceError, match=r"diverged at step \d+ .*step_size=0\.05") as info:
        sgld(m, mse, d.xy, cfg, progress=False)
    assert info.value.step < 100


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, x):
        if self.w.sum() > 0:         # data-dependent Python control flow: not vmappable
            return x * self.w
        return x


class Stateful(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1             # in-place state update
        return x * self.w


@pytest.mark.parametrize("model", [Branchy(), Stateful()])
def test_non_functional_models_get_a_clear_error(model):
    x, y = torch.randn(50, 2), torch.randn(50, 2)
    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=2, num_draws=5, num_burnin=0, batch_size=10)
    with pytest.raises(NonFunctionalModelError, match="functional"):
        sgld(model, mse, (x, y), cfg, progress=False)


def test_config_and_data_errors_name_the_argument():
    with pytest.raises(ValueError, match="step_size"):
        SamplerConfig(step_size=-1.0, nbeta=1.0)
    with pytest.raises(ValueError, match="num_chains"):
        SamplerConfig(step_size=1e-3, nbeta=1.0, num_chains=0)
    with pytest.raises(ValueError, match="step_size has 2 values but num_chains=3"):
        SamplerConfig(step_size=(1e-3, 1e-4), nbeta=1.0, num_chains=3)
    with pytest.raises(ValueError, match="preconditioner"):
        SamplerConfig(step_size=1e-3, nbeta=1.0, preconditioner="adam")
    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=1, num_draws=5, num_burnin=0)
    with pytest.raises(ValueError, match="same number of rows"):
        sgld(Point(), mse, (torch.zeros(10, 1), torch.zeros(9, 3)), cfg, progress=False)
    with pytest.raises(TypeError, match="pair"):
        sgld(Point(), mse, torch.zeros(10, 1), cfg, progress=False)
    with pytest.raises(TypeError, match="SamplerConfig"):
        sgld(Point(), mse, point_data(), {"step_size": 1e-3}, progress=False)


def test_tensor_dataset_is_accepted():
    ds = torch.utils.data.TensorDataset(*point_data(100))
    cfg = SamplerConfig(step_size=1e-3, nbeta=10.0, num_chains=2, num_draws=10, num_burnin=0, batch_size=20)
    assert sgld(Point(), mse, ds, cfg, progress=False).loss.shape == (2, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sgld_on_cuda_matches_the_cpu_in_distribution():
    x, y = point_data()
    cfg = SamplerConfig(step_size=1e-3, nbeta=100.0, num_chains=4, num_draws=2000, num_burnin=100, batch_size=50)
    cpu = sgld(Point(), mse, (x, y), cfg, progress=False)
    gpu = sgld(Point().cuda(), mse, (x.cuda(), y.cuda()), cfg, device="cuda", progress=False)
    assert gpu.device.startswith("cuda")
    assert math.isclose(gpu.draws.mean().item(), cpu.draws.mean().item(), rel_tol=0.1)


def test_local_posterior_grid_is_a_normalised_density_peaked_near_the_centre():
    from slt_companion.sampling import local_posterior_grid

    d = teacher_student(500, 1, 1, 1, seed=0)
    m = DeepLinearNetwork([1, 1, 1]).fit_least_squares(d.x, d.y)
    g1, g2, dens = local_posterior_grid(m, mse, d.xy, nbeta=50.0, localization=1.0, extent=1.0, points=41)
    assert dens.shape == (41, 41)
    assert (dens.sum() * (g1[1] - g1[0]) * (g2[1] - g2[0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="exactly 2 sampled parameters"):
        local_posterior_grid(DeepLinearNetwork([3, 1]), mse, (torch.zeros(5, 3), torch.zeros(5, 1)), nbeta=1.0)


class Scale(nn.Module):
    """y = x * w, elementwise: the model the fast-path checks below break on purpose."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.w


class WrongFastPath(Scale):
    def forward_batched(self, params, x):       # off by a factor of 2: must be caught before sampling
        return 2 * x * params["w"][:, None, :]


def test_a_wrong_fast_path_is_an_error_and_a_right_one_matches_vmap():
    x, y = torch.randn(50, 2), torch.randn(50, 2)
    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=2, num_draws=5, num_burnin=0, batch_size=10)
    with pytest.raises(ValueError, match="fast path"):
        sgld(WrongFastPath(), mse, (x, y), cfg, progress=False)
    from slt_companion.llc import half_mse

    d = teacher_student(200, 3, 3, 1, seed=0)
    m = DeepLinearNetwork([3, 2, 3]).fit_least_squares(d.x, d.y)
    fast = sgld(m, half_mse, d.xy, cfg, progress=False)
    slow = sgld(m, mse, d.xy, cfg, progress=False)        # same loss without the fast-path attribute
    assert torch.allclose(fast.loss, slow.loss, rtol=1e-5, atol=1e-7)


class WrongVJP(Scale):
    """A right fast forward with a wrong hand-written backward (off by a factor of 2)."""

    def forward_batched(self, params, x):
        return x * params["w"][:, None, :]

    def forward_batched_vjp(self, params, x):
        return self.forward_batched(params, x), lambda g: {"w": 2 * (g * x).sum(1)}


def test_a_wrong_hand_written_backward_is_an_error():
    from slt_companion.llc import half_mse

    x, y = torch.randn(50, 2), torch.randn(50, 2)
    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=2, num_draws=5, num_burnin=0, batch_size=10)
    with pytest.raises(ValueError, match="hand-written backward"):
        sgld(WrongVJP(), half_mse, (x, y), cfg, progress=False)


@pytest.mark.parametrize("widths", [[5, 4, 5], [3, 3, 3, 3], [6, 4, 2, 4, 6], [2, 7], [1, 1]])
@pytest.mark.parametrize("params", [None, "first", "last"])
def test_a_deep_linear_networks_hand_backward_is_autograds_to_the_bit(widths, params):
    """The DLN + half_mse hand backward runs autograd's operations in autograd's order: the same bits, so the
    chains (and every DLN number in the book) are those of the autograd path."""
    from slt_companion.llc import half_mse
    from slt_companion.sampling import _Problem

    gen = torch.Generator().manual_seed(len(widths))
    m = DeepLinearNetwork(widths, seed=3)
    x, y = torch.randn(300, widths[0], generator=gen), torch.randn(300, widths[-1], generator=gen)
    names = {"first": ["layers.0.weight"], "last": [f"layers.{len(widths) - 2}.weight"]}.get(params)
    prob = _Problem(m, half_mse, (x, y), names, "cpu")
    assert prob.fast_vjp is not None
    for C, B in ((1, 1), (4, 37), (9, 100)):
        W = prob.center + 0.3 * torch.randn(C, prob.D, generator=gen)
        idx = torch.randint(0, 300, (C, B), generator=gen)
        l1, g1 = prob.losses_and_grads(W, x[idx], y[idx], by_hand=False)
        l2, g2 = prob.losses_and_grads(W, x[idx], y[idx])
        assert torch.equal(l1, l2) and torch.equal(g1, g2)
    cfg = SamplerConfig(step_size=1e-3, nbeta=10.0, num_chains=3, num_draws=40, num_burnin=0, batch_size=16)
    fast = sgld(m, half_mse, (x, y), cfg, params=names, progress=False)
    prob.fast_vjp = None
    import slt_companion.sampling as S

    orig = S._Problem.losses_and_grads
    S._Problem.losses_and_grads = lambda self, W, xb, yb, by_hand=True: orig(self, W, xb, yb, by_hand=False)
    try:
        slow = sgld(m, half_mse, (x, y), cfg, params=names, progress=False)
    finally:
        S._Problem.losses_and_grads = orig
    assert torch.equal(fast.loss, slow.loss)


def test_monomial_hand_backwards_match_autograd_at_and_away_from_zero():
    """MonomialModel and devinterp's Polynomial (exponents may be 0) with their losses: the hand backward agrees
    with autograd to rounding, also at w = 0, where the chains of a normal crossing start."""
    from slt_companion.groundtruth import Polynomial, mse_loss
    from slt_companion.llc import half_mse
    from slt_companion.models import MonomialModel
    from slt_companion.sampling import _Problem

    gen = torch.Generator().manual_seed(0)
    for model, loss in ((MonomialModel([1, 2]), half_mse), (MonomialModel([3]), half_mse),
                        (MonomialModel([2, 2, 1]), half_mse), (Polynomial([0, 1]), mse_loss),
                        (Polynomial([2] * 10), mse_loss), (Polynomial([3, 0, 2]), mse_loss)):
        x, y = torch.randn(200, 1, generator=gen), torch.randn(200, 1, generator=gen)
        prob = _Problem(model, loss, (x, y), None, "cpu")
        assert prob.fast_vjp is not None
        for scale in (0.0, 0.5):
            W = prob.center + scale * torch.randn(4, prob.D, generator=gen)
            idx = torch.randint(0, 200, (4, 25), generator=gen)
            l1, g1 = prob.losses_and_grads(W, x[idx], y[idx], by_hand=False)
            l2, g2 = prob.losses_and_grads(W, x[idx], y[idx])
            assert torch.allclose(l1, l2, rtol=1e-6, atol=1e-8)
            assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-6 * (1 + float(g1.abs().max()))), (model, g1, g2)


class WrongVJPAtZero(WrongVJP):
    """A monomial w1 * w2 centred at 0 whose hand backward is off by a factor of 3: its gradients there are tiny,
    and the check must still compare them relative to their size."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x * self.w.prod()

    def forward_batched(self, params, x):
        return x * params["w"].prod(1)[:, None, None]

    def forward_batched_vjp(self, params, x):
        w = params["w"]
        gx = lambda g: (g * x).sum((1, 2))                                   # noqa: E731
        return self.forward_batched(params, x), lambda g: {"w": 3 * gx(g)[:, None] * w.flip(1)}


def test_a_wrong_hand_backward_is_caught_where_the_gradients_are_tiny():
    from slt_companion.llc import half_mse

    x, y = torch.randn(50, 1), torch.randn(50, 1)
    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=2, num_draws=5, num_burnin=0, batch_size=10)
    with pytest.raises(ValueError, match="hand-written backward"):
        sgld(WrongVJPAtZero(), half_mse, (x, y), cfg, progress=False)


def test_params_given_in_any_order_or_as_a_set_are_sampled_in_the_models_order():
    # a set's order depends on PYTHONHASHSEED: the flattening (and with it every number) must not
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    order = ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert select_params(net, ["2.bias", "0.weight", "2.weight", "0.bias"]) == order
    assert select_params(net, set(order)) == order
    assert select_params(net, ["2.weight", "0.bias"]) == ["0.bias", "2.weight"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, generator=g), torch.randn(40, 1, generator=g)
    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=2, num_draws=5, num_burnin=0, batch_size=10)
    a = sgld(net, mse, (x, y), cfg, params=order, progress=False)
    b = sgld(net, mse, (x, y), cfg, params=order[::-1], progress=False)
    assert a.param_names == b.param_names == order and torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_a_loss_of_one_element_that_is_not_0_d_is_an_error_before_sampling(shape):
    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=2, num_draws=5, num_burnin=0, batch_size=10)
    with pytest.raises(ValueError, match=r"0-d scalar.*shape \(1(, 1)?,?\).*\.mean\(\).*\.squeeze\(\)"):
        sgld(Point(), lambda o, y: mse(o, y).reshape(shape), point_data(50), cfg, progress=False)


def test_float_targets_whose_columns_broadcast_against_the_output_are_refused_for_an_elementwise_loss():
    from slt_companion.llc import half_mse

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    cfg = SamplerConfig(step_size=1e-4, nbeta=10.0, num_chains=2, num_draws=5, num_burnin=0, batch_size=10)
    for out_dim, y_cols in [(1, 2), (3, 1)]:
        net = nn.Linear(2, out_dim)
        y = torch.randn(40, y_cols, generator=g)
        for loss in (half_mse, torch.nn.functional.mse_loss, nn.MSELoss()):
            with pytest.raises(ValueError, match=rf"shape \(8, {out_dim}\) but y has shape \(8, {y_cols}\).*"
                                                 "broadcast.*as many outputs as y has columns"), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)           # torch's own size warning for mse_loss
                sgld(net, loss, (x, y), cfg, progress=False)
    # a loss of its own may read the columns itself (a mean and a log-variance): a warning, and it runs
    net = nn.Linear(2, 2)

    def gaussian_nll(out, y):
        return 0.5 * (((y - out[:, :1]) ** 2) * torch.exp(-out[:, 1:]) + out[:, 1:]).mean()

    with pytest.warns(UserWarning, match=r"shape \(8, 2\) but y has shape \(8, 1\).*ignore this"):
        sgld(net, gaussian_nll, (x, torch.randn(40, 1, generator=g)), cfg, progress=False)
    # equal shapes and class labels (integer y) are untouched
    sgld(nn.Linear(2, 2), half_mse, (x, torch.randn(40, 2, generator=g)), cfg, progress=False)
    labels = torch.randint(0, 3, (40,), generator=g)
    sgld(nn.Linear(2, 3), torch.nn.functional.cross_entropy, (x, labels), cfg, progress=False)


@pytest.mark.parametrize("model, x, kw, match", [
    (DeepLinearNetwork([2, 2]), torch.zeros(8, 2), dict(num_threads=0),
     r'num_threads must be a positive integer, "auto" \(.*\) or None \(.*\), got 0'),
    (DeepLinearNetwork([2, 2]), torch.zeros(8, 2), dict(num_threads=-1), r"num_threads must be a positive integer.*got -1"),
    (DeepLinearNetwork([2, 2]), torch.zeros(8, 2), dict(num_threads="many"), r"num_threads must be.*got 'many'"),
    (DeepLinearNetwork([2, 2]), torch.zeros(8, 2, dtype=torch.int64), {},
     r"x is int64, the model's parameters float32: pass x.to\(torch.float32\) \(e.g. x.float\(\)\)"),
    (nn.Linear(2, 2), torch.zeros(8, 2, dtype=torch.int64), {}, r"x is int64, the model's parameters float32"),
    (nn.Linear(2, 2), torch.zeros(8, 3), {}, r"Check that x's trailing shape matches the model's input"),
])
def test_sgld_names_bad_num_threads_and_an_integer_x(model, x, kw, match):
    cfg = SamplerConfig(step_size=1e-3, nbeta=10.0, num_chains=2, num_draws=4, num_burnin=0)
    with pytest.raises(ValueError, match=match):
        sgld(model, mse, (x, torch.zeros(8, 2)), cfg, progress=False, **kw)
