"""Head behaviour scores (slt_companion.heads) and the language-model data they are measured on."""

import math

import numpy as np
import pytest
import torch

from slt_companion.data import char_corpus, repeated_tokens
from slt_companion.heads import (current_token_score, head_scores, head_scores_over_trajectory, induction_score,
                                 previous_token_score, repeated_sequence_losses)
from slt_companion.models import AttentionOnlyLM
from slt_companion.train import LM_REPLICA_SIZES, lm_replica_settings, lm_settings, train


def _set_offset_head(model, layer, head, offset):
    """Zero every query/key weight and the token embeddings, make position t the (scaled) unit vector e_t, and give
    one head W_Q e_t -> 30 e_{t+offset}, W_K = 30 I: its score is large only for key s = t + offset."""
    with torch.no_grad():
        for block in model.blocks:
            for hd in block.heads:
                hd.W_Q.zero_()
                hd.W_K.zero_()
        model.embed.zero_()
        T, d = model.pos.shape
        model.pos.copy_(torch.eye(T, d) * math.sqrt(d))
        hd = model.blocks[layer].heads[head]
        m = hd.W_Q.shape[1]
        for t in range(T):
            if 0 <= t + offset < m:
                hd.W_Q[t, t + offset] = 30.0
        for s in range(min(T, m)):
            hd.W_K[s, s] = 30.0
    return model


def test_a_hand_built_previous_token_head_scores_near_one():
    model = AttentionOnlyLM(20, n_ctx=12, d_model=16, num_heads=1, d_head=16, layer_norm=False, seed=0)
    _set_offset_head(model, 0, 0, -1)
    toks = torch.randint(0, 20, (4, 12), generator=torch.Generator().manual_seed(0))
    prev = previous_token_score(model, toks)
    cur = current_token_score(model, toks)
    assert prev.shape == (2, 1) and prev[0, 0] > 0.95 and cur[0, 0] < 0.05
    # layer 1 was left with zero Q/K: uniform attention over the causal prefix
    expected_uniform_prev = np.mean([1 / (i + 1) for i in range(1, 12)])
    assert abs(prev[1, 0] - expected_uniform_prev) < 1e-6


def test_induction_score_of_a_hand_built_offset_head_and_of_uniform_attention():
    L = 6
    model = AttentionOnlyLM(20, n_ctx=2 * L, d_model=16, num_heads=1, d_head=16, layer_norm=False, seed=0)
    _set_offset_head(model, 1, 0, -L + 1)                   # attends from i to i - L + 1: a perfect "induction" pattern
    rep = repeated_tokens(8, L, 20, seed=1)
    ind = induction_score(model, rep)
    assert ind[1, 0] > 0.95
    uniform = np.mean([1 / (i + 1) for i in range(L, 2 * L)])  # layer 0 attends uniformly
    assert abs(ind[0, 0] - uniform) < 1e-6


def test_repeated_tokens_and_errors():
    rep = repeated_tokens(3, 5, 7, seed=0)
    assert rep.shape == (3, 10) and rep.dtype == torch.int64 and torch.equal(rep[:, :5], rep[:, 5:])
    assert torch.equal(rep, repeated_tokens(3, 5, 7, seed=0))
    model = AttentionOnlyLM(7, n_ctx=10, d_model=8, num_heads=2)
    with pytest.raises(ValueError, match="exact copy"):
        induction_score(model, torch.randint(0, 7, (2, 10)))
    with pytest.raises(ValueError, match="integer tensor"):
        previous_token_score(model, torch.zeros(2, 10))
    with pytest.raises(ValueError, match="half_length"):
        repeated_tokens(3, 1, 7)


def test_repeated_sequence_losses_see_copying():
    # an untrained model cannot copy: both halves cost about log V
    V = 11
    model = AttentionOnlyLM(V, n_ctx=16, d_model=16, num_heads=2, seed=0)
    first, second = repeated_sequence_losses(model, repeated_tokens(32, 8, V, seed=0))
    assert first > math.log(V) - 0.05 and abs(second - first) < 0.2
    scores = head_scores(model, repeated_tokens(4, 8, V))
    assert set(scores) == {"induction", "previous_token", "current_token", "loss_first", "loss_second", "icl"}


def test_repeat_spans_are_copies_inside_each_window():
    corpus = char_corpus("code", max_chars=100_000)
    g = torch.Generator().manual_seed(0)
    x, y = corpus.batch(16, 32, g, repeat_span=(3, 9))
    assert torch.equal(x[:, 1:], y[:, :-1])
    w = torch.cat([x, y[:, -1:]], 1)
    for row in w:                                    # some span of ≥ 3 tokens occurs twice, without overlap
        found = any(torch.equal(row[a:a + 3], row[b:b + 3]) for a in range(31) for b in range(a + 3, 31))
        assert found
    with pytest.raises(ValueError, match="repeat_span"):
        corpus.batch(2, 8, g, repeat_span=(3, 9))    # two copies of 8 do not fit in 9 tokens
    with pytest.raises(ValueError, match="repeat_span"):
        corpus.batch(2, 32, g, repeat_span=(5, 5))
    # deterministic for a fixed generator seed
    a = corpus.batch(4, 32, torch.Generator().manual_seed(3), repeat_span=(3, 9))[0]
    b = corpus.batch(4, 32, torch.Generator().manual_seed(3), repeat_span=(3, 9))[0]
    assert torch.equal(a, b)


