"""DeepLinearNetwork and MonomialModel."""

import pytest
import torch

from slt_companion.data import random_low_rank, teacher_student
import numpy as np

from slt_companion.models import (MLP, DeepLinearNetwork, MonomialModel, ToyModelOfSuperposition,
                                  rank_constrained_least_squares)


# These tests check shapes and determinism with a few draws at untrained weights, where λ̂ is not an estimate
# (the library says so with NegativeLLCWarning); the warning is expected, not a problem of the test.
UNTRAINED = pytest.mark.filterwarnings("ignore::slt_companion.diagnostics.NegativeLLCWarning")


def test_dln_shapes_and_product():
    m = DeepLinearNetwork([5, 4, 3, 4, 5], seed=0)
    assert m.depth == 4 and sum(p.numel() for p in m.parameters()) == 20 + 12 + 12 + 20
    x = torch.randn(7, 5)
    assert torch.allclose(m(x), x @ m.product().T, atol=1e-5)


def test_set_product_is_exact_and_balanced():
    W = random_low_rank(5, 5, 2, seed=3)
    m = DeepLinearNetwork([5, 4, 3, 4, 5]).set_product(W)
    assert torch.allclose(m.product(), W, atol=1e-5)
    Ws = [layer.weight.double() for layer in m.layers]
    for lower, upper in zip(Ws[:-1], Ws[1:]):
        assert torch.allclose(upper.T @ upper, lower @ lower.T, atol=1e-5)


def test_set_product_rejects_too_high_rank():
    W = random_low_rank(5, 5, 4, seed=0)
    with pytest.raises(ValueError, match="narrowest width 3"):
        DeepLinearNetwork([5, 3, 5]).set_product(W)
    with pytest.raises(ValueError, match="shape"):
        DeepLinearNetwork([5, 3, 5]).set_product(torch.zeros(4, 5))


