"""The toy model of superposition: exact losses vs the paper's table, k-gons, the classifier, model and data."""

import math

import numpy as np
import pytest
import torch

from slt_companion import tms
from slt_companion.data import tms_data
from slt_companion.models import ToyModelOfSuperposition

# Chen, Lau, Mendel, Wei & Murfet (2023), the table of critical points (PAPERS.md §6)
PAPER_C6 = {(4, 0): 0.11111, (4, 1): 0.10417, (5, 0): 0.06874, (5, 1): 0.06180, (6, 0): 0.04819}
PAPER_C5 = {(4, 0): 0.06667, (4, 1): 0.05667, (5, 0): 0.01583}


@pytest.mark.parametrize("c, table", [(6, PAPER_C6), (5, PAPER_C5)])
def test_population_loss_matches_the_paper_table(c, table):
    for (k, pos), value in table.items():
        W, b = tms.k_gon(k, c, positive=pos)
        assert tms.population_loss(W, b).item() == pytest.approx(value, abs=1e-4)
        assert tms.paper_loss(k, c, pos) == pytest.approx(value, abs=1e-4)
        # a negative dead bias is a flat direction: same loss as zero
        if c - k - pos > 0:
            Wn, bn = tms.k_gon(k, c, positive=pos, negative=1, negative_bias=-0.7)
            assert tms.population_loss(Wn, bn).item() == pytest.approx(tms.population_loss(W, b).item(), abs=1e-12)


def test_positive_bias_saves_exactly_one_over_4c_squared():
    for c in (5, 6, 7):
        W, b = tms.k_gon(4, c)
        Wp, bp = tms.k_gon(4, c, positive=1)
        assert (tms.population_loss(W, b) - tms.population_loss(Wp, bp)).item() == pytest.approx(1 / (4 * c * c), abs=1e-12)


def test_population_loss_equals_quadrature_of_its_definition():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    b = 0.4 * torch.randn(6, generator=gen, dtype=torch.float64)
    mu = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000           # midpoint rule on [0, 1]
    total = 0.0
    for a in range(6):
        x = torch.zeros(len(mu), 6, dtype=torch.float64)
        x[:, a] = mu
        total += ((x - torch.relu(x @ W.T @ W + b)) ** 2).sum(1).mean().item() / 6
    assert tms.population_loss(W, b).item() == pytest.approx(total, abs=1e-8)
    assert tms.population_loss(torch.zeros(2, 6, dtype=torch.float64), torch.zeros(6)).item() == pytest.approx(1 / 3)


def test_population_loss_batches_over_leading_dimensions():
    Ws, bs = zip(*(tms.k_gon(k, 6) for k in (4, 5, 6)))
    batched = tms.population_loss(torch.stack(Ws), torch.stack(bs))
    assert batched.shape == (3,)
    for i, (W, b) in enumerate(zip(Ws, bs)):
        assert batched[i].item() == pytest.approx(tms.population_loss(W, b).item(), abs=1e-14)


@pytest.mark.parametrize("k", [5, 6, 7, 8])
def test_solved_kgon_radius_and_bias_match_the_paper(k):
    l, b, h = tms.solve_kgon(k, k)
    assert l == pytest.approx(tms.PAPER_KGON[k][0], abs=1e-4)
    assert b == pytest.approx(tms.PAPER_KGON[k][1], abs=1e-4)
    assert h == pytest.approx(tms.PAPER_H[k], abs=1e-4)


def test_kgons_are_critical_with_the_expected_flat_directions():
    l, bb, _ = tms.solve_kgon(6, 6)
    ev = tms.hessian_eigenvalues(*tms.k_gon(6, 6, radius=l, bias=bb))
    assert ev.min() > -1e-9 and int((ev > 1e-9).sum()) == 17        # lambda = 17/2 = (3c - 1)/2
    l5, b5, _ = tms.solve_kgon(5, 5)
    ev5 = tms.hessian_eigenvalues(*tms.k_gon(5, 6, negative=1, radius=l5, bias=b5))
    assert int((ev5 > 1e-9).sum()) == 14                             # lambda = 7 for the 5-gon with b < 0
    assert tms.kgon_llc(6, 6) == 8.5 and tms.kgon_llc(5, 6) == 7.0 and tms.kgon_llc(5, 6, 1) == 8.5
    assert tms.kgon_llc(4, 6) is None and tms.kgon_llc(7, 7) == 10.0


