"""ICLTransformer, AttentionOnlyLM and their data: shapes, causal masking, determinism, vmap-ability, errors."""

import numpy as np
import pytest
import torch

from slt_companion.data import (CHAR_VOCAB, ICLTaskSampler, bayes_ridge_predictions, char_corpus,
                                icl_regression)
from slt_companion.dynamics import llc_over_trajectory
from slt_companion.llc import estimate_llc
from slt_companion.models import AttentionOnlyLM, ICLTransformer


# These tests check shapes and determinism with a few draws at untrained weights, where λ̂ is not an estimate
# (the library says so with NegativeLLCWarning); the warning is expected, not a problem of the test.
UNTRAINED = pytest.mark.filterwarnings("ignore::slt_companion.diagnostics.NegativeLLCWarning")


def mse(out, y):
    return ((out - y) ** 2).mean()


def test_icl_transformer_shapes_and_parameter_count():
    m = ICLTransformer()
    assert sum(p.numel() for p in m.parameters()) == 53_057          # the paper: "~50k"
    d = icl_regression(5, seed=0)
    assert d.tokens.shape == (5, 16, 5) and d.ys.shape == (5, 16)
    out, pats = m(d.tokens, return_attention=True)
    assert out.shape == (5, 16) and len(pats) == 2 and pats[0].shape == (5, 4, 32, 32)
    assert torch.allclose(pats[0].sum(-1), torch.ones(5, 4, 32))


def test_icl_tokens_interleave_x_and_y():
    m = ICLTransformer(task_dim=2, num_examples=3)
    xy = torch.arange(1, 10, dtype=torch.float32).reshape(1, 3, 3)    # rows (x1, x2, y)
    tok = m.tokens(xy)[0]
    assert tok[0].tolist() == [0, 1, 2] and tok[1].tolist() == [3, 0, 0] and tok[4].tolist() == [0, 7, 8]


def test_icl_prediction_is_causal():
    """Changing y_k or anything later must not change the predictions at positions ≤ k."""
    m = ICLTransformer(seed=1)
    d = icl_regression(3, seed=2)
    a = m(d.tokens)
    tok = d.tokens.clone()
    tok[:, 7, -1] += 5.0            # y_8 (0-based 7)
    tok[:, 10:, :] = torch.randn_like(tok[:, 10:, :])
    b = m(tok)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_icl_sampler_determinism_and_task_diversity():
    s = ICLTaskSampler(num_tasks=3, task_seed=5)
    a = s.sample(64, torch.Generator().manual_seed(0))
    b = s.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys)
    assert len(torch.unique(a.tasks, dim=0)) <= 3
    assert s.predict_zero_loss == pytest.approx(4.125)
    big = icl_regression(20_000, seed=1)
    assert float((big.ys ** 2).mean()) == pytest.approx(4.125, rel=0.03)
    assert not torch.equal(icl_regression(4, seed=1).xs, icl_regression(4, seed=2).xs)


def test_bayes_ridge_predictions():
    d = icl_regression(2000, seed=3)
    pred = bayes_ridge_predictions(d.xs, d.ys, 0.125)
    assert torch.all(pred[:, 0] == 0)                                 # the prior mean before any example
    err = ((pred - d.ys) ** 2).mean(0)
    assert err[0] > 3.5 and err[-1] < 0.25                             # σ² = 0.125 plus estimation error
    with pytest.raises(ValueError, match="xs must be"):
        bayes_ridge_predictions(d.xs[0], d.ys)


@UNTRAINED
def test_llc_runs_on_the_icl_transformer_and_is_deterministic():
    m = ICLTransformer(task_dim=2, num_examples=4, num_layers=1, num_heads=2, d_model=8, d_mlp=8)
    d = icl_regression(256, task_dim=2, num_examples=4, seed=0)
    kw = dict(num_chains=2, num_draws=10, num_burnin=5, step_size=1e-4, nbeta=60.0, localization=6.0,
              batch_size=32, progress=False, seed=1)
    a, b = estimate_llc(m, mse, d.xy, **kw), estimate_llc(m, mse, d.xy, **kw)
    assert np.isfinite(a.mean) and a.mean == b.mean