def test_fit_least_squares_is_the_minimiser():
    d = teacher_student(2000, 5, 5, 2, seed=0)
    m = DeepLinearNetwork([5, 4, 5]).fit_least_squares(d.x, d.y)
    W = m.product().double()
    Wr = rank_constrained_least_squares(d.x, d.y, 4)
    assert torch.linalg.matrix_rank(W, atol=1e-4) == 4
    assert torch.allclose(W, Wr, atol=1e-4)
    # the gradient of the loss vanishes there
    loss = 0.5 * ((m(d.x) - d.y) ** 2).sum(-1).mean()
    grads = torch.autograd.grad(loss, list(m.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-4
    # and a random rank-4 perturbation is worse
    W2 = Wr + 1e-2 * random_low_rank(5, 5, 1, seed=9).double()
    f = lambda M: 0.5 * ((d.x.double() @ M.T - d.y.double()) ** 2).sum(-1).mean()  # noqa: E731
    assert f(W2) > f(Wr)


def test_bad_widths():
    with pytest.raises(ValueError, match="widths"):
        DeepLinearNetwork([5])
    with pytest.raises(ValueError, match="widths"):
        DeepLinearNetwork([5, 0, 5])


def test_monomial_model():
    m = MonomialModel([1, 2], init=[2.0, 3.0])
    x = torch.tensor([[1.0], [-2.0]])
    assert torch.allclose(m(x), x * 18.0)
    assert torch.equal(MonomialModel([3])(x), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="init"):
        MonomialModel([1, 2], init=[1.0])


def test_mlp_forward_and_batched_forward_agree():
    from torch.func import functional_call, vmap

    m = MLP([6, 5, 4, 3], activation="tanh", seed=1)
    assert m(torch.randn(7, 6)).shape == (7, 3)
    assert torch.equal(MLP([6, 5, 3], seed=1).layers[0].weight, MLP([6, 5, 3], seed=1).layers[0].weight)
    params = {k: torch.stack([v, v + 0.1]) for k, v in m.named_parameters()}
    x = torch.randn(2, 9, 6)
    ref = vmap(lambda p, xx: functional_call(m, p, (xx,)))(params, x)
    assert torch.allclose(m.forward_batched(params, x), ref, atol=1e-6)
    with pytest.raises(ValueError, match="activation"):
        MLP([2, 2], activation="gelu")


@UNTRAINED
def test_llc_of_an_mlp_runs_with_cross_entropy():
    from slt_companion.llc import estimate_llc

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    m = MLP([4, 6, 2], seed=0)
    est = estimate_llc(m, torch.nn.functional.cross_entropy, (x, y), num_chains=2, num_draws=50,
                       num_burnin=20, step_size=1e-5, progress=False)
    assert np.isfinite(est.mean)


def test_attention_only_lm_refuses_tokens_outside_its_vocabulary():
    from slt_companion.models import AttentionOnlyLM

    m = AttentionOnlyLM(10, n_ctx=4, d_model=8, num_heads=2)
    for bad in ([[-1, 2]], [[10, 2]]):
        with pytest.raises(ValueError, match="vocab_size = 10"):
            m(torch.tensor(bad))


def _vmapped(m, params, x):
    from torch.func import functional_call, vmap

    return vmap(lambda p, xx: functional_call(m, p, (xx,)))(params, x)


def _chain_params(m, C, *, frozen=(), seed=0):
    """Every parameter as a (C, *shape) tensor: perturbed per chain, or (names in ``frozen``) the model's own
    tensor expanded, as the sampler passes the parameters it leaves alone."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in m.named_parameters():
        v = v.detach()
        if any(k.startswith(f) for f in frozen):
            out[k] = v.expand(C, *v.shape)
        else:
            out[k] = v + 0.3 * v.abs().mean() * torch.randn(C, *v.shape, generator=gen)
    return out


@pytest.mark.parametrize("shape", [dict(), dict(task_dim=2, num_examples=5, num_layers=1, num_heads=2, d_model=8,
                                                d_mlp=12), dict(num_layers=3, num_heads=8, d_model=16, d_mlp=5)])
@pytest.mark.parametrize("frozen", [(), ("blocks.0.",), ("embed", "pos", "blocks.0.attn", "ln_f", "unembed")])
def test_icl_transformer_fast_path_equals_vmap(shape, frozen):
    from slt_companion.models import ICLTransformer

    m = ICLTransformer(**shape, seed=3)
    D, K = m.task_dim, m.num_examples
    for k_used in (K, max(1, K - 2)):                            # full and shorter contexts
        xy = torch.randn(3, 4, k_used, D + 1, generator=torch.Generator().manual_seed(k_used))
        params = _chain_params(m, 3, frozen=frozen, seed=k_used)
        ref = _vmapped(m, params, xy)
        got = m.forward_batched(params, xy)
        assert got.shape == ref.shape == (3, 4, k_used)
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (got - ref).abs().max()


@pytest.mark.parametrize("shape", [dict(), dict(n_ctx=7, d_model=12, num_heads=3, d_head=5, num_layers=1),
                                   dict(n_ctx=6, d_model=8, num_heads=2, num_layers=3, layer_norm=False)])
@pytest.mark.parametrize("frozen", [(), ("blocks.1.heads.0", "blocks.0.", "ln_f"), ("embed", "pos", "unembed")])
def test_attention_only_lm_fast_path_equals_vmap(shape, frozen):
    from slt_companion.models import AttentionOnlyLM

    m = AttentionOnlyLM(11, **shape, seed=2)
    frozen = tuple(f for f in frozen if not f.startswith("blocks.") or int(f.split(".")[1]) < m.num_layers)
    for T, dtype in ((m.n_ctx, torch.int64), (m.n_ctx - 2, torch.int32)):
        tokens = torch.randint(0, 11, (2, 5, T), generator=torch.Generator().manual_seed(T)).to(dtype)
        params = _chain_params(m, 2, frozen=frozen, seed=T)
        ref = _vmapped(m, params, tokens)
        got = m.forward_batched(params, tokens)
        assert got.shape == ref.shape == (2, 5, T, 11)
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (got - ref).abs().max()


@UNTRAINED
@pytest.mark.parametrize("params", [None, "blocks.1.heads.2"])
def test_transformer_fast_path_gives_the_vmapped_chains(params):
    """The sampler with the fast path (every parameter, or one head with the rest shared) follows the chains of
    the vmapped path to rounding: same noise, same minibatches, λ̂ equal to 1e-4."""
    from slt_companion.llc import estimate_llc
    from slt_companion.models import AttentionOnlyLM
    from slt_companion.train import lm_loss

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 13, (64, 8), generator=gen), torch.randint(0, 13, (64, 8), generator=gen)
    kw = dict(num_chains=2, num_draws=30, num_burnin=0, batch_size=8, step_size=1e-4, nbeta=10.0, seed=1,
              progress=False, params=params)
    fast = estimate_llc(AttentionOnlyLM(13, n_ctx=8, d_model=16, num_heads=4, seed=0), lm_loss, (x, y), **kw)
    plain = AttentionOnlyLM(13, n_ctx=8, d_model=16, num_heads=4, seed=0)
    plain.forward_batched = None                                   # no fast path: vmap

    def loss(out, yy):                                             # lm_loss without its batched attribute
        return lm_loss(out, yy)

    slow = estimate_llc(plain, loss, (x, y), **kw)
    assert np.allclose(fast.trace, slow.trace, rtol=1e-4, atol=1e-6)
    assert abs(fast.mean - slow.mean) < 1e-4 * max(1.0, abs(slow.mean))


def _icl_run(**kw):
    from slt_companion.data import icl_regression
    from slt_companion.llc import estimate_llcs
    from slt_companion.models import ICLTransformer

    def mse(out, y):
        return ((out - y) ** 2).mean()

    xy = icl_regression(64, seed=0, task_dim=2, num_examples=4).xy
    models = [ICLTransformer(task_dim=2, num_examples=4, d_model=8, d_mlp=8, num_heads=2, seed=s) for s in (0, 1)]
    return estimate_llcs(models, mse, xy, num_chains=2, num_draws=20, num_burnin=0, batch_size=4, step_size=1e-4,
                         nbeta=10.0, seed=3, progress=False, chunk_size=2, **kw)


def test_compiled_step_follows_the_eager_chains(monkeypatch):
    """sampling.COMPILE = True: the SGLD step of a fast-path model goes through torch.compile and follows the eager
    chains to rounding (same noise, same minibatches); a compilation that fails warns once and the run is the eager
    one; "auto" leaves a short run eager."""
    from slt_companion import sampling

    monkeypatch.setattr(sampling, "COMPILE", False)
    eager = _icl_run()
    monkeypatch.setattr(sampling, "COMPILE", True)
    monkeypatch.setattr(sampling, "_COMPILE_FAILED", [])
    calls = []
    real = sampling._compiled_fast_losses

    def counted():
        calls.append(1)
        return real()

    monkeypatch.setattr(sampling, "_compiled_fast_losses", counted)
    compiled = _icl_run()
    assert calls and not sampling._COMPILE_FAILED
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a.trace, b.trace, rtol=1e-4, atol=1e-6)

    def broken():
        def fail(*args):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(sampling, "_compiled_fast_losses", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile of the SGLD step failed.*no C\\+\\+ compiler"):
        fallback = _icl_run()
    assert len(sampling._COMPILE_FAILED) == 1
    for a, b in zip(eager, fallback):
        assert np.array_equal(a.trace, b.trace)
    monkeypatch.setattr(sampling, "COMPILE", "auto")
    monkeypatch.setattr(sampling, "_COMPILE_FAILED", [])
    monkeypatch.setattr(sampling, "_compiled_fast_losses", broken)     # would warn if "auto" compiled
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile of the SGLD step")
        short = _icl_run()
    for a, b in zip(eager, short):
        assert np.array_equal(a.trace, b.trace)


def test_compile_is_decided_per_checkpoint(monkeypatch):
    """"auto" judges a run by one checkpoint's chains (and compiles only large steps), so a checkpoint takes the same
    path alone and batched with others: its numbers do not depend on its neighbours."""
    from slt_companion import sampling

    seen = []
    real = sampling._Problem.compiling

    def record(self, num_chains, batch_size, num_steps):
        seen.append(num_chains)
        return real(self, num_chains, batch_size, num_steps)

    monkeypatch.setattr(sampling._Problem, "compiling", record)
    _icl_run()                                   # 2 checkpoints x 2 chains in one run
    assert seen == [2]
    monkeypatch.setattr(sampling, "COMPILE_MIN_WORK", 0)
    from slt_companion.llc import half_mse
    from slt_companion.models import DeepLinearNetwork

    prob = sampling._Problem(DeepLinearNetwork([3, 2, 3], seed=0), half_mse, (torch.randn(50, 3), torch.randn(50, 3)),
                             None, "cpu")
    assert prob.fast_forward is not None
    assert prob.step_bytes(4, 50) < sampling.COMPILE_MIN_STEP_BYTES
    assert not real(prob, 4, 50, 10 ** 9).compiled              # a small model's step stays eager, however long
    monkeypatch.setattr(sampling, "COMPILE_MIN_STEP_BYTES", 0)
    assert real(prob, 4, 50, 10).compiled
    sub = sampling._Problem(DeepLinearNetwork([3, 2, 3], seed=0), half_mse, (torch.randn(50, 3), torch.randn(50, 3)),
                            ["layers.0.weight"], "cpu")
    assert sub.fast_forward is not None and not real(sub, 4, 50, 10).compiled   # a refined LLC stays eager


def test_rank_of_the_constrained_fit_is_a_whole_number():
    x, y = torch.randn(20, 3), torch.randn(20, 2)
    for bad in (-1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="rank must be an integer ≥ 0"):
            rank_constrained_least_squares(x, y, bad)
    assert torch.allclose(rank_constrained_least_squares(x, y, 2.0), rank_constrained_least_squares(x, y, 2))
    assert torch.allclose(rank_constrained_least_squares(x, y, 5), rank_constrained_least_squares(x, y, 2))
    assert rank_constrained_least_squares(x, y, 0).abs().max() == 0


def test_deep_linear_init_scale_is_a_finite_number_at_least_zero():
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="init_scale must be a finite number ≥ 0"):
            DeepLinearNetwork([2, 2], init_scale=bad)
    assert DeepLinearNetwork([2, 2], init_scale=0).product().abs().max() == 0
    assert torch.equal(DeepLinearNetwork([2, 3], init_scale=2).layers[0].weight,
                       2 * DeepLinearNetwork([2, 3]).layers[0].weight)


def test_mlp_seed_none_draws_from_the_global_generator():
    torch.manual_seed(0)
    a, b = MLP([2, 3], seed=None), MLP([2, 3], seed=None)
    assert not torch.equal(a.layers[0].weight, b.layers[0].weight)    # like DeepLinearNetwork(seed=None)
    torch.manual_seed(0)
    assert torch.equal(MLP([2, 3], seed=None).layers[0].weight, a.layers[0].weight)
    assert torch.equal(MLP([2, 3], seed=4).layers[0].weight, MLP([2, 3], seed=4).layers[0].weight)


def test_groundtruth_polynomial_checks_powers_and_init():
    from slt_companion.groundtruth import Polynomial

    with pytest.raises(ValueError, match=r"init must have one value per exponent \(2\), got \[1\]"):
        Polynomial([2, 1], init=[1.0])
    with pytest.raises(ValueError, match=r"init must have one value per exponent \(2\), got \[3\]"):
        Polynomial([2, 1], init=[1.0, 2.0, 3.0])
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="powers must be an integer ≥ 0"):
            Polynomial([2, bad])
    assert Polynomial([2, 0], init=[1.0, 2.0]).weights.tolist() == [1.0, 2.0]
    assert Polynomial([3, 0, 2]).powers.tolist() == [3.0, 0.0, 2.0]


_DLN = DeepLinearNetwork([3, 2, 2])


@pytest.mark.parametrize("call, err, match", [
    (lambda: _DLN(torch.zeros(4, 5)), ValueError, r"x must have shape \(batch, widths\[0\] = 3\), got shape \(4, 5\)"),
    (lambda: _DLN(torch.zeros(4, 3, dtype=torch.float64)), TypeError, r"weights' dtype torch.float32, got torch.float64"),
    (lambda: _DLN(torch.zeros(4, 3, dtype=torch.int64)), TypeError, r"pass x.to\(torch.float32\)"),
    (lambda: _DLN.set_product(torch.full((2, 3), float("nan"))), ValueError, "W must be a finite real matrix, got 6 NaN"),
    (lambda: _DLN.set_product(object()), TypeError, "W must be a matrix"),
    (lambda: DeepLinearNetwork([True, 2]), ValueError, "widths must be positive integers, not booleans"),
    (lambda: ToyModelOfSuperposition("a", 2), ValueError, "n_features must be an integer ≥ 1, got 'a'"),
    (lambda: ToyModelOfSuperposition(6, 2.5), ValueError, "n_hidden must be an integer ≥ 1, got 2.5"),
    (lambda: ToyModelOfSuperposition(init_scale="x"), ValueError, "init_scale must be a finite number ≥ 0, got 'x'"),
])
def test_model_inputs_and_arguments_are_named_when_wrong(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_set_product_takes_a_numpy_array():
    W = np.outer([1.0, -2.0], [0.5, 1.0, 3.0])
    a, b = DeepLinearNetwork([3, 2, 2]).set_product(W), DeepLinearNetwork([3, 2, 2]).set_product(torch.tensor(W))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.allclose(a.product().double(), torch.tensor(W), atol=1e-5)