@pytest.mark.parametrize("k, pos, neg", [(6, 0, 0), (5, 1, 0), (5, 0, 1), (4, 1, 1), (4, 2, 0), (4, 0, 0)])
def test_classifier_round_trips_on_perturbed_permuted_rotated_kgons(k, pos, neg):
    gen = torch.Generator().manual_seed(k * 10 + pos)
    for trial in range(10):
        W, b = tms.k_gon(k, 6, positive=pos, negative=neg, angle=float(torch.rand(1, generator=gen)) * 6.28)
        perm = torch.randperm(6, generator=gen)
        th = float(torch.rand(1, generator=gen)) * 2 * math.pi
        R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
        Wn = R @ W[:, perm] + 0.03 * torch.randn(2, 6, generator=gen, dtype=torch.float64)
        bn = b[perm] + 0.005 * torch.randn(6, generator=gen, dtype=torch.float64)
        m = tms.classify_kgon(Wn, bn)
        assert m.name == tms.kgon_name(k, pos, neg), (trial, m)
        assert m.distance < 0.2 and m.k == k and sorted(m.live) == sorted(perm.argsort()[:k].tolist())
    exact = tms.classify_kgon(*tms.k_gon(k, 6, positive=pos, negative=neg))
    assert exact.distance < 1e-12 and exact.loss == pytest.approx(tms.population_loss(
        *tms.k_gon(k, 6, positive=pos, negative=neg)).item())