@UNTRAINED
def test_llc_over_trajectory_shapes():
    from slt_companion.train import train
    m = ICLTransformer(task_dim=2, num_examples=4, num_layers=1, num_heads=2, d_model=8, d_mlp=8)
    traj = train(m, mse, ICLTaskSampler(2, 4).batch_fn(8), num_steps=4, checkpoints=[0, 2, 4], progress=False)
    d = icl_regression(64, task_dim=2, num_examples=4, seed=0)
    tmpl = ICLTransformer(task_dim=2, num_examples=4, num_layers=1, num_heads=2, d_model=8, d_mlp=8)
    r = llc_over_trajectory(traj, tmpl, mse, d.xy, progress=False, num_chains=2, num_draws=5, num_burnin=2,
                            step_size=1e-4, nbeta=60.0, localization=6.0, batch_size=16)
    assert r["steps"].tolist() == [0, 2, 4] and r["mean"].shape == (3,) and r["per_chain"].shape == (3, 2)


def test_icl_errors():
    with pytest.raises(ValueError, match="xy must have shape"):
        ICLTransformer()(torch.zeros(2, 16, 4))
    with pytest.raises(ValueError, match="divisible"):
        ICLTransformer(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="num_tasks"):
        ICLTaskSampler(num_tasks=0)
    with pytest.raises(ValueError, match="noise_var"):
        ICLTaskSampler(noise_var=-1.0)


@UNTRAINED
def test_attention_only_lm_heads_patterns_and_causality():
    lm = AttentionOnlyLM(20, n_ctx=16, d_model=16, num_heads=2, seed=0)
    names = {n for n, _ in lm.named_parameters()}
    assert {"blocks.1.heads.0.W_Q", "blocks.1.heads.0.W_O"} <= names
    assert lm.head_names() == ["blocks.0.heads.0", "blocks.0.heads.1", "blocks.1.heads.0", "blocks.1.heads.1"]
    tok = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(0))
    logits, pats = lm(tok, return_attention=True)
    assert logits.shape == (3, 12, 20) and pats.shape == (3, 2, 2, 12, 12)
    assert torch.all(pats.triu(1) == 0)                              # no attention to the future
    tok2 = tok.clone()
    tok2[:, 6:] = (tok2[:, 6:] + 1) % 20
    assert torch.allclose(lm(tok2)[:, :6], logits[:, :6], atol=1e-6)
    assert torch.equal(AttentionOnlyLM(20, n_ctx=16, d_model=16, num_heads=2, seed=0).embed, lm.embed)
    with pytest.raises(ValueError, match="tokens must be"):
        lm(torch.zeros(2, 17, dtype=torch.long))
    # per-head refined LLC runs under vmap
    x, y = tok[:, :-1], tok[:, 1:]
    ce = lambda out, t: torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), t.reshape(-1))
    est = estimate_llc(lm, ce, (x, y), params="blocks.1.heads.0", num_chains=2, num_draws=5, num_burnin=2,
                       step_size=1e-5, nbeta=10.0, batch_size=3, progress=False)
    assert np.isfinite(est.mean)


def test_char_corpus_split_is_deterministic():
    a = char_corpus("prose")
    b = char_corpus("prose")
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.vocab_size == len(CHAR_VOCAB) == 96
    assert 0.08 < len(a.val) / (len(a.train) + len(a.val)) < 0.12
    assert a.decode(a.encode("def f(x):\n")) == "def f(x):\n"
    code = char_corpus("code", max_chars=100_000)
    x, y = code.batch(4, 32, torch.Generator().manual_seed(0))
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="kind"):
        char_corpus("poetry")