def test_ngram_losses_decrease_with_order_and_match_a_direct_count():
    corpus = char_corpus("prose", max_chars=50_000)
    losses = [corpus.ngram_loss(k) for k in (1, 2, 3)]
    assert losses[0] > losses[1] > losses[2] > 0
    # unigram by hand
    V = corpus.vocab_size
    counts = torch.bincount(corpus.train, minlength=V).double()
    p = (counts + 0.1) / (counts.sum() + 0.1 * V)
    assert abs(losses[0] - float(-p[corpus.val].log().mean())) < 1e-9
    with pytest.raises(ValueError, match="order"):
        corpus.ngram_loss(4)


def test_scores_over_a_short_trajectory_and_grad_clip():
    corpus = char_corpus("code", max_chars=50_000)
    V = corpus.vocab_size
    model = AttentionOnlyLM(V, n_ctx=16, d_model=16, num_heads=2, seed=0)
    loss = lambda out, y: torch.nn.functional.cross_entropy(out.reshape(-1, V), y.reshape(-1))
    traj = train(model, loss, corpus.batch_fn(8, 16, repeat_span=(2, 5)), num_steps=6, lr=1e-3, optimizer="adamw",
                 schedule="constant", grad_clip=1.0, checkpoints=[0, 3, 6], progress=False)
    out = head_scores_over_trajectory(traj, AttentionOnlyLM(V, n_ctx=16, d_model=16, num_heads=2, seed=0),
                                      repeated_tokens(4, 8, V))
    assert out["induction"].shape == (3, 2, 2) and out["icl"].shape == (3,) and out["steps"].tolist() == [0, 3, 6]
    with pytest.raises(ValueError, match="grad_clip"):
        train(model, loss, corpus.batch_fn(8, 16), num_steps=2, grad_clip=0.0, progress=False)


def test_lm_settings_are_the_documented_sizes():
    s = lm_settings()
    assert s["model"]["num_layers"] == 2 and s["llc"]["nbeta"] == 30.0 and s["llc"]["localization"] == 200.0
    assert s["paper"]["stage_ends"] == [900, 6_500, 8_500, 17_000, 50_000]     # Hoogland et al., TMLR version


def test_lm_replica_settings_reseed_the_run_and_shrink_it(monkeypatch):
    from slt_companion import config

    s = lm_settings()
    for quick in (False, True):
        monkeypatch.setattr(config, "QUICK", quick)
        r = lm_replica_settings(3, s)
        assert r["seed"] == 3 and r["model"]["seed"] == 3 and s["seed"] == 0 and s["model"]["seed"] == 0
        assert {k: r[k] for k in LM_REPLICA_SIZES} == (dict(LM_REPLICA_SIZES) if not quick else
                                                       {k: s[k] for k in LM_REPLICA_SIZES})
        assert r["compile"] is (not quick)          # at full size the replicas train through torch.compile
        assert {k: v for k, v in r.items() if k not in ("seed", "model", "compile", *LM_REPLICA_SIZES)} == \
            {k: v for k, v in s.items() if k not in ("seed", "model", *LM_REPLICA_SIZES)}


def test_head_scores_agree_with_the_single_score_functions():
    V = 13
    model = AttentionOnlyLM(V, n_ctx=16, d_model=16, num_heads=2, seed=3)
    rep = repeated_tokens(5, 8, V, seed=2)
    text = torch.randint(0, V, (5, 12), generator=torch.Generator().manual_seed(1))
    s = head_scores(model, rep, text)
    assert np.allclose(s["induction"], induction_score(model, rep))
    assert np.allclose(s["previous_token"], previous_token_score(model, text))
    assert np.allclose(s["current_token"], current_token_score(model, text))
    assert (s["loss_first"], s["loss_second"]) == pytest.approx(repeated_sequence_losses(model, rep))


@pytest.mark.parametrize("score", [previous_token_score, current_token_score, induction_score, repeated_sequence_losses,
                                   head_scores])
def test_a_model_without_return_attention_is_named(score):
    class NoPatterns(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(7, 7)

        def forward(self, tokens):
            return self.embed(tokens)

    with pytest.raises(TypeError, match=r"forward accepts return_attention=True .* as AttentionOnlyLM does; "
                                        r"NoPatterns.forward\(tokens\) has no return_attention argument"):
        score(NoPatterns(), repeated_tokens(2, 4, 7, seed=0))
