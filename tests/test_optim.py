"""EntropySGD: it descends a quadratic, is deterministic and resumable, and rejects bad arguments."""

import pytest
import torch

from slt_companion.optim import EntropySGD


def quadratic_run(steps=40, seed=0, **kw):
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64))
    h = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    opt = EntropySGD([w], seed=seed, **kw)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (h * w ** 2).sum()
        loss.backward()
        return loss

    losses = [float(opt.step(closure)) for _ in range(steps)]
    return w.detach().clone(), losses, opt


def test_decreases_a_quadratic():
    w, losses, _ = quadratic_run(noise=1e-3)
    assert losses[-1] < 1e-2 * losses[0]
    assert float(w.abs().max()) < 0.5


def test_deterministic_and_seeded():
    a, la, _ = quadratic_run(noise=1e-2, seed=1)
    b, lb, _ = quadratic_run(noise=1e-2, seed=1)
    c, _, _ = quadratic_run(noise=1e-2, seed=2)
    assert torch.equal(a, b) and la == lb
    assert not torch.equal(a, c)


def test_momentum_and_resume_from_state_dict():
    full, _, _ = quadratic_run(steps=10, noise=1e-2, momentum=0.5, nesterov=True)
    w, _, opt = quadratic_run(steps=4, noise=1e-2, momentum=0.5, nesterov=True)
    w2 = torch.nn.Parameter(w.clone())
    opt2 = EntropySGD([w2], momentum=0.5, nesterov=True, noise=1e-2)
    opt2.load_state_dict(opt.state_dict())
    h = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)

    def closure():
        opt2.zero_grad()
        loss = 0.5 * (h * w2 ** 2).sum()
        loss.backward()
        return loss

    for _ in range(6):
        opt2.step(closure)
    assert torch.equal(w2.detach(), full)


def test_trains_a_small_network():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = (x[:, 0] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = EntropySGD(net.parameters(), lr=1.0, inner_lr=0.2, L=3)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    first = float(opt.step(closure))
    for _ in range(30):
        last = float(opt.step(closure))
    assert last < 0.5 * first


def test_errors():
    w = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="closure"):
        EntropySGD(w).step()
    for kw, match in [({"lr": 0.0}, "lr"), ({"inner_lr": -1.0}, "inner_lr"), ({"L": 0}, "L"),
                      ({"L": 2.5}, "L"), ({"alpha": 1.5}, "alpha"), ({"gamma": float("nan")}, "gamma"),
                      ({"nesterov": True}, "nesterov"), ({"noise": -1.0}, "noise")]:
        with pytest.raises(ValueError, match=match):
            EntropySGD(w, **kw)
    p = torch.nn.Parameter(torch.ones(1))
    opt = EntropySGD([p])

    def bad():
        opt.zero_grad()
        loss = (p * float("inf")).sum()
        loss.backward()
        return loss

    with pytest.raises(FloatingPointError, match="inner loop"):
        opt.step(bad)


def test_train_accepts_sgd_momentum_entropy_sgd_and_callables():
    from slt_companion.models import MLP
    from slt_companion.train import train

    gen0 = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=gen0)
    y = (x[:, 0] + x[:, 1] > 0).long()

    def batch_fn(gen):
        idx = torch.randint(0, 128, (32,), generator=gen)
        return x[idx], y[idx]

    ce = torch.nn.functional.cross_entropy
    for opt, lr in [("sgd", 0.2), ("momentum", 0.05), ("entropy-sgd", 1.0),
                    (lambda p: torch.optim.SGD(p, lr=0.2), 0.2)]:
        runs = [train(MLP([4, 8, 2], seed=0), ce, batch_fn, num_steps=40, lr=lr, optimizer=opt,
                      schedule="constant", checkpoints=[0, 40], progress=False) for _ in range(2)]
        assert torch.equal(runs[0].params, runs[1].params), opt
        assert runs[0].train_loss[-10:].mean() < 0.8 * runs[0].train_loss[:5].mean(), opt
    with pytest.raises(ValueError, match="optimizer"):
        train(MLP([4, 8, 2]), ce, batch_fn, num_steps=2, optimizer="lbfgs", progress=False)


def test_entropy_sgd_noise_is_not_the_minibatch_stream():
    """train() seeds step t's minibatch with seed * 1_000_003 + t; the Langevin noise of the same step must come from
    another stream (it once used the same seed, so the noise equalled the minibatch inputs)."""
    from slt_companion.optim import _noise_seed
    from slt_companion.train import _step_generator

    for seed, step in ((0, 0), (3, 17), (11, 999)):
        x = torch.randn(50, generator=_step_generator(seed, step))
        xi = torch.randn(50, generator=torch.Generator().manual_seed(_noise_seed(seed, step)))
        assert not torch.allclose(x, xi)
    assert _noise_seed(1, 2) == _noise_seed(1, 2) and _noise_seed(1, 2) != _noise_seed(2, 1)
