"""The ridge and dMMSE predictors against closed forms and brute force; joint trajectory PCA on known outputs."""

import itertools

import numpy as np
import pytest
import torch

from slt_companion.data import ICLTaskSampler, icl_regression
from slt_companion.dynamics import joint_trajectory_pca
from slt_companion.predictors import (dmmse_predictions, dmmse_weights, distances_over_trajectory,
                                      prediction_distance, ridge_predictions)

S2 = 0.125


def test_ridge_is_the_closed_form_posterior_mean():
    d = icl_regression(5, task_dim=3, num_examples=6, seed=1)
    pred = ridge_predictions(d.xs.double(), d.ys.double(), S2)
    for b, k in itertools.product(range(5), range(6)):
        X, y = d.xs[b, :k].double().numpy(), d.ys[b, :k].double().numpy()
        # posterior of t ~ N(0, I) given y = X t + N(0, s2): mean (X^T X / s2 + I)^{-1} X^T y / s2
        mean = np.linalg.solve(X.T @ X / S2 + np.eye(3), X.T @ y / S2)
        assert abs(float(pred[b, k]) - float(d.xs[b, k].double().numpy() @ mean)) < 1e-9
    assert torch.all(pred[:, 0] == 0)


def test_dmmse_with_one_task_returns_that_task():
    s = ICLTaskSampler(3, 7, noise_var=S2, num_tasks=1, task_seed=4)
    d = s.sample(6, torch.Generator().manual_seed(0))
    pred = dmmse_predictions(d.xs, d.ys, s.task_bank, S2)
    assert torch.allclose(pred.double(), (d.xs.double() @ s.task_bank[0].double()), atol=1e-6)


def test_dmmse_weights_match_brute_force_and_ignore_the_current_pair():
    s = ICLTaskSampler(2, 5, noise_var=S2, num_tasks=4, task_seed=2)
    d = s.sample(3, torch.Generator().manual_seed(1))
    w = dmmse_weights(d.xs, d.ys, s.task_bank, S2)
    T = s.task_bank.double().numpy()
    for b, k in itertools.product(range(3), range(5)):
        X, y = d.xs[b, :k].double().numpy(), d.ys[b, :k].double().numpy()
        loglik = np.array([-((y - X @ t) ** 2).sum() / (2 * S2) for t in T])
        brute = np.exp(loglik - loglik.max())
        brute /= brute.sum()
        assert np.allclose(w[b, k].numpy(), brute, atol=1e-12)
    assert torch.allclose(w[:, 0], torch.full((3, 4), 0.25, dtype=torch.float64))
    # changing y_k does not change the prediction at k (only earlier pairs are used)
    ys2 = d.ys.clone()
    ys2[:, 2] += 10
    p1, p2 = dmmse_predictions(d.xs, d.ys, s.task_bank, S2), dmmse_predictions(d.xs, ys2, s.task_bank, S2)
    assert torch.allclose(p1[:, :3], p2[:, :3]) and not torch.allclose(p1[:, 3:], p2[:, 3:])


def test_dmmse_finds_the_true_task_and_approaches_ridge_as_m_grows():
    s = ICLTaskSampler(2, 16, noise_var=S2, num_tasks=8, task_seed=0)
    d = s.sample(200, torch.Generator().manual_seed(0))
    w = dmmse_weights(d.xs, d.ys, s.task_bank, S2)
    true = (s.task_bank[None] == d.tasks[:, None]).all(-1).double()       # (B, M) one-hot of the true task
    assert float((w[:, -1] * true).sum(-1).mean()) > 0.95
    g = icl_regression(400, 2, 8, seed=3)          # Gaussian (new) tasks
    ridge = ridge_predictions(g.xs, g.ys, S2)
    dist = [prediction_distance(dmmse_predictions(g.xs, g.ys, ICLTaskSampler(2, 8, num_tasks=m).task_bank, S2), ridge)
            for m in (4, 64, 2048)]
    assert dist[0] > dist[1] > dist[2]


def test_bad_inputs_raise_clear_errors():
    d = icl_regression(4, 2, 5, seed=0)
    bank = torch.randn(3, 2)
    with pytest.raises(ValueError, match="xs must be"):
        ridge_predictions(d.xs[0], d.ys, S2)
    with pytest.raises(ValueError, match="noise_var"):
        ridge_predictions(d.xs, d.ys, 0.0)
    with pytest.raises(ValueError, match="tasks must be"):
        dmmse_predictions(d.xs, d.ys, torch.randn(3, 5), S2)
    with pytest.raises(ValueError, match="xs and ys must be torch tensors"):
        dmmse_predictions(d.xs.numpy(), d.ys, bank, S2)
    with pytest.raises(ValueError, match="same shape"):
        prediction_distance(d.ys, d.ys[:, :2])
    with pytest.raises(ValueError, match="references"):
        distances_over_trajectory(None, None, d, {"ridge": d.ys[:2]})


