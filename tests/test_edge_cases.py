"""Inputs the book never gives the library (found by an audit of its other modules): each either works as its
docstring says or fails with a clear error naming the argument -- never a silent wrong number."""

import numpy as np
import pytest
import torch

from slt_companion.program_synthesis import (Program, SmoothTuringMachine, classify_parity_code, parity_task,
                                             run_program)


def test_parity_code_counts_the_states_a_three_move_machine_visits():
    """`_reachable` once read move 1 as "right" whatever the moves: with ("L", "S", "R") index 1 is "stay"."""
    L, S, R = 0, 1, 2
    prog = Program(np.array([[0, 2, 0], [1, 0, 1], [0, 0, 0]]), np.array([[R, S, R], [R, R, R], [R, R, R]]),
                   np.array([[0, 1, 2], [1, 0, 1], [2, 2, 2]]))                       # state 2 is never entered
    x, y = parity_task(4)
    assert np.array_equal(run_program(prog, x.numpy(), 6, moves=("L", "S", "R")), y.numpy())
    m = SmoothTuringMachine(3, 3, 6, num_moves=3, parametrization="sphere").load_program(prog)
    assert classify_parity_code(m, x, y) == "lean"


def test_parity_code_reads_the_models_output_cell():
    """classify_parity_code compared the program's last cell whatever cell the machine reads as its output."""
    from slt_companion.program_synthesis import parity_programs

    prog = parity_programs()["lean"]
    x, _ = parity_task(4)
    y1 = torch.as_tensor(run_program(prog, x.numpy(), 4, output_cell=1))   # what the program leaves in cell 1
    m = SmoothTuringMachine(3, 2, 4, output_cell=1, parametrization="sphere").load_program(prog)
    assert torch.equal(m(x).argmax(-1), y1)                                   # the model reads cell 1 too
    assert classify_parity_code(m, x, y1) == "lean"
    assert classify_parity_code(m, x, 1 - y1) == "wrong"


def test_smooth_turing_machine_refuses_symbols_it_does_not_have():
    m = SmoothTuringMachine(2, 2, 4)
    with pytest.raises(ValueError, match="num_symbols = 2"):
        m(torch.tensor([[0, 1, 2, 0]]))


def test_classify_run_needs_a_late_checkpoint():
    from slt_companion.predictors import classify_run

    with pytest.raises(ValueError, match="late_from"):
        classify_run(np.full(3, 5.0), np.full(3, 6.0), d_between=1.0, ridge_scale=1.0, steps=[10, 100, 1000],
                     late_from=5000)


def test_ground_truth_refuses_what_would_change_its_targets():
    from slt_companion.groundtruth import crossing_exact, run_ground_truth

    with pytest.raises(ValueError, match="one or two powers"):
        crossing_exact((1, 1, 5), np.ones(4), np.ones(4), nbeta=10.0)
    for kw in ({"nbeta": 5.0}, {"localization": 0.5}):
        with pytest.raises(ValueError, match="cannot override"):
            run_ground_truth(["RRR 4-3-4, rank 1"], progress=False, **kw)


def test_attention_that_masks_everything_is_refused():
    from slt_companion.simplicial import OneSimplicialAttention, TwoSimplicialAttention

    with pytest.raises(ValueError, match="N must be ≥ 3"):
        TwoSimplicialAttention(8)(torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="N must be ≥ 2"):
        OneSimplicialAttention(8)(torch.randn(1, 1, 8))
    assert torch.isfinite(TwoSimplicialAttention(8)(torch.randn(1, 3, 8))).all()


def test_repeated_sequence_scores_need_two_tokens_per_half():
    from slt_companion.heads import repeated_sequence_losses
    from slt_companion.models import AttentionOnlyLM

    with pytest.raises(ValueError, match="T ≥ 4"):
        repeated_sequence_losses(AttentionOnlyLM(5, n_ctx=4, d_model=8, num_heads=2), torch.tensor([[3, 3], [1, 1]]))


