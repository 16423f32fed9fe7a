"""Stage boundaries on synthetic LLC curves with known critical points; essential dynamics on a known trajectory."""

import numpy as np
import pytest

from slt_companion.dynamics import essential_dynamics, gaussian_smooth, stage_boundaries, stages_from_boundaries


def test_gaussian_smooth_keeps_constants_and_lines():
    assert np.allclose(gaussian_smooth(np.full(50, 3.0), 4.0), 3.0)
    line = np.linspace(0, 1, 101)
    assert np.allclose(gaussian_smooth(line, 3.0)[20:-20], line[20:-20], atol=1e-12)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth(line, -1)


def test_extrema_of_a_sine_in_log_steps_are_found():
    # lambda(u) = sin(pi u), u = log10 t in [0, 4]: maxima at u = 0.5, 2.5, minima at 1.5, 3.5
    steps = np.unique(np.round(np.logspace(0, 4, 120)))
    rng = np.random.default_rng(0)
    llc = 10 + np.sin(np.pi * np.log10(steps)) + rng.normal(0, 0.02, steps.size)
    sb = stage_boundaries(steps, llc, smoothing=0.05, edge=0.2)
    assert np.allclose(np.log10(sb.steps), [0.5, 1.5, 2.5, 3.5], atol=0.08), sb.steps
    assert sb.kinds == ["max", "min", "max", "min"]


def test_a_plateau_without_sign_change_is_a_boundary():
    # lambda = (u - 2)^3 + 3: increasing everywhere, critical (saddle) point at u = 2, i.e. t = 100
    steps = np.unique(np.round(np.logspace(0, 4, 100)))
    llc = (np.log10(steps) - 2) ** 3 + 3
    sb = stage_boundaries(steps, llc, smoothing=0.05)
    assert len(sb) == 1 and sb.kinds == ["plateau"]
    assert abs(np.log10(sb.steps[0]) - 2) < 0.08


def test_monotone_curve_without_critical_points_has_no_boundaries():
    steps = np.arange(1, 1001)
    sb = stage_boundaries(steps, np.log(steps), smoothing=0.1)
    assert len(sb) == 0


def test_stage_boundaries_errors():
    with pytest.raises(ValueError, match="same length"):
        stage_boundaries([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 4"):
        stage_boundaries([0, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="plateau"):
        stage_boundaries([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], plateau=1.5)
    assert stages_from_boundaries([10, 100], 0, 1000) == [(0, 10), (10, 100), (100, 1000)]


def test_essential_dynamics_recovers_a_known_trajectory():
    # an L-shaped path in a 2-D subspace of R^50: along e1, then turns along e2 at checkpoint 20
    C, F = 41, 50
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(F, 2)))
    a = np.concatenate([np.linspace(0, 1, 21), np.ones(20)])
    b = np.concatenate([np.zeros(21), np.linspace(0, 1, 21)[1:]])
    b = b + 0.3 * np.concatenate([np.zeros(21), np.sin(np.linspace(0, np.pi, 20))])  # a bump: turns in PC2 too
    out = np.outer(a, Q[:, 0]) * 3 + np.outer(b, Q[:, 1]) * 2
    ed = essential_dynamics(out, n_components=2, steps=np.arange(C) * 10, smoothing=0.0)
    assert ed.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-9)
    # the PCs span the plane of the path
    P = ed.components.T
    assert np.allclose(P @ (P.T @ Q), Q, atol=1e-8)
    recon = ed.pcs @ ed.components + out.mean(0)
    assert np.allclose(recon, out, atol=1e-8)
    assert ed.turning_steps is not None and ed.turning_points.ndim == 1
    assert all(0 < i < C - 1 for i in ed.turning_points)


def test_essential_dynamics_turning_point_of_a_parabola():
    t = np.linspace(-1, 1, 31)
    out = np.stack([t, t ** 2, 0 * t], axis=1) @ np.eye(3)
    ed = essential_dynamics(out, n_components=2, smoothing=1.0)
    assert 15 in ed.turning_points          # the vertex: the coordinate t^2 reverses at t = 0
    with pytest.raises(ValueError, match="n_components"):
        essential_dynamics(out, n_components=5)
    with pytest.raises(ValueError, match="NaN"):
        essential_dynamics(np.full((4, 3), np.nan))


