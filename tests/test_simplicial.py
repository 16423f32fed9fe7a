"""The scalar triple product's identities, 2-simplicial attention, the pair-sum task, matched parameter counts."""

import itertools

import pytest
import torch

from slt_companion.models import TwoSimplicialAttention
from slt_companion.simplicial import (SimplicialTransformer, matched_mlp_width, num_params, pair_sum_task,
                                      scalar_triple_product, train_classifier, triple_product_logits)

torch.set_default_dtype(torch.float32)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_squared_formula_and_gram_determinant():
    a, b, c = torch.randn(3, 50, 5, generator=_gen(), dtype=torch.float64)
    tp = scalar_triple_product(a, b, c)
    d = lambda u, v: (u * v).sum(-1)   # noqa: E731
    sq = d(a, b) ** 2 * d(c, c) + d(b, c) ** 2 * d(a, a) + d(a, c) ** 2 * d(b, b) - 2 * d(a, b) * d(a, c) * d(b, c)
    assert torch.allclose(tp ** 2, sq, rtol=1e-10)
    gram = torch.stack([a, b, c], -2) @ torch.stack([a, b, c], -2).transpose(-1, -2)
    norms = d(a, a) * d(b, b) * d(c, c)
    assert torch.allclose(tp ** 2, norms - torch.linalg.det(gram), rtol=1e-9, atol=1e-9)
    a3, b3, c3 = torch.randn(3, 20, 3, generator=_gen(1), dtype=torch.float64)   # in R^3: det G = (a.(b x c))^2
    signed = (a3 * torch.linalg.cross(b3, c3)).sum(-1)
    assert torch.allclose(scalar_triple_product(a3, b3, c3) ** 2,
                          d(a3, a3) * d(b3, b3) * d(c3, c3) - signed ** 2, rtol=1e-9, atol=1e-9)


def test_permutation_symmetry():
    v = torch.randn(3, 30, 4, generator=_gen(2), dtype=torch.float64)
    ref = scalar_triple_product(*v)
    for perm in itertools.permutations(range(3)):
        assert torch.allclose(scalar_triple_product(*v[list(perm)]), ref, rtol=1e-12)


def test_zero_iff_pairwise_orthogonal():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=_gen(3), dtype=torch.float64))
    a, b, c = 2.0 * q[:, 0], 0.5 * q[:, 1], 3.0 * q[:, 2]
    assert float(scalar_triple_product(a, b, c)) < 1e-12
    assert float(scalar_triple_product(a, b + 0.1 * a, c)) > 1e-3   # one non-orthogonal pair: positive


def test_max_iff_linearly_dependent():
    a, b, c = torch.randn(3, 100, 5, generator=_gen(4), dtype=torch.float64)
    bound = a.norm(dim=-1) * b.norm(dim=-1) * c.norm(dim=-1)
    assert (scalar_triple_product(a, b, c) < bound - 1e-9).all()       # generic triples: strictly below
    dep = 0.7 * a - 1.3 * b                                             # c in span(a, b)
    assert torch.allclose(scalar_triple_product(a, b, dep), bound / c.norm(dim=-1) * dep.norm(dim=-1), rtol=1e-10)


def test_all_pairs_logits_match_pointwise():
    p, l1, l2 = torch.randn(3, 2, 5, 4, generator=_gen(5), dtype=torch.float64)
    L = triple_product_logits(p, l1, l2)
    assert L.shape == (2, 5, 5, 5)
    ref = scalar_triple_product(p[:, :, None, None], l1[:, None, :, None], l2[:, None, None, :])
    assert torch.allclose(L, torch.sqrt(ref ** 2 + 1e-6), rtol=1e-9)


def test_two_simplicial_attention_shapes_and_mask():
    att = TwoSimplicialAttention(12, 4, 3, seed=0)
    x = torch.randn(7, 5, 12, generator=_gen(6))
    A = att.attention(x)
    assert A.shape == (7, 5, 5, 5) and torch.allclose(A.sum((-1, -2)), torch.ones(7, 5))
    i = torch.arange(5)
    assert (A[:, i, i, :] == 0).all() and (A[:, i, :, i] == 0).all() and (A[:, :, i, i] == 0).all()
    y = att(x)
    assert y.shape == x.shape
    assert torch.allclose(y.mean(-1), torch.zeros(7, 5), atol=1e-5)      # LayerNorm on the output


def test_pair_sum_labels_by_brute_force():
    x, y = pair_sum_task(50, seq_len=5, modulus=7, seed=3)
    for s in range(50):
        for i in range(5):
            want = any((x[s, j] + x[s, k]) % 7 == x[s, i] for j in range(5) for k in range(5)
                       if len({i, j, k}) == 3)
            assert bool(y[s, i]) == want
    x2, y2 = pair_sum_task(50, seq_len=5, modulus=7, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_matched_parameter_counts():
    w = matched_mlp_width(11, 6)
    n2 = num_params(SimplicialTransformer(2, 11, 6))
    n1 = num_params(SimplicialTransformer(1, 11, 6, d_mlp=w))
    assert abs(n1 - n2) <= 2 * 24 + 1


def test_training_is_deterministic_and_learns():
    train, test = pair_sum_task(256, seed=0), pair_sum_task(128, seed=1)
    logs = [train_classifier(SimplicialTransformer(2, 11, 6, seed=1), train, test, steps=30, batch_size=32,
                             seed=0, progress=False) for _ in range(2)]
    assert all((logs[0][k] == logs[1][k]).all() for k in logs[0])
    assert logs[0]["train_loss"][-1] < logs[0]["train_loss"][0]


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="kind"):
        SimplicialTransformer(3, 11, 6)
    with pytest.raises(ValueError, match="d_head"):
        TwoSimplicialAttention(8, 0)
    with pytest.raises(ValueError, match="same last dimension"):
        scalar_triple_product(torch.ones(3), torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="modulus"):
        pair_sum_task(10, modulus=1)
    with pytest.raises(ValueError, match="tokens"):
        SimplicialTransformer(1, 11, 6)(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="steps"):
        train_classifier(SimplicialTransformer(1, 11, 6), pair_sum_task(8), pair_sum_task(8), steps=0)


def test_sequence_nll_is_per_sequence():
    from slt_companion.simplicial import sequence_nll, token_ce
    x, y = pair_sum_task(16, seed=2)
    logits = SimplicialTransformer(1, 11, 6)(x)
    assert torch.allclose(sequence_nll(logits, y), 6 * token_ce(logits, y))