def test_train_sgd_checks_num_checkpoints():
    from slt_companion.tms import train_sgd

    with pytest.raises(ValueError, match="num_checkpoints must be an integer ≥ 3, got 2"):
        train_sgd(1, n=10, steps=5, num_checkpoints=2, progress=False)


def test_posterior_samplers_check_what_they_are_asked_to_keep():
    from slt_companion.tms import sample_posterior, sample_posterior_tempered

    with pytest.raises(ValueError, match="num_samples=10"):
        sample_posterior(50, num_chains=1, steps=10, num_samples=10)
    with pytest.raises(ValueError, match="step_scale"):
        sample_posterior_tempered([20, 200], num_replicas=1, steps=10, num_samples=2, step_scale=-1.0)


def test_one_model_hessians_and_grids_of_two_points_at_least():
    from slt_companion.bayes import ProductModel
    from slt_companion.tms import hessian_eigenvalues, k_gon

    W, b = k_gon(5, 6)
    with pytest.raises(ValueError, match="one model"):
        hessian_eigenvalues(W[None], b[None])
    with pytest.raises(ValueError, match="grid_size"):
        ProductModel().posterior_grid(10, grid_size=1)


# ---------------------------------------------------------------- the fourth audit (dynamics, predictors, volume, ...)
def test_a_loss_observable_whose_targets_broadcast_is_refused():
    """y of shape (n,) against outputs (n, 1) broadcast to (n, n) inside the loss: a wrong χ without an error."""
    from slt_companion.llc import half_mse
    from slt_companion.susceptibility import loss_observable

    model = torch.nn.Linear(2, 1).double()
    x, y = torch.randn(15, 2, dtype=torch.float64), torch.randn(15, 1, dtype=torch.float64)
    loss_observable(model, half_mse, (x, y))
    with pytest.raises(ValueError, match="loss_observable's data: model\\(x\\) has shape"):
        loss_observable(model, half_mse, (x, y[:, 0]))
    with pytest.raises(ValueError, match="float32"):
        loss_observable(model, half_mse, (x.float(), y.float()))


