"""Teacher-student and monomial data generators."""

import pytest
import torch

from slt_companion.data import monomial_data, random_low_rank, teacher_student


def test_random_low_rank_has_the_rank_and_singular_values():
    W = random_low_rank(5, 6, 3, singular_values=[3.0, 2.0, 1.0], seed=1)
    s = torch.linalg.svdvals(W.double())
    assert torch.allclose(s[:3], torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), atol=1e-5)
    assert s[3:].abs().max() < 1e-5
    assert random_low_rank(4, 4, 0).abs().sum() == 0


def test_teacher_student_is_deterministic_and_has_the_right_noise():
    a = teacher_student(20000, 5, 4, 2, noise_std=0.5, seed=3)
    b = teacher_student(20000, 5, 4, 2, noise_std=0.5, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.x.shape == (20000, 5) and a.y.shape == (20000, 4) and a.n == len(a) == 20000
    resid = a.y - a.x @ a.teacher.T
    assert abs(float(resid.std()) - 0.5) < 0.01
    assert not torch.equal(a.y, teacher_student(20000, 5, 4, 2, noise_std=0.5, seed=4).y)
    x, y = a.xy
    assert x is a.x and y is a.y


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank=3 exceeds"):
        teacher_student(10, 2, 4, 3)
    with pytest.raises(ValueError, match="noise_std"):
        teacher_student(10, 2, 2, 1, noise_std=-1.0)
    with pytest.raises(ValueError, match="n must be"):
        teacher_student(0, 2, 2, 1)
    with pytest.raises(ValueError, match="singular_values"):
        random_low_rank(3, 3, 2, singular_values=[1.0])


def test_monomial_data():
    d = monomial_data(1000, seed=0)
    assert d.x.shape == (1000, 1) and torch.equal(d.y, torch.zeros(1000, 1))
    noisy = monomial_data(1000, noise_std=0.5, seed=0)
    assert abs(float(noisy.y.std()) - 0.5) < 0.05


def test_digits_and_mnist1d_load_offline_or_name_the_missing_package():
    from slt_companion.data import digits, mnist1d

    for loader, package, shape in ((digits, "scikit-learn", 64), (mnist1d, "mnist1d", 40)):
        try:
            d = loader(seed=0)
        except ImportError as err:
            assert package in str(err) and "pip install" in str(err)
            continue
        assert d.x.shape[1] == shape and d.num_classes == 10
        assert set(d.y.tolist()) == set(range(10))
        assert abs(float(d.x.mean())) < 0.05


def test_repeated_spans_are_placed_as_the_per_row_rule_says():
    """_insert_repeats (vectorised) places each row's span where the per-row rule puts it: the first copy at
    a = floor(u0 (free + 1)), the second at a + length + floor(u1 (free - a + 1)); nothing else changes."""
    from slt_companion.data import _insert_repeats

    for s in range(40):
        lo, hi = (4, 16) if s % 2 else (1, 2 + s % 9)
        w = torch.randint(0, 50, (16, 33 + s % 5), generator=torch.Generator().manual_seed(100 + s))
        got = _insert_repeats(w, (lo, hi), 50, torch.Generator().manual_seed(s))
        g = torch.Generator().manual_seed(s)                    # the same draws, in the same order
        lengths = torch.randint(lo, hi, (16,), generator=g)
        u = torch.rand(16, 3, generator=g, dtype=torch.float64)
        span = torch.randint(0, 50, (16, hi - 1), generator=g)
        want = w.clone()
        for r in range(16):
            ell = int(lengths[r])
            free = w.shape[1] - 2 * ell
            a = int(u[r, 0] * (free + 1))
            b = a + ell + int(u[r, 1] * (free - a + 1))
            want[r, a:a + ell] = span[r, :ell]
            want[r, b:b + ell] = span[r, :ell]
        assert torch.equal(got, want), s


def test_small_corpus_and_split_edges():
    from slt_companion.data import char_corpus, digits, icl_regression

    c = char_corpus("prose", max_chars=3 * 64, block=64, val_fraction=0.1)      # 3 blocks < 1 / val_fraction
    assert len(c.val) == 64 and len(c.train) == 128                               # no block in both
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=0.9995)
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=0.0001)
    with pytest.raises(ValueError, match="n must"):
        icl_regression(0)


def test_non_finite_noise_and_singular_values_are_refused():
    nan, inf = float("nan"), float("inf")
    for bad in ([nan, 1.0], [inf, 1.0], [1.0, -1.0]):
        with pytest.raises(ValueError, match="singular_values must be 2 finite positive numbers"):
            random_low_rank(3, 3, 2, singular_values=bad)
    for bad in (nan, inf, -1.0):
        with pytest.raises(ValueError, match="noise_std must be a finite number ≥ 0"):
            teacher_student(3, 2, 2, 1, noise_std=bad)
        with pytest.raises(ValueError, match="noise_std must be a finite number ≥ 0"):
            monomial_data(3, noise_std=bad)
    assert monomial_data(3, noise_std=0).noise_std == 0.0


def test_decode_refuses_tokens_outside_the_vocabulary():
    from slt_companion.data import CharCorpus

    c = CharCorpus("x", torch.arange(10) % 5, torch.arange(6) % 5, ())
    assert c.decode(c.encode("hello")) == "hello" and c.decode(torch.tensor([])) == ""
    for bad in ([-1], [c.vocab_size], torch.tensor([0, 200])):
        with pytest.raises(ValueError, match=rf"tokens must lie in \[0, vocab_size = {c.vocab_size}\)"):
            c.decode(bad)


@pytest.mark.parametrize("kw", [dict(block="x"), dict(block="x", max_chars=10_000), dict(block=8, max_chars=10_000)])
def test_char_corpus_checks_block_before_max_chars(kw):
    from slt_companion.data import char_corpus

    with pytest.raises(ValueError, match=f"block must be an integer ≥ 16, got {kw['block']!r}"):
        char_corpus("prose", **kw)
