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