def test_joint_pca_puts_all_runs_and_references_in_one_space():
    rng = np.random.default_rng(0)
    F = 12
    a, b = rng.normal(size=F), rng.normal(size=F)
    s = np.linspace(0, 1, 9)[:, None]
    run1 = s * a                       # 0 -> a
    run2 = s * b                       # 0 -> b
    jp = joint_trajectory_pca([run1, run2], references={"a": a, "b": b.reshape(3, 4)}, n_components=2,
                              labels=["one", "two"])
    assert [p.shape for p in jp.pcs] == [(9, 2), (9, 2)] and jp.labels == ["one", "two"]
    assert jp.explained_variance_ratio.sum() > 1 - 1e-9          # the data lie in span(a, b)
    # the shared space: each run ends exactly on its reference's projection, both start at the same point
    assert np.allclose(jp.pcs[0][-1], jp.references["a"]) and np.allclose(jp.pcs[1][-1], jp.references["b"])
    assert np.allclose(jp.pcs[0][0], jp.pcs[1][0])
    assert np.allclose(jp.project(run2), jp.pcs[1])


def test_joint_pca_on_trajectories_and_shape_errors():
    from slt_companion.models import ICLTransformer
    from slt_companion.train import train

    s = ICLTaskSampler(2, 4, num_tasks=2)
    mk = lambda: ICLTransformer(2, 4, num_layers=1, num_heads=1, d_model=8, d_mlp=8, seed=0)  # noqa: E731
    trajs = [train(mk(), lambda o, y: ((o - y) ** 2).mean(), s.batch_fn(8), num_steps=5, checkpoints=[0, 2, 5],
                   seed=seed, progress=False, device="cpu") for seed in (0, 1)]
    probe = icl_regression(6, 2, 4, seed=9)
    jp = joint_trajectory_pca(trajs, mk(), probe.tokens, references={"ridge": ridge_predictions(probe.xs, probe.ys)})
    assert [p.shape for p in jp.pcs] == [(3, 3), (3, 3)] and jp.references["ridge"].shape == (3,)
    assert np.allclose(jp.pcs[0][0], jp.pcs[1][0])          # same initial model, same point
    dist = distances_over_trajectory(trajs[0], mk(), probe, {"ridge": ridge_predictions(probe.xs, probe.ys)})
    assert dist["ridge"].shape == (3,) and dist["loss"].shape == (3,)
    with pytest.raises(ValueError, match="same probe"):
        joint_trajectory_pca([np.zeros((3, 4)), np.zeros((3, 5))])
    with pytest.raises(ValueError, match="non-empty list"):
        joint_trajectory_pca([])
    with pytest.raises(ValueError, match="template="):
        joint_trajectory_pca(trajs)
    with pytest.raises(ValueError, match="n_components"):
        joint_trajectory_pca([np.eye(3)], n_components=5)
    with pytest.raises(ValueError, match="features"):
        joint_trajectory_pca([np.eye(3)], references={"r": np.zeros(4)})


def test_classify_run_on_synthetic_distances():
    from slt_companion.predictors import classify_run

    steps = np.array([0, 10, 100, 1000, 10000])
    between, scale = 1.0, 1.5
    # s = 0.5 (1 + (dr - dd) / between); with zero off-segment error dr = s^2, dd = (1 - s)^2
    def d(s):
        s = np.asarray(s, float)
        return s ** 2, (1 - s) ** 2
    trans = classify_run(*d([0.4, 0.3, 0.1, 0.6, 0.9]), between, scale, steps, late_from=1000)
    assert trans.verdict == "transient" and trans.ridge_index == 2 and trans.leave_index == 3
    mem = classify_run(*d([0.6, 0.7, 0.8, 0.9, 0.95]), between, scale, steps, late_from=1000)
    assert mem.verdict == "memorises"
    far = np.array([0.5, 0.4, 0.1, 0.1, 0.1])
    rid = classify_run(*d(far), between, scale, steps, late_from=1000)
    assert rid.verdict == "ridge" and rid.ridge_index == 2
    # closer to ridge than dMMSE but far from both: not ridge-like
    dr, dd = d([0.3] * 5)
    assert classify_run(dr + 2, dd + 2, between, scale, steps, late_from=1000).verdict == "undecided"
    with pytest.raises(ValueError, match="ridge_scale"):
        classify_run(dr, dd, between, 0.0, steps, late_from=1000)
    with pytest.raises(ValueError, match="same length"):
        classify_run(dr[:3], dd[:3], between, scale, steps, late_from=1000)


def test_crossover_n_solves_the_free_energy_balance():
    from slt_companion.predictors import crossover_n

    n = crossover_n(0.01, 5.0)
    assert abs(n * 0.01 - 5.0 * np.log(n)) < 1e-8 and n > 5.0 / 0.01
    assert np.isnan(crossover_n(-0.01, 5.0)) and np.isnan(crossover_n(0.01, -1.0))
    with pytest.raises(ValueError, match="delta_loss"):
        crossover_n(float("nan"), 1.0)