def test_susceptibility_refuses_two_observable_columns_of_one_name():
    from slt_companion.llc import half_mse
    from slt_companion.susceptibility import susceptibility

    model = torch.nn.Linear(2, 1).double()
    x, y = torch.randn(20, 2, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    kw = dict(num_chains=2, num_draws=8, num_burnin=2, step_size=1e-4, nbeta=10.0, batch_size=10, progress=False)
    obs = {"w": lambda p: p["weight"][0], "w[0]": lambda p: p["weight"][0, 0]}
    with pytest.raises(ValueError, match=r"named \['w\[0\]'\]"):
        susceptibility(model, half_mse, (x, y), (x[:10], y[:10]), obs, **kw)
    with pytest.raises(ValueError, match="empty"):
        susceptibility(model, half_mse, (x, y), (x[:10], y[:10]), {"none": lambda p: p["weight"][0, :0]}, **kw)


def test_essential_dynamics_finds_no_turning_points_in_round_off():
    """Components beyond the outputs' rank are round-off; their "turning points" were reported."""
    from slt_companion.dynamics import essential_dynamics

    X = np.outer(np.log1p(np.arange(20)), np.random.default_rng(0).normal(size=30)) + 1.0   # a straight path
    assert essential_dynamics(X, n_components=3).turning_points.tolist() == []


def test_stage_boundaries_on_exactly_flat_stretches():
    from slt_companion.dynamics import stage_boundaries

    steps = np.unique(np.round(np.logspace(0, 4, 100)))
    u = np.log10(steps)
    assert len(stage_boundaries(steps, np.full(steps.size, 5.0))) == 0         # constant: no stages
    assert len(stage_boundaries(steps, np.clip(u, 1, 3))) == 0                 # flat, rise, flat: no critical point
    top = np.minimum(np.clip(u, 0, 2), 2) - np.clip(u - 3, 0, None)            # rise, flat top 10^2..10^3, fall
    sb = stage_boundaries(steps, top, smoothing=0.05)
    assert sb.kinds == ["max"] and 250 < sb.steps[0] < 400                     # once, in the middle of the top
    pause = np.clip(u, 0, 1.5) + np.clip(u - 2.5, 0, None)                     # rise, pause 10^1.5..10^2.5, rise
    sb = stage_boundaries(steps, pause, smoothing=0.05)
    assert sb.kinds == ["plateau"] and 70 < sb.steps[0] < 140
    with pytest.raises(ValueError, match="edge"):
        stage_boundaries(steps, top, edge=float("nan"))


def test_stages_from_boundaries_checks_its_cuts():
    from slt_companion.dynamics import stages_from_boundaries

    assert stages_from_boundaries([100.0], 0, 1000) == [(0, 100), (100, 1000)]
    for bad in ([100, 10], [5000], [1.7]):
        with pytest.raises(ValueError):
            stages_from_boundaries(bad, 0, 1000)


def test_gaussian_smooth_with_a_huge_sigma_is_the_mean():
    from slt_companion.dynamics import gaussian_smooth

    y = np.arange(10.0)
    np.testing.assert_allclose(gaussian_smooth(y, 1e10), np.full(10, 4.5), rtol=1e-9)


def test_predictors_refuse_integer_inputs_and_take_numpy_noise():
    from slt_companion.predictors import dmmse_weights, ridge_predictions

    xs, ys = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="floating-point"):
        ridge_predictions(xs.long(), ys)
    assert torch.equal(ridge_predictions(xs, ys, np.int64(1)), ridge_predictions(xs, ys, 1.0))
    assert torch.equal(ridge_predictions(xs, ys, np.array(0.5)), ridge_predictions(xs, ys, 0.5))
    # a huge y_k does not enter the weights at position k (it cancelled the earlier sum)
    tasks = torch.randn(2, 3, dtype=torch.float64)
    big = ys.clone()
    big[:, 2] = 1e9
    torch.testing.assert_close(dmmse_weights(xs, big, tasks)[:, 2], dmmse_weights(xs, ys, tasks)[:, 2])


def test_crossover_n_solves_its_equation_near_the_double_root():
    import math

    from slt_companion.predictors import crossover_n

    for c in (math.e * (1 + 1e-4), 3.0, 10.0, 1e6):
        n = crossover_n(1.0, c)
        assert n > c and abs(n - c * math.log(n)) <= 1e-9 * n, (c, n)
    assert abs(crossover_n(1.0, math.e) - math.e) < 1e-6
    assert math.isnan(crossover_n(-1.0, -10.0)) and math.isnan(crossover_n(1.0, 2.0))