def test_essential_dynamics_finds_an_exactly_flat_top_once_at_its_middle():
    """A plateau of exactly equal values was missed (the sign of a zero difference matched neither side)."""
    top = np.array([0.0, 1, 2, 3, 3, 3, 2, 1, 0, 1, 2])             # a flat maximum at 3..5, a sharp minimum at 8
    out = np.stack([top, 0 * top], axis=1)
    ed = essential_dynamics(out, n_components=1, smoothing=0.0, prominence=0.05)
    assert np.ptp(ed.pcs[3:6, 0]) == 0                                   # still exactly flat in PC space
    assert set(ed.turning_points) == {4, 8}


def test_min_change_drops_boundaries_smaller_than_the_noise():
    # a big step up at u = 2 (plateau before and after) plus a tiny wiggle at u = 0.7 and a max at u = 3.3
    steps = np.unique(np.round(np.logspace(0, 4, 200)))
    u = np.log10(steps)
    llc = 10 * np.tanh(3 * (u - 2)) + 0.3 * np.exp(-((u - 0.7) / 0.1) ** 2) - 6 * np.clip(u - 3.3, 0, None)
    every = stage_boundaries(steps, llc, smoothing=0.05)
    kept = stage_boundaries(steps, llc, smoothing=0.05, min_change=2.0)
    assert len(every) > len(kept) >= 1
    assert all(abs(np.log10(b) - 0.7) > 0.2 for b in kept.steps)
    assert any(abs(np.log10(b) - 3.3) < 0.15 for b in kept.steps)
    with pytest.raises(ValueError, match="min_change"):
        stage_boundaries(steps, llc, min_change=-1)


def test_the_sign_of_an_antisymmetric_component_does_not_depend_on_round_off():
    """A component whose entries sum to ~0 (here (1, −1, 0)/√2) took the sign of that sum's round-off: the same
    trajectory, perturbed at 1e-13, could come back mirrored. Now its first sizeable entry is positive."""
    from slt_companion.dynamics import essential_dynamics

    t = np.linspace(0, 1, 12)
    base = np.stack([t**2, -(t**2), np.zeros_like(t)], axis=1)
    firsts = set()
    for seed in range(8):
        X = base + 1e-13 * np.random.default_rng(seed).standard_normal(base.shape)
        ed = essential_dynamics(X, n_components=1, smoothing=0.0)
        assert ed.components[0, 0] > 0
        firsts.add(float(np.sign(ed.pcs[-1, 0])))
    assert len(firsts) == 1


@pytest.mark.parametrize("checkpoints, match", [
    ([0, 1.7], r"checkpoints\[1\] must be an integer index into the trajectory, in \[-3, 2\] \(it has 3 checkpoints\), got 1.7"),
    ([True], r"checkpoints\[0\] must be an integer index"),
    ([3], r"checkpoints\[0\] = 3 is out of range: the trajectory has 3 checkpoints, indices \[-3, 2\]"),
    ([-4], r"checkpoints\[0\] = -4 is out of range"),
    (2, r"checkpoints must be a 1-D sequence of indices .*got 2 \(for the one checkpoint: \[2\]\)"),
])
def test_llc_over_trajectory_names_a_bad_checkpoint_index(checkpoints, match):
    import torch

    from slt_companion.dynamics import llc_over_trajectory
    from slt_companion.models import DeepLinearNetwork
    from slt_companion.train import Trajectory

    traj = Trajectory(steps=np.array([0, 1, 2]), params=torch.zeros(3, 4), names=["layers.0.weight"], shapes=[[2, 2]],
                      train_loss=np.zeros(2), lr=np.zeros(2))
    with pytest.raises(ValueError, match=match):
        llc_over_trajectory(traj, DeepLinearNetwork([2, 2]), lambda out, y: ((out - y) ** 2).mean(),
                            (torch.zeros(8, 2), torch.zeros(8, 2)), checkpoints=checkpoints, progress=False)
