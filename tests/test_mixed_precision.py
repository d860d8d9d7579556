"""Mixed precision at the model level: MoD + LoRA with bf16 / fp16 weights, and autocast over fp32 weights.

The reference is the naive loss (``loss_impl: naive``) of a float32 copy of the same model,
holding the SAME (rounded) weights, so what differs is the low-precision arithmetic only
(the body's matmuls, the norms, the head projections). Compared: the loss, its task and
distillation parts, and the gradients of the router, the member norms, LoRA A/B and the
members' hidden states (the residual stream after each member layer).

Stated tolerances (measured on these tiny models: loss <= 6e-5 relative in bf16 and
<= 6e-6 in fp16; gradients <= 2.2e-2 of their largest entry in bf16 and <= 3.2e-3 in fp16):
a correct implementation sits an order of magnitude below them, a wrong term is off by O(1).

The router and the loss arithmetic (log-softmax, CE, KL) stay in float32 whatever the
weights' dtype and with autocast on (checked by spying on the loss's own calls).
"""

from __future__ import annotations

import pytest
import torch

import modetune.mod.ensemble as routing
import modetune.mod.logit_grads as logit_grads
from modetune import MoDConfig, get_mod_model
from modetune.mod.surgery import find_parts
from tiny import batch, lora, perturb, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

# name: (weights dtype, autocast dtype or None)
PRECISIONS = {
    "bf16-weights": (torch.bfloat16, None),
    "fp16-weights": (torch.float16, None),
    "autocast-bf16": (torch.float32, torch.bfloat16),
    "autocast-fp16": (torch.float32, torch.float16),
}
# (relative error of the loss values, error of a gradient relative to its largest entry)
TOLERANCE = {torch.bfloat16: (1e-3, 1e-1), torch.float16: (1e-4, 2e-2)}
CASES = {
    "defaults": dict(),
    "lambda=0": dict(distill_lambda=0.0),
    "through-body-uniform": dict(distill_through_body=True, router_init="uniform"),
}


def _build(arch: str, dtype: torch.dtype, impl: str, case: dict, device: str = "cpu"):
    base = tiny_model(arch).to(dtype)
    model = get_mod_model(lora(base), MoDConfig(k=3, loss_impl=impl, chunk_size=5, **case))
    perturb(model)
    return model.to(device).train()


def _loss_and_grads(model, autocast: torch.dtype | None, device: str = "cpu"):
    """Loss output and float32 copies of the gradients: trainable parameters and member hidden states."""
    parts, states, handles = find_parts(model), {}, []
    for i in model.member_layers:
        def keep(module, args, output, i=i):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden.retain_grad()
            states[f"hidden.{i}"] = hidden

        handles.append(parts.layers[i].register_forward_hook(keep))
    ids, mask, labels = (t.to(device) for t in batch(batch=4, length=16))
    kind = torch.device(device).type
    context = torch.autocast(kind, dtype=autocast) if autocast else torch.autocast(kind, enabled=False)
    try:
        with context:
            out = model(ids, attention_mask=mask, labels=labels)
        out.loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    grads = {name: p.grad.float() for name, p in model.named_parameters() if p.requires_grad}
    grads.update({name: t.grad.float() for name, t in states.items()})
    return out, grads


def _low_and_reference(arch, precision, case, device="cpu"):
    weights, autocast = PRECISIONS[precision]
    low = _build(arch, weights, "chunked", case, device)
    reference = _build(arch, torch.float32, "naive", case, device)
    reference.load_state_dict(low.state_dict())  # the same (rounded) values, held in float32
    assert all(p.dtype == torch.float32 for p in reference.parameters())
    return low, reference, autocast, autocast or weights


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("precision", PRECISIONS)
def test_low_precision_loss_and_grads_match_float32_reference(precision, case):
    check_against_float32("llama", precision, case)


def check_against_float32(arch: str, precision: str, case: dict, device: str = "cpu") -> None:
    """The comparison of the module docstring, on ``device`` (tests/test_device.py runs it on a GPU)."""
    low, reference, autocast, dtype = _low_and_reference(arch, precision, case, device)
    value_rtol, grad_rtol = TOLERANCE[dtype]
    a, ga = _loss_and_grads(low, autocast, device)
    b, gb = _loss_and_grads(reference, None, device)
    for got, expected in [(a.loss, b.loss), (a.task_loss, b.task_loss)]:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=value_rtol, atol=0)
    torch.testing.assert_close(a.distill_losses, b.distill_losses, rtol=value_rtol, atol=value_rtol * b.loss.item())
    assert ga.keys() == gb.keys()
    kinds = dict.fromkeys(("router", "norms.", "lora_A", "lora_B", "hidden."), 0)
    for name in ga:
        assert torch.isfinite(ga[name]).all(), name
        error = ((ga[name] - gb[name]).abs().max() / gb[name].abs().max().clamp_min(1e-12)).item()
        assert error < grad_rtol, (name, error)
        for kind in kinds:
            kinds[kind] += kind in name
    assert all(kinds.values()), kinds  # every kind of gradient was compared


@pytest.mark.parametrize("precision", ["bf16-weights", "autocast-bf16"])
def test_soft_capped_head_in_bfloat16_matches_float32(precision):
    """Gemma-2's soft-capped head takes the explicit-logits path of the fused loss."""
    low, reference, autocast, dtype = _low_and_reference("gemma2", precision, {})
    a, ga = _loss_and_grads(low, autocast)
    b, gb = _loss_and_grads(reference, None)
    torch.testing.assert_close(a.loss, b.loss, rtol=TOLERANCE[dtype][0], atol=0)
    for name in ga:
        error = ((ga[name] - gb[name]).abs().max() / gb[name].abs().max().clamp_min(1e-12)).item()
        assert error < TOLERANCE[dtype][1], (name, error)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_router_and_loss_arithmetic_stay_float32(precision, monkeypatch):
    weights, autocast = PRECISIONS[precision]
    model = _build("llama", weights, "chunked", {})
    assert model.router.weight.dtype == torch.float32
    assert {p.dtype for p in model.norms.parameters()} == {weights}
    seen: list = []
    softmax_into, vdot, route = logit_grads.softmax_into, logit_grads._vdot, routing.route

    def spy_softmax(x, tau, out, normalise=True):  # the loss's softmaxes and log-sum-exps
        lse = softmax_into(x, tau, out, normalise)
        seen.append(("softmax", x.dtype, out.dtype))
        seen.append(("logsumexp", x.dtype, lse.dtype))
        return lse

    def spy_vdot(a, b):
        out = vdot(a, b)
        seen.append(("vdot", a.dtype, out.dtype))
        return out

    def spy_route(logits, top_k=None):
        out = route(logits, top_k)
        seen.append(("route", logits.dtype, out.dtype))
        return out

    monkeypatch.setattr(logit_grads, "softmax_into", spy_softmax)
    monkeypatch.setattr(logit_grads, "_vdot", spy_vdot)
    monkeypatch.setattr(routing, "route", spy_route)
    out, _ = _loss_and_grads(model, autocast)
    kinds = {kind for kind, _, _ in seen}
    assert {"softmax", "logsumexp", "vdot", "route"} <= kinds, kinds
    assert all(a == b == torch.float32 for _, a, b in seen), seen
    assert out.router_weights.dtype == torch.float32
    assert out.loss.dtype == out.task_loss.dtype == out.distill_losses.dtype == torch.float32
