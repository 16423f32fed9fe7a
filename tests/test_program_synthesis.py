"""The smoothed Turing machine: exact codes give K = 0, the smooth run of a one-hot code is the discrete run,
the zero set's dimension near the two parity programs, determinism, errors."""

import numpy as np
import pytest
import torch

from slt_companion.models import SmoothTuringMachine
from slt_companion.program_synthesis import (Program, classify_parity_code, flat_coordinates, hessian_spectrum,
                                             parity_programs, parity_task, run_program, tm_loss)


@pytest.mark.parametrize("name", ["lean", "redundant"])
@pytest.mark.parametrize("parametrization", ["softmax", "sphere"])
def test_correct_code_has_zero_kl(name, parametrization):
    x, y = parity_task(4)
    prog = parity_programs()[name]
    assert np.array_equal(run_program(prog, x.numpy(), 4), y.numpy())
    m = SmoothTuringMachine(3, 2, 4, parametrization=parametrization).load_program(prog)
    assert float(tm_loss(m(x), y).detach()) == 0.0
    assert classify_parity_code(m, x, y) == name


def test_one_hot_run_is_the_discrete_run():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.integers(0, 3, size=(20, 5)))
    for _ in range(5):
        prog = Program(rng.integers(0, 3, (4, 3)), rng.integers(0, 3, (4, 3)), rng.integers(0, 4, (4, 3)))
        m = SmoothTuringMachine(4, 3, 6, num_moves=3, parametrization="sphere").load_program(prog)
        out = m(x).detach()
        ref = run_program(prog, x.numpy(), 6, moves=("L", "S", "R"))
        assert np.array_equal(out.argmax(-1).numpy(), ref)
        assert torch.allclose(out.exp().max(-1).values, torch.ones(20))


def test_wrong_code_has_positive_kl_and_sharp_softmax_is_close():
    x, y = parity_task(3)
    prog = parity_programs()["lean"]
    m = SmoothTuringMachine(3, 2, 3, parametrization="softmax").load_program(prog, sharpness=12.0)
    k = float(tm_loss(m(x), y).detach())
    assert 0 < k < 1e-3
    bad = Program(prog.write.copy(), prog.move, prog.next)
    bad.write[0, 1] = 0
    m.load_program(bad)
    assert float(tm_loss(m(x), y).detach()) > 1.0


def test_zero_set_dimension_and_hessian_rank():
    x, y = parity_task(4)
    for name, rank in (("lean", 16), ("redundant", 21)):
        m = SmoothTuringMachine(3, 2, 4, parametrization="sphere").load_program(parity_programs()[name])
        ev = hessian_spectrum(m, x, y)
        flat = flat_coordinates(m, x, y)
        assert ev.min() > -1e-9 and (ev > 1e-8).sum() == rank
        assert flat.size - flat.sum() == rank       # the Hessian's kernel is exactly the flat coordinates


def test_shapes_determinism_and_gradients():
    x, y = parity_task(3)
    a = SmoothTuringMachine(3, 2, 3, seed=1)
    b = SmoothTuringMachine(3, 2, 3, seed=1)
    out = a(x)
    assert out.shape == (8, 2) and torch.allclose(out.exp().sum(-1), torch.ones(8, dtype=out.dtype))
    assert torch.equal(out, b(x))
    assert not torch.equal(out, SmoothTuringMachine(3, 2, 3, seed=2)(x))
    tm_loss(out, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.parameters())
    codes = a.codes()
    assert codes["next"].shape == (3, 2, 3) and torch.allclose(codes["move"].sum(-1), torch.ones(3, 2))


def test_vmap_functional_forward_matches():
    x, _ = parity_task(3)
    m = SmoothTuringMachine(3, 2, 3, seed=0)
    params = {k: torch.stack([v.detach(), v.detach() + 0.1]) for k, v in m.named_parameters()}
    out = torch.func.vmap(lambda p: torch.func.functional_call(m, p, (x,)))(params)
    fast = m.forward_batched(params, x.expand(2, *x.shape))
    assert torch.allclose(out, fast, atol=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_states"):
        SmoothTuringMachine(0)
    with pytest.raises(ValueError, match="num_moves"):
        SmoothTuringMachine(num_moves=4)
    with pytest.raises(ValueError, match="parametrization"):
        SmoothTuringMachine(parametrization="relu")
    with pytest.raises(ValueError, match="x must be an integer"):
        SmoothTuringMachine()(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="program has shape"):
        SmoothTuringMachine(4).load_program(parity_programs()["lean"])
    with pytest.raises(ValueError, match="length"):
        parity_task(1)


def test_langevin_codes_is_deterministic_and_classifies():
    from slt_companion.program_synthesis import classify_codes, langevin_codes
    x, y = parity_task(3)
    m = SmoothTuringMachine(3, 2, 3, parametrization="sphere")
    a = langevin_codes(m, x, y, nbeta=50, num_chains=4, steps=20, progress=False)
    b = langevin_codes(m, x, y, nbeta=50, num_chains=4, steps=20, progress=False)
    assert all(torch.equal(a["final"][t], b["final"][t]) for t in a["final"])
    assert a["loss"].shape[1] == 4
    assert set(classify_codes(m, a["final"], x, y)) <= {"wrong", "lean", "redundant"}
    with pytest.raises(ValueError, match="nbeta"):
        langevin_codes(m, x, y, nbeta=0)
