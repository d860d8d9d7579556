"""The MoD module on tiny random models of several architectures."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from modetune import BaseModelMismatchError, MoDConfig, MoDModel, get_mod_model
from modetune.losses import HeadSpec, fused_mod_loss, naive_mod_loss
from modetune.routing import route
from modetune.surgery import UnsupportedModelError, find_parts
from tiny import ARCHS, VOCAB, perturb, tiny_model


def _batch(seed=0, batch=3, length=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding in row 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[1, :4] = -100  # a prompt that carries no label
    return ids, mask, labels


@pytest.mark.parametrize("arch", [*ARCHS, "gemma2"])
def test_k1_without_norms_equals_base(arch):
    ids, mask, _ = _batch()
    base = tiny_model(arch)
    with torch.no_grad():
        expected = base(ids, attention_mask=mask).logits
    model = get_mod_model(base, MoDConfig(k=1, member_norms=False))
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_surgery_finds_parts(arch):
    base = tiny_model(arch)
    parts = find_parts(base)
    assert parts.num_layers == 5 and len(parts.layers) == 5
    assert parts.head is base.get_output_embeddings()
    assert parts.final_norm not in list(parts.layers.modules())


def test_surgery_names_missing_part():
    with pytest.raises(UnsupportedModelError, match="no `config`"):
        find_parts(nn.Linear(2, 2))
    base = tiny_model("llama")
    del base.model.norm  # a decoder without a final norm
    with pytest.raises(UnsupportedModelError, match="final norm"):
        find_parts(base)


def test_k_must_be_below_layers():
    with pytest.raises(ValueError, match="smaller than the model's number of layers"):
        get_mod_model(tiny_model("llama"), MoDConfig(k=5))
    with pytest.raises(ValueError, match="top_k"):
        MoDConfig(k=3, top_k=4)


def test_shortcut_equals_explicit_mixing_values_and_grads():
    ids, mask, _ = _batch()
    models = []
    for explicit in (False, True):
        model = MoDModel(tiny_model("llama"), MoDConfig(k=3), explicit_mixing=explicit)
        perturb(model)
        models.append(model)
    outs = []
    for model in models:
        logits = model(ids, attention_mask=mask).logits
        (logits * torch.linspace(-1, 1, VOCAB)).sum().backward()
        outs.append((logits.detach(), model.router.weight.grad, [p.grad for p in model.norms.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_topk_routing():
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.0], [5.0, 4.0, 3.0, 2.0]])
    weights = route(logits, top_k=2)
    assert (weights[0, [0, 2]] == 0).all() and (weights[1, [2, 3]] == 0).all()
    torch.testing.assert_close(weights[0, [1, 3]], torch.softmax(torch.tensor([2.0, 1.0]), -1))
    torch.testing.assert_close(weights[1, [0, 1]], torch.softmax(torch.tensor([5.0, 4.0]), -1))
    torch.testing.assert_close(route(logits, top_k=None), logits.softmax(-1))

    model = get_mod_model(tiny_model("llama"), MoDConfig(k=3, top_k=1))
    perturb(model)
    ids, mask, _ = _batch()
    out = model(ids, attention_mask=mask)
    w = out.router_weights
    assert ((w == 0).sum(-1) == 2).all() and ((w == 1).sum(-1) == 1).all()


def _lora(model, k=3):
    n = model.config.num_hidden_layers
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        layers_to_transform=list(range(n - k)), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # LoRA B starts at zero; give it a value so its gradient path is exercised
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=g)
    return peft_model


BODY = dict(distill_through_body=True, router_init="uniform")  # the gradient path the defaults switch off
LOSS_CASES = [
    dict(distill_direction="reverse", **BODY),
    dict(distill_direction="forward", **BODY),
    dict(distill_direction="reverse", detach_teacher=False, train_final_norm=True, **BODY),
    dict(distill_direction="forward", detach_teacher=False, **BODY),
    dict(),  # the defaults: router_init="final", distill_through_body=False
    dict(router_input="entry", top_k=2, **BODY),
    dict(distill_lambda=0.0),
    dict(temperature=2.0, distill_lambda=0.5, **BODY),
]


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "defaults")
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_chunked_loss_equals_naive(case, arch):
    ids, mask, labels = _batch()
    results = []
    for impl in ("chunked", "naive"):
        model = get_mod_model(_lora(tiny_model(arch)), MoDConfig(k=3, loss_impl=impl, chunk_size=5, **case))
        perturb(model)
        model.train()
        out = model(ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
        results.append((out, grads))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(a.task_loss, b.task_loss, rtol=1e-5, atol=0)
    # KL components are tiny differences of near-equal distributions: compared on the loss scale
    torch.testing.assert_close(a.distill_losses, b.distill_losses, rtol=1e-5, atol=1e-7)
    if a.member_ce is not None:
        torch.testing.assert_close(a.member_ce, b.member_ce, rtol=1e-5, atol=0)
    assert ga.keys() == gb.keys()
    kinds = {"router": 0, "norms": 0, "lora": 0}
    for name in ga:
        assert torch.isfinite(ga[name]).all()
        scale = gb[name].abs().max().clamp_min(1e-12)
        assert ((ga[name] - gb[name]).abs().max() / scale) < 1e-5, name
        kinds["router"] += "router" in name
        kinds["norms"] += name.startswith("norms.")
        kinds["lora"] += "lora_" in name
    assert all(kinds.values()), kinds
    lora_grads = [g for name, g in ga.items() if "lora_A" in name]
    assert any(g.abs().sum() > 0 for g in lora_grads)


def test_loss_function_matches_hf_loss_for_single_member():
    """k = 1: the MoD loss is the model's own causal-LM cross-entropy."""
    ids, mask, labels = _batch()
    base = tiny_model("llama")
    expected = base(ids, attention_mask=mask, labels=labels).loss
    model = get_mod_model(base, MoDConfig(k=1, member_norms=False))
    torch.testing.assert_close(model(ids, attention_mask=mask, labels=labels).loss, expected, rtol=1e-6, atol=0)


