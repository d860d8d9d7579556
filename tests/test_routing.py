"""The router (modetune.mod.ensemble): ``G(x) = softmax(TopK(x W_g + prior))``."""

from __future__ import annotations

import math

import pytest
import torch

from modetune import MoDConfig, get_mod_model
from modetune.mod.ensemble import Router, prior_logits, route
from tiny import batch, perturb, tiny_model


def test_topk_routing():
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.0], [5.0, 4.0, 3.0, 2.0]])
    weights = route(logits, top_k=2)
    assert (weights[0, [0, 2]] == 0).all() and (weights[1, [2, 3]] == 0).all()
    torch.testing.assert_close(weights[0, [1, 3]], torch.softmax(torch.tensor([2.0, 1.0]), -1))
    torch.testing.assert_close(weights[1, [0, 1]], torch.softmax(torch.tensor([5.0, 4.0]), -1))
    torch.testing.assert_close(route(logits, top_k=None), logits.softmax(-1))

    model = get_mod_model(tiny_model("llama"), MoDConfig(k=3, top_k=1))
    perturb(model)
    ids, mask, _ = batch()
    out = model(ids, attention_mask=mask)
    w = out.router_weights
    assert ((w == 0).sum(-1) == 2).all() and ((w == 1).sum(-1) == 1).all()


@pytest.mark.parametrize("top_k", [None, 1, 2, 3, 4, 5])
def test_route_weights_form_a_distribution_over_the_kept_members(top_k):
    logits = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(0))
    weights = route(logits, top_k)
    assert weights.shape == logits.shape
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 7))
    kept = (weights > 0).sum(-1)
    assert (kept == min(top_k or 4, 4)).all()
    if top_k is None or top_k >= 4:  # dense routing
        torch.testing.assert_close(weights, logits.softmax(-1), rtol=0, atol=0)
    else:  # the kept members are the largest logits
        smallest_kept = logits.masked_fill(weights == 0, math.inf).amin(-1)
        largest_dropped = logits.masked_fill(weights > 0, -math.inf).amax(-1)
        assert (smallest_kept > largest_dropped).all()


def test_route_gradient_is_zero_for_dropped_members():
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.0]], requires_grad=True)
    (route(logits, top_k=2) * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert (logits.grad[0, [0, 2]] == 0).all() and (logits.grad[0, [1, 3]] != 0).all()


@pytest.mark.parametrize("k", [1, 2, 3, 6])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_prior_logits(k, p):
    torch.testing.assert_close(prior_logits(k, "uniform", p), torch.zeros(k))
    prior = prior_logits(k, "final", p)
    assert (prior[:-1] == 0).all()
    if k == 1:
        assert (prior == 0).all()  # one member takes all the weight anyway
    else:
        weights = prior.softmax(-1)
        torch.testing.assert_close(weights[-1], torch.tensor(p))  # a = log(p (k-1) / (1-p))
        torch.testing.assert_close(weights[:-1], torch.full((k - 1,), (1 - p) / (k - 1)))


@pytest.mark.parametrize("init", ["uniform", "final"])
def test_router_starts_at_its_prior_and_learns(init):
    router = Router(8, 3, init=init, final_weight=0.9)
    assert router.weight.dtype == torch.float32 and (router.weight == 0).all() and router.weight.requires_grad
    x = torch.randn(5, 8)
    expected = torch.tensor([1 / 3] * 3) if init == "uniform" else torch.tensor([0.05, 0.05, 0.9])
    torch.testing.assert_close(router(x), expected.expand(5, 3))
    router(x)[:, 0].sum().backward()
    assert router.weight.grad.abs().sum() > 0
    assert "prior" not in router.state_dict()  # the prior is a constant of the config, not a saved weight


def test_router_computes_in_float32_whatever_the_input_dtype():
    router = Router(8, 3, init="uniform")
    with torch.no_grad():
        router.weight.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 8).to(torch.bfloat16)
    weights = router(x)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, (x.float() @ router.weight.T).softmax(-1))


def test_router_top_k_and_fixed_member():
    router = Router(8, 4, init="uniform", top_k=2)
    with torch.no_grad():
        router.weight.normal_(generator=torch.Generator().manual_seed(0))
    assert ((router(torch.randn(6, 8)) > 0).sum(-1) == 2).all()

    fixed = Router(8, 4, fixed=1)  # logit-lens runs: all weight on one member, nothing to learn
    assert not fixed.weight.requires_grad
    torch.testing.assert_close(fixed(torch.randn(2, 3, 8)), torch.tensor([0.0, 1.0, 0.0, 0.0]).expand(2, 3, 4))


def test_loss_layer_fixes_the_router_on_one_member():
    model = get_mod_model(tiny_model("llama"), MoDConfig(k=3, loss_layer=1))
    assert model.router.fixed == 1  # member N-1, counted shallow to final: index k-1-j
    ids, mask, _ = batch()
    with torch.no_grad():
        w = model(ids, attention_mask=mask).router_weights
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0, 0.0]).expand_as(w))
