"""Tests that take the run's ``--device`` (default cpu): benchmarks/gpu_check.sh runs them on CUDA.

Loss equivalence (fused vs naive in float32; bf16 weights and bf16 autocast vs a float32
reference), generation through MoD equal to the base model's own path, save/load.
"""

from __future__ import annotations

import pytest
import torch

from modetune import MoDConfig, MoDModel, get_mod_model
from test_mixed_precision import check_against_float32
from tiny import VOCAB, batch, lora, perturb, tiny_model

pytestmark = [pytest.mark.device, pytest.mark.usefixtures("one_thread")]


def test_fused_loss_equals_naive_in_float32(device):
    ids, mask, labels = (t.to(device) for t in batch(batch=4, length=16))
    results = []
    for impl in ("chunked", "naive"):
        model = perturb(get_mod_model(lora(tiny_model("llama")), MoDConfig(k=3, loss_impl=impl, chunk_size=5)))
        model.to(device).train()
        out = model(ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(a.distill_losses, b.distill_losses, rtol=1e-5, atol=1e-7)
    for name in ga:
        assert ((ga[name] - gb[name]).abs().max() / gb[name].abs().max().clamp_min(1e-12)) < 1e-4, name


@pytest.mark.parametrize("precision", ["bf16-weights", "autocast-bf16"])
def test_bf16_loss_and_grads_match_float32(device, precision):
    check_against_float32("llama", precision, {}, device)


def test_generation_equals_the_base_path(device):
    """k = 1 without member norms is the base model: its generate gives the base's tokens; and
    MoD's generate (KV cache) equals a greedy loop over the ensemble logits."""
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5)).to(device)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, eos_token_id=None,
                  pad_token_id=0)
    base = tiny_model("llama").to(device)
    expected = base.generate(ids, **kwargs)
    same = get_mod_model(base, MoDConfig(k=1, member_norms=False))
    assert torch.equal(same.generate(ids, **kwargs), expected)
    model = perturb(get_mod_model(tiny_model("llama"), MoDConfig(k=3))).to(device)
    by_hand = ids
    for _ in range(8):
        with torch.no_grad():
            logits = model(by_hand).logits[:, -1]
        by_hand = torch.cat([by_hand, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(ids, **kwargs), by_hand)


def test_save_and_load_round_trip(device, tmp_path):
    ids, mask, _ = (t.to(device) for t in batch())
    model = perturb(get_mod_model(lora(tiny_model("llama")), MoDConfig(k=3))).to(device).eval()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "adapter")
    loaded = MoDModel.from_pretrained(tiny_model("llama").to(device), tmp_path / "adapter").eval()
    assert loaded.router.weight.device.type == torch.device(device).type
    with torch.no_grad():
        got = loaded(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