def test_classify_run_and_segment_coordinate_check_their_arrays():
    from slt_companion.predictors import classify_run, segment_coordinate

    with pytest.raises(ValueError, match="increase"):
        classify_run(np.ones(3), np.ones(3), 1.0, 1.0, steps=[100, 10, 1], late_from=1)
    with pytest.raises(ValueError, match="one number"):
        segment_coordinate(np.ones(4), np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        segment_coordinate(np.array([1.0, np.nan]), np.ones(2), 1.0)


def test_llc_over_trajectory_cache_knows_the_data(tmp_path, monkeypatch):
    from slt_companion.dynamics import llc_over_trajectory
    from slt_companion.llc import half_mse
    from slt_companion.train import train

    monkeypatch.setenv("SLT_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    x = torch.randn(64, 2, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    make = lambda: torch.nn.Linear(2, 1).double()                       # noqa: E731
    torch.manual_seed(1)
    traj = train(make(), half_mse, lambda step: (x, y), num_steps=20, checkpoints=[5, 20], progress=False)
    kw = dict(num_chains=2, num_draws=20, num_burnin=5, step_size=1e-3, nbeta=10.0, batch_size=32, progress=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = llc_over_trajectory(traj, make(), half_mse, (x, y), cache_name="t", **kw)
        b = llc_over_trajectory(traj, make(), half_mse, (3 * x, 3 * y), cache_name="t", **kw)
        c = llc_over_trajectory(traj, make(), half_mse, (3 * x, 3 * y), **kw)
    assert np.array_equal(b["mean"], c["mean"]) and not np.array_equal(a["mean"], b["mean"])


def test_heads_take_int32_tokens_and_refuse_an_empty_batch():
    from slt_companion.heads import head_scores
    from slt_companion.models import AttentionOnlyLM

    m = AttentionOnlyLM(8, d_model=16, num_heads=2, n_ctx=8)
    seq = torch.randint(0, 8, (3, 4))
    rep = torch.cat([seq, seq], 1)
    a, b = head_scores(m, rep), head_scores(m, rep.int())
    assert a["icl"] == b["icl"] and np.array_equal(a["induction"], b["induction"])
    with pytest.raises(ValueError, match="batch = 0"):
        head_scores(m, rep[:0])


def test_volume_warns_when_the_zero_set_is_off_the_hyperplanes():
    import warnings

    import sympy as sp

    from slt_companion.volume import free_energy_quadrature, volume

    x, y = sp.symbols("x y", real=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                        # the resolved cases stay silent
        volume(x**2 * y**4, [x, y], [1e-6], points=100)
        volume((x - sp.Rational(1, 3))**2 * y**2, [x, y], [1e-6], center=[1 / 3, 0], points=100)
    for K in ((x - y)**2, (x**2 + y**2 - sp.Rational(1, 4))**2, (x - sp.Rational(1, 3))**2 * y**2):
        with pytest.warns(RuntimeWarning, match="disagrees with plain Monte Carlo"):
            volume(K, [x, y], [1e-6], points=100)
    with pytest.warns(RuntimeWarning, match="disagrees"):
        free_energy_quadrature((x - 2 * y)**2, [x, y], [1e4], points=100)


def test_train_tms_and_feature_slice_check_their_numbers():
    from slt_companion.interventions import feature_slice, train_tms

    with pytest.raises(ValueError, match="lr"):
        train_tms(torch.rand(1, 5, 3), steps=2, lr=float("inf"))
    with pytest.raises(ValueError, match="NaN"):
        train_tms(torch.full((1, 5, 3), float("nan")), steps=2)
    with pytest.raises(ValueError, match="feature"):
        feature_slice((torch.ones(4, 3), torch.ones(4, 3)), 1.7)


def test_exact_toy_values_refuse_what_they_would_truncate():
    """int() turned the power 1.5 into 1: a wrong 'exact' value, silently."""
    from slt_companion.groundtruth import crossing_exact, toy_potential_exact

    x = np.random.default_rng(0).standard_normal(200)
    y = 0.5 * np.random.default_rng(1).standard_normal(200)
    for bad in ((1.5,), (0, 0), (-1,)):
        with pytest.raises(ValueError, match="exponents"):
            crossing_exact(bad, x, y, nbeta=10.0)
    with pytest.raises(ValueError, match="nbeta"):
        crossing_exact((1, 1), x, y, nbeta=-5.0)
    with pytest.raises(ValueError, match="same number"):
        crossing_exact((1, 1), x, y[:10], nbeta=10.0)
    with pytest.raises(ValueError, match="exponents"):
        toy_potential_exact((1.5, 2), 200)
    with pytest.raises(ValueError, match="noise_std"):
        toy_potential_exact((1, 2), 200, noise_std=0.0)


def test_fisher_rank_of_an_empty_matrix_and_dln_rlct_of_an_unordered_collection():
    import sympy as sp

    from slt_companion.symbolic import fisher_rank
    from slt_companion.theory import dln_rlct

    assert fisher_rank(sp.zeros(0, 0)) == 0 and fisher_rank(sp.zeros(0, 3)) == 0      # it raised IndexError
    with pytest.raises(ValueError, match="in that order"):
        dln_rlct({5, 4, 3}, 1)                      # a set has no order: the widths would be taken arbitrarily
    assert dln_rlct((5, 4, 3, 4, 5), 2).lam == 9


def test_volume_bound_takes_any_real_number_but_not_a_bool_and_frequencies_near_the_largest_float():
    import sympy as sp

    from slt_companion.interventions import tms_data_frequencies
    from slt_companion.volume import volume

    w1, w2 = sp.symbols("w1 w2")
    K = w1**2 * w2**2
    ref = volume(K, [w1, w2], 1e-3, bound=1.0, points=60)
    for b in (np.float64(1.0), sp.Integer(1), sp.Float(1.0), 1):
        assert volume(K, [w1, w2], 1e-3, bound=b, points=60) == ref
    for bad in (True, sp.Symbol("b"), "1", -1.0, float("inf")):
        with pytest.raises(ValueError, match="bound must be a positive number"):
            volume(K, [w1, w2], 1e-3, bound=bad, points=60)
    huge = tms_data_frequencies(50, [1e308, 1e308, 0.0], seed=0)         # the sum overflowed: a raw torch error
    assert torch.equal(huge.x, tms_data_frequencies(50, [1.0, 1.0, 0.0], seed=0).x)


def test_fisher_information_takes_numpy_points_and_refuses_a_number():
    import sympy as sp

    from slt_companion.symbolic import fisher_information

    a, b, x, z = sp.symbols("a b x z")
    model = a * sp.tanh(b * x) + z
    pts = np.array([[0.5, 1.0], [1.5, -2.0]])
    ref = fisher_information(model, [a, b], [x, z], input_points=[(0.5, 1.0), (1.5, -2.0)])
    assert fisher_information(model, [a, b], [x, z], input_points=pts) == ref      # "1 coordinates" before
    with pytest.raises(ValueError, match="input_points must be a list"):
        fisher_information(model, [a, b], [x, z], input_points=3)


def test_rlct_takes_a_sympy_poly_and_float_exponents_in_the_prior():
    import sympy as sp

    from slt_companion.symbolic import rlct

    x, y = sp.symbols("x y")
    assert rlct(sp.Poly(x**2 * y**4, x, y), [x, y]) == rlct(x**2 * y**4, [x, y])          # AttributeError before
    assert rlct(x**2 * y**4, [x, y], prior=x**sp.Float(1.0)) == rlct(x**2 * y**4, [x, y], prior=x)   # was refused
    assert rlct(x**2 * y**4, [x, y], prior=x**1.5).lam == sp.Rational(1, 4)     # min((1.5 + 1)/2, 1/4)


@pytest.mark.parametrize("call, err, match", [
    (lambda f: f.crossing_exact(2, np.ones(4), np.ones(4), nbeta=10.0), TypeError,
     r"exponents must be a sequence of one or two powers, e.g. \(2,\) or \(1, 2\), got int 2: wrap one power in a tuple"),
    (lambda f: f.toy_potential_exact(2, 100), TypeError, r"exponents must be a sequence of two powers"),
    (lambda f: f.toy_potential_exact((1, 2), 100, seed=-1), ValueError, r"seed must be an integer ≥ 0, got -1"),
    (lambda f: f.toy_potential_exact((1, 2), 100, seed=1.5), ValueError, r"seed must be an integer ≥ 0, got 1.5"),
])
def test_exact_toy_values_name_a_bad_exponents_or_seed(call, err, match):
    from slt_companion import groundtruth

    with pytest.raises(err, match=match):
        call(groundtruth)