def test_distill_through_body_false_keeps_distill_out_of_body():
    """With lambda > 0, LoRA gradients must not depend on lambda when the body is cut off."""
    ids, mask, labels = _batch()
    grads = []
    for lam in (0.0, 3.0):
        model = get_mod_model(_lora(tiny_model("llama")), MoDConfig(k=3, distill_lambda=lam, distill_through_body=False))
        perturb(model)
        model.train()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        if "lora_" in name:
            torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(grads[0]["norms.0.weight"], grads[1]["norms.0.weight"])


def test_gradient_checkpointing_gives_same_grads():
    ids, mask, labels = _batch()
    grads = []
    for checkpointing in (False, True):
        model = get_mod_model(_lora(tiny_model("llama")), MoDConfig(k=3))
        perturb(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def _greedy_by_hand(model, ids, steps):
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_generate_equals_greedy_loop_over_ensemble_logits(arch):
    model = get_mod_model(tiny_model(arch), MoDConfig(k=3))
    perturb(model)
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))
    expected = _greedy_by_hand(model, ids, 8)
    for use_cache in (True, False):
        got = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             use_cache=use_cache, eos_token_id=None, pad_token_id=0)
        assert torch.equal(got, expected), use_cache
    with torch.no_grad():
        ensemble = model(expected).logits
        base = model.remove_hooks()(expected).logits
    assert not torch.allclose(ensemble, base, atol=1e-3)  # the ensemble really changes the logits


def test_beam_search_and_sampling_run_on_ensemble():
    model = get_mod_model(_lora(tiny_model("llama")), MoDConfig(k=3))
    perturb(model)
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    beams = model.generate(ids, num_beams=3, do_sample=False, **kwargs)
    assert beams.shape == (2, 11)
    torch.manual_seed(0)
    first = model.generate(ids, do_sample=True, top_k=5, **kwargs)
    torch.manual_seed(0)
    assert torch.equal(first, model.generate(ids, do_sample=True, top_k=5, **kwargs))


def test_save_load_round_trip_bitwise(tmp_path):
    ids, mask, _ = _batch()
    model = get_mod_model(_lora(tiny_model("llama")), MoDConfig(k=3, router_input="entry", train_final_norm=True))
    perturb(model)
    with torch.no_grad():
        model._parts.final_norm.weight.mul_(1.1)
        expected = model(ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"mod_config.json", "mod_model.safetensors",
                                                     "adapter_config.json", "adapter_model.safetensors"}
    loaded = MoDModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert loaded.mod_config == model.mod_config
    with torch.no_grad():
        got = loaded(ids, attention_mask=mask).logits
    assert torch.equal(got, expected)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_mod_only_round_trip_and_trainable_count(tmp_path):
    base = tiny_model("llama")
    model = get_mod_model(base, MoDConfig(k=3))
    trainable, _ = model.trainable_parameters()
    assert trainable == 3 * 32 + 2 * 32  # router (d x k) + two member norms
    perturb(model)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    loaded = MoDModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    assert torch.equal(loaded.router.weight, model.router.weight)
    assert loaded.trainable_parameters()[0] == trainable


def test_loading_onto_another_base_fails(tmp_path):
    get_mod_model(tiny_model("llama", seed=0), MoDConfig(k=2)).save_pretrained(tmp_path)
    with pytest.raises(BaseModelMismatchError, match="different base model"):
        MoDModel.from_pretrained(tiny_model("llama", seed=1), tmp_path)


def test_naive_and_fused_functions_agree_directly():
    """The pure loss functions, without a model, on random states (float64)."""
    torch.manual_seed(0)
    n, d, V, k = 11, 6, 13, 3
    hs = [torch.randn(n, d, dtype=torch.float64, requires_grad=True) for _ in range(k)]
    labels = torch.randint(0, V, (n,))
    head = HeadSpec(torch.randn(V, d, dtype=torch.float64), torch.randn(V, dtype=torch.float64))
    norms = [nn.LayerNorm(d, dtype=torch.float64) for _ in range(k)]
    from modetune.routing import Router

    router = Router(d, k)
    router.weight.data.normal_()
    router = router.double()
    config = MoDConfig(k=k, chunk_size=4)
    out_f = fused_mod_loss(hs, None, labels, norms, router, head, config)
    gf = torch.autograd.grad(out_f.loss, hs + [router.weight])
    out_n = naive_mod_loss(hs, None, labels, norms, router, head, config)
    gn = torch.autograd.grad(out_n.loss, hs + [router.weight])
    torch.testing.assert_close(out_f.loss, out_n.loss, rtol=1e-10, atol=0)
    for a, b in zip(gf, gn):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_evaluation_reports_member_ce_even_without_distillation():
    """With lambda = 0 training uses the one-projection shortcut; evaluation still reports
    every member's own cross-entropy (the sweeps' diagnostic), equal to the naive reference."""
    ids, mask, labels = _batch()
    outs = []
    for impl in ("chunked", "naive"):
        model = get_mod_model(tiny_model("llama"), MoDConfig(k=3, distill_lambda=0.0, loss_impl=impl, chunk_size=5))
        perturb(model)
        with torch.no_grad():
            outs.append(model(ids, attention_mask=mask, labels=labels))
    assert outs[0].member_ce is not None and outs[0].member_ce.shape == (3,)
    torch.testing.assert_close(outs[0].member_ce, outs[1].member_ce, rtol=1e-5, atol=0)
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=1e-5, atol=0)
