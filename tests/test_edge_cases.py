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