def test_classifier_distance_flags_non_kgons():
    W = torch.tensor([[1.0, 0.9, 0.0, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    m = tms.classify_kgon(W, torch.zeros(6))
    assert m.k == 2 and m.distance > 0.5
    assert tms.kgon_name(5, 1, pretty=True) == "5\u207a" and m.pretty == "2"


def test_kgon_and_classifier_errors_name_the_argument():
    with pytest.raises(ValueError, match="k=7 exceeds"):
        tms.k_gon(7, 6)
    with pytest.raises(ValueError, match="positive \\+ negative"):
        tms.k_gon(5, 6, positive=1, negative=1)
    with pytest.raises(ValueError, match="negative_bias"):
        tms.k_gon(5, 6, negative=1, negative_bias=0.1)
    with pytest.raises(ValueError, match="features"):
        tms.k_gon(3, 6, features=[0, 0, 1])
    with pytest.raises(ValueError, match="n_hidden"):
        tms.classify_kgon(torch.zeros(3, 6), torch.zeros(6))
    with pytest.raises(ValueError, match="b must have shape"):
        tms.population_loss(torch.zeros(2, 6), torch.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        tms.classify_kgon(torch.full((2, 6), float("nan")), torch.zeros(6))
    with pytest.raises(ValueError, match="k must be"):
        tms.paper_loss(4.5, 6)


def test_model_shapes_forward_and_errors():
    m = ToyModelOfSuperposition()
    assert m.W.shape == (2, 6) and m.b.shape == (6,)
    x = tms_data(7).x
    assert m(x).shape == (7, 6) and (m(x) >= 0).all()
    W, b = tms.k_gon(6, 6)
    m6 = ToyModelOfSuperposition.from_params(W, b, dtype=torch.float64)
    x = torch.eye(6, dtype=torch.float64)
    assert torch.allclose(m6(x), torch.relu(x @ W.T @ W + b))
    assert torch.equal(ToyModelOfSuperposition(seed=3).W, ToyModelOfSuperposition(seed=3).W)
    with pytest.raises(ValueError, match="n_features"):
        ToyModelOfSuperposition(n_features=0)
    with pytest.raises(ValueError, match="columns"):
        m(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="W must have shape"):
        m.set_params(torch.zeros(3, 6), torch.zeros(6))
    with pytest.raises(ValueError, match="b must have shape"):
        m.set_params(torch.zeros(2, 6), torch.zeros(4))


def test_data_is_one_hot_uniform_and_deterministic():
    d = tms_data(20_000, 6, seed=5)
    assert torch.equal(d.x, tms_data(20_000, 6, seed=5).x) and not torch.equal(d.x, tms_data(20_000, 6, seed=6).x)
    assert torch.equal(d.x, d.y) and d.x.shape == (20_000, 6)
    assert ((d.x > 0).sum(1) <= 1).all() and d.x.min() >= 0 and d.x.max() <= 1
    counts = (d.x > 0).sum(0).double()
    assert (abs(counts / 20_000 - 1 / 6) < 0.015).all()
    assert d.x.sum(1).mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="n must be"):
        tms_data(0)
    with pytest.raises(ValueError, match="n_features"):
        tms_data(10, 0)


def test_empirical_loss_from_sorted_statistics_is_exact():
    X = torch.stack([tms_data(300, 6, seed=j, dtype=torch.float64).x for j in range(3)])
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    b = (0.3 * torch.randn(3, 6, generator=gen, dtype=torch.float64)).requires_grad_(True)
    fast = tms._SortedData(X).loss(W, b)
    slow = ((torch.relu(X @ W.transpose(1, 2) @ W + b[:, None]) - X) ** 2).sum(-1).mean(-1)
    assert torch.allclose(fast, slow, atol=1e-12)
    g1, g2 = torch.autograd.grad(fast.sum(), (W, b)), torch.autograd.grad(slow.sum(), (W, b))
    assert all(torch.allclose(u, v, atol=1e-10) for u, v in zip(g1, g2))


def test_empirical_minimum_moves_little_and_lowers_the_loss():
    d = tms_data(2000, seed=0, dtype=torch.float64)
    W, b = tms.k_gon(6, 6)
    W1, b1 = tms.empirical_minimum(W, b, d.x)
    loss = lambda W, b: tms.tms_loss(torch.relu(d.x @ W.T @ W + b), d.x).item()
    assert loss(W1, b1) <= loss(W, b)
    m = tms.classify_kgon(W1, b1)      # the move is along soft directions (curvature 0.02): small modulo rotation
    assert m.name == "6" and m.distance < 0.3


def test_second_order_check_tells_minima_from_saddles_of_the_empirical_loss():
    x = tms_data(3000, 6, seed=0).x
    for k, pos, neg in [(6, 0, 0), (5, 1, 0), (5, 0, 1)]:          # the paper's minima
        W, b = tms.empirical_minimum(*tms.k_gon(k, 6, positive=pos, negative=neg), x)
        assert tms.is_local_minimum(W, b, x), (k, pos, neg)
    W, b = tms.empirical_minimum(*tms.k_gon(4, 6, positive=1, negative=1), x)   # the 4+--gon: a saddle
    ev = tms.hessian_eigenvalues(W, b, x)
    assert ev[0] < -1e-3 and not tms.is_local_minimum(W, b, x), ev[:3]
    # the empirical Hessian is that of L_n: its quadratic form matches a finite difference of the loss
    r, c = W.shape
    z = torch.cat([W.flatten(), b])
    v = torch.randn(z.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v /= v.norm()
    loss = lambda z_: ((torch.relu(x.double() @ z_[:r * c].reshape(r, c).T @ z_[:r * c].reshape(r, c)  # noqa: E731
                                   + z_[r * c:]) - x.double()) ** 2).sum(1).mean()
    h = 1e-4
    fd = float((loss(z + h * v) - 2 * loss(z) + loss(z - h * v)) / h ** 2)
    H = torch.autograd.functional.hessian(loss, z)
    assert abs(fd - float(v @ H @ v)) < 1e-3
    assert np.allclose(ev, torch.linalg.eigvalsh(H).numpy(), atol=1e-10)
    with pytest.raises(ValueError, match="x must have shape"):
        tms.hessian_eigenvalues(W, b, x[:, :5])


def test_sgd_and_plateaus_are_deterministic_and_counted():
    kw = dict(n=200, steps=300, lr=0.05, batch_size=20, num_checkpoints=10, seed=1, progress=False)
    a, b = tms.train_sgd(3, **kw), tms.train_sgd(3, **kw)
    assert np.array_equal(a["W"], b["W"]) and a["W"].shape == (3, len(a["steps"]), 2, 6)
    assert a["pop_loss"].shape == (3, len(a["steps"])) and np.all(a["pop_loss"][:, -1] < a["pop_loss"][:, 0] + 1e-9)
    # plateaus: runs of >= min_stay checkpoints within tol of the same k-gon
    fake = [tms.KGonMatch(nm, 0, 0, 0, 0, d, (), 0.0) for nm, d in
            [("4", 0.1), ("4", 0.1), ("5", 0.9), ("5+", 0.1), ("5+", 0.05), ("5+", 0.1), ("6", 0.1)]]
    assert tms.plateaus(fake, tol=0.2, min_stay=2) == ["4", "5+"]
    assert tms.count_transitions([["4", "5+"], ["4", "5+", "6"]]) == {"4->5+": 2, "5+->6": 1}
    with pytest.raises(ValueError, match="lr"):
        tms.train_sgd(2, lr=0.0)


def test_crossing_n_interpolates_in_log_n():
    assert tms.crossing_n([100, 1000], [0.8, 0.2], [0.2, 0.8]) == pytest.approx(math.sqrt(100 * 1000))
    assert math.isnan(tms.crossing_n([100, 1000], [0.8, 0.6], [0.2, 0.4]))


def test_tempered_sampler_is_deterministic_and_swaps():
    kw = dict(num_replicas=2, m=100, steps=60, swap_every=5, num_samples=2, seed=0, progress=False)
    a = tms.sample_posterior_tempered([50, 100, 200], **kw)
    b = tms.sample_posterior_tempered([50, 100, 200], **kw)
    assert np.array_equal(a["W"], b["W"]) and a["W"].shape == (2, 3, 2, 2, 6)
    assert a["swap_rate"].shape == (2,) and (a["swap_rate"] > 0).all()


def test_kgon_llc_row_is_a_replication_row():
    """One seed of the k-gon replication: a flat row of numbers and claims for replicate(), names checked."""
    import warnings

    from slt_companion.replicate import _plain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = tms.kgon_llc_row(3, num_chains=2, num_draws=20, num_burnin=10, names=["5-", "5 (c=5)"])
    assert list(row) == [f"{s}_{k}" for k in ("5m", "5c5") for s in ("lam", "sem", "rhat", "ess", "conv")]
    assert all(math.isfinite(row[f"lam_{k}"]) for k in ("5m", "5c5")) and isinstance(row["conv_5m"], bool)
    assert {k: _plain(k, v) for k, v in row.items()} == row
    with pytest.raises(ValueError, match="names must be among"):
        tms.kgon_llc_row(3, num_chains=2, num_draws=20, num_burnin=10, names=["7"])


def test_kgon_llc_row_samples_until_converged_within_its_budget():
    """num_draws="auto" (the default): each estimate stops at convergence or at max_draws, and says which."""
    import warnings

    from slt_companion.data import tms_data
    from slt_companion.llc import estimate_llcs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = tms.kgon_llc_row(4, num_chains=2, max_draws=60, names=["6"])
        data = tms_data(tms.LLC_SETTINGS["n"], 6, seed=4)
        S = tms.LLC_SETTINGS
        (ref,) = estimate_llcs([tms.kgon_at_minimum("6", data.x)], tms.tms_loss, data.xy, num_chains=2, max_draws=60,
                               step_size=S["step_size"], nbeta=S["nbeta"], localization=S["localization"],
                               batch_size=S["batch_size"], seed=4, device="cpu", progress=False)
    assert row["lam_6"] == ref.mean and row["conv_6"] == ref.converged     # the same call, the same numbers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = tms.kgon_llc_row(4, num_chains=2, max_draws=60, names=["6"], step_size=S["step_size"] / 2)
        (ref_half,) = estimate_llcs([tms.kgon_at_minimum("6", data.x)], tms.tms_loss, data.xy, num_chains=2,
                                    max_draws=60, step_size=S["step_size"] / 2, nbeta=S["nbeta"],
                                    localization=S["localization"], batch_size=S["batch_size"], seed=4,
                                    device="cpu", progress=False)
    assert half["lam_6"] == ref_half.mean != ref.mean                      # step_size overrides the step
    assert ref.stop_reason in ("converged", "max_draws") and ref.config.num_draws < 2 * 60   # (budget: whole blocks)
    with pytest.raises(ValueError, match="num_burnin must be None"):
        tms.kgon_llc_row(4, num_chains=2, num_burnin=10, names=["6"])
    with pytest.raises(ValueError, match="max_draws is the budget"):
        tms.kgon_llc_row(4, num_chains=2, num_draws=20, max_draws=40, names=["6"])


def test_kgon_at_minimum_is_the_kgon_moved_to_the_empirical_minimum():
    from slt_companion.data import tms_data

    data = tms_data(2000, 6, seed=1)
    model = tms.kgon_at_minimum("5-", data.x)
    W, b = tms.k_gon(5, 6, negative=1, negative_bias=-1.0)
    W1, b1 = tms.empirical_minimum(W, b, data.x)
    assert torch.equal(model.W.detach(), W1.to(model.W.dtype)) and torch.equal(model.b.detach(), b1.to(model.b.dtype))
    assert tms.population_loss(W, b) <= tms.population_loss(model.W.detach(), model.b.detach()) + 1e-3
    with pytest.raises(ValueError, match="name must be one of"):
        tms.kgon_at_minimum("7", data.x)
    with pytest.raises(ValueError, match=r"x must be \(n, 5\)"):
        tms.kgon_at_minimum("5 (c=5)", data.x)


def test_kgon_replica_settings_drive_kgon_llc_row():
    rs = tms.kgon_replica_settings()
    assert rs["num_draws"] == "auto" and rs["max_draws"] >= 100 and rs["step_size"] == tms.LLC_SETTINGS["step_size"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c, r", [(6, 2), (5, 2), (20, 5)])
def test_tms_fast_path_and_hand_backward_match_vmap_and_autograd(dtype, c, r):
    """ToyModelOfSuperposition's forward_batched / forward_batched_vjp and tms_loss's batched / batched_vjp: the
    sampler's losses and gradients agree with vmap + autograd to rounding, at a k-gon (dead features: ReLU's kink)
    and away from it, with the bias sampled alone too."""
    from slt_companion.sampling import _Problem

    gen = torch.Generator().manual_seed(c)
    data = tms_data(300, c, seed=1, dtype=dtype)
    W, b = tms.k_gon(c - 1, c, negative=1, negative_bias=-1.0) if r == 2 else (torch.randn(r, c, generator=gen), torch.zeros(c))
    model = ToyModelOfSuperposition.from_params(W, b, dtype=dtype)
    for params in (None, ["b"]):
        prob = _Problem(model, tms.tms_loss, data.xy, params, "cpu")
        assert prob.fast_vjp is not None
        prob.check(50)
        for scale in (0.0, 0.2):
            Wc = prob.center + scale * torch.randn(4, prob.D, generator=gen, dtype=dtype)
            idx = torch.randint(0, 300, (4, 50), generator=gen)
            xb, yb = data.x[idx], data.y[idx]
            l1, g1 = prob.losses_and_grads(Wc, xb, yb, by_hand=False)
            l2, g2 = prob.losses_and_grads(Wc, xb, yb)
            ref = prob.batched_losses(Wc, xb, yb, fast=False)
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            assert torch.allclose(l1, ref, rtol=tol, atol=tol) and torch.allclose(l2, ref, rtol=tol, atol=tol)
            assert torch.allclose(g1, g2, rtol=tol, atol=tol * (1 + float(g1.abs().max())))


def test_train_sgds_hand_backward_is_the_gradient_of_its_loss():
    """train_sgd's step: tms_forward_batched_vjp's gradient of Σ_runs mean ||x - f(x)||² equals autograd's."""
    from slt_companion.models import tms_forward_batched_vjp

    gen = torch.Generator().manual_seed(0)
    R, B, c = 5, 30, 6
    W = torch.randn(R, 2, c, generator=gen, dtype=torch.float64).requires_grad_(True)
    b = (0.1 * torch.randn(R, c, generator=gen, dtype=torch.float64)).requires_grad_(True)
    x = torch.stack([tms_data(B, c, seed=j, dtype=torch.float64).x for j in range(R)])
    loss = ((tms._batched_forward(W, b, x) - x) ** 2).sum(-1).mean(-1).sum()
    gW, gb = torch.autograd.grad(loss, (W, b))
    with torch.no_grad():
        out, vjp = tms_forward_batched_vjp(W, b, x)
        hW, hb = vjp((out - x) * (2.0 / B))
    assert torch.allclose(gW, hW, rtol=1e-12, atol=1e-14) and torch.allclose(gb, hb, rtol=1e-12, atol=1e-14)


def test_sorted_statistics_gradient_by_hand_matches_autograd():
    """The Langevin samplers' U gradient by hand (_SortedData.loss_and_grad) against autograd through loss()."""
    gen = torch.Generator().manual_seed(1)
    X = torch.stack([tms_data(300, 6, seed=j, dtype=torch.float64).x for j in range(8)])
    data = tms._SortedData(X)
    for scale in (1.0, 0.3):
        W = (scale * torch.randn(8, 2, 6, generator=gen, dtype=torch.float64)).requires_grad_(True)
        b = (scale * torch.randn(8, 6, generator=gen, dtype=torch.float64)).requires_grad_(True)
        L = data.loss(W, b)
        gW, gb = torch.autograd.grad(L.sum(), (W, b))
        L2, hW, hb = data.loss_and_grad(W.detach(), b.detach())
        assert torch.equal(L.detach(), L2)
        assert torch.allclose(gW, hW, rtol=1e-12, atol=1e-13) and torch.allclose(gb, hb, rtol=1e-12, atol=1e-13)
