"""Weight-refined LLCs of several parameter groups in one batched run (llc.estimate_refined_llcs)."""

import math

import pytest
import torch

from slt_companion.llc import estimate_llc, estimate_refined_llcs
from slt_companion.models import AttentionOnlyLM
from slt_companion.sampling import SamplerConfig, sgld


def lm_loss(logits, y):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

SETTINGS = dict(num_chains=4, num_draws=100, num_burnin=30, step_size=1e-3, nbeta=30.0, localization=200.0,
                batch_size=16, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)     # tiny problems: thread hand-offs cost more than the arithmetic
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def lm(one_thread):
    torch.manual_seed(0)
    model = AttentionOnlyLM(8, n_ctx=8, d_model=8, num_heads=2, num_layers=2, seed=1)
    x = torch.randint(0, 8, (256, 8), generator=torch.Generator().manual_seed(2))
    y = torch.roll(x, -1, dims=1)
    # a few steps of training so that the heads differ
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        opt.step()
    return model, (x, y)


def test_groups_agree_with_one_at_a_time(lm):
    model, data = lm
    heads = model.head_names()
    joint = estimate_refined_llcs(model, lm_loss, data, {h: h for h in heads}, seed=3, **SETTINGS)
    assert list(joint) == heads
    for h in heads:
        one = estimate_llc(model, lm_loss, data, params=h, seed=4, **SETTINGS)
        j = joint[h]
        assert j.llc_trace.shape == one.llc_trace.shape == (4, 100)
        # within chain noise: the difference of two independent estimates, in units of its standard error
        se = math.sqrt((j.std ** 2 + one.std ** 2) / 4)
        assert abs(j.mean - one.mean) < 4 * se + 0.05 * abs(one.mean), (h, j, one)


def test_single_group_matches_estimate_llc(lm):
    """One group, same seed: the same random numbers, so the same estimate up to rounding."""
    model, data = lm
    h = "blocks.1.heads.0"
    one = estimate_llc(model, lm_loss, data, params=h, seed=5, **SETTINGS)
    joint = estimate_refined_llcs(model, lm_loss, data, {"h": h}, seed=5, **SETTINGS)["h"]
    assert joint.mean == pytest.approx(one.mean, rel=1e-3, abs=1e-3)


def test_frozen_parameters_do_not_move(lm):
    model, data = lm
    D = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))
    cfg = SamplerConfig(step_size=1e-3, nbeta=30.0, localization=200.0, num_chains=2, num_draws=20, num_burnin=0,
                        batch_size=16)
    mask = torch.zeros(2, D)
    mask[0, : D // 2] = 1
    mask[1, D // 2:] = 1
    res = sgld(model, lm_loss, data, cfg, params=lambda n, p: n.startswith("blocks."), chain_mask=mask,
               record_params=True, progress=False)
    start = res.params[:, :1]
    moved = (res.params - start).abs().amax(dim=1)          # (chains, D)
    assert torch.all(moved[mask == 0] == 0)
    assert torch.all(moved[mask == 1].mean() > 0)
    assert (moved[mask == 1] > 0).float().mean() > 0.99


def test_bad_groups(lm):
    model, data = lm
    kw = dict(SETTINGS, num_draws=2, num_burnin=0)
    with pytest.raises(ValueError, match="non-empty"):
        estimate_refined_llcs(model, lm_loss, data, {}, **kw)
    with pytest.raises(ValueError, match="selects no parameters"):
        estimate_refined_llcs(model, lm_loss, data, {"x": "blocks.7"}, **kw)
    with pytest.raises(ValueError, match="not parameters of the model"):
        estimate_refined_llcs(model, lm_loss, data, {"x": ["no.such.weight"]}, **kw)
    with pytest.raises(ValueError, match="overlap"):
        estimate_refined_llcs(model, lm_loss, data, {"a": "blocks.0", "b": "blocks.0.heads.1"}, **kw)
    with pytest.raises(ValueError, match="chain_mask"):
        sgld(model, lm_loss, data, SamplerConfig(step_size=1e-3, nbeta=30.0, num_chains=2, num_draws=2),
             params="blocks.0", chain_mask=torch.ones(3, 5), progress=False)
