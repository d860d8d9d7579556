"""The MoD wrapper (modetune.mod.model) on tiny random models: ensemble logits, generation, save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import modetune
from modetune import MoDConfig, MoDModel, get_mod_model
from modetune.mod.model import WEIGHTS_NAME
from modetune.utils.errors import BaseModelMismatchError, DataError, UserError
from tiny import ARCHS, VOCAB, batch, lora, perturb, tiny_model


@pytest.mark.parametrize("arch", [*ARCHS, "gemma2"])
def test_k1_without_norms_equals_base(arch):
    ids, mask, _ = batch()
    base = tiny_model(arch)
    with torch.no_grad():
        expected = base(ids, attention_mask=mask).logits
    model = get_mod_model(base, MoDConfig(k=1, member_norms=False))
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def _ensemble_by_hand(model: MoDModel, ids, mask):
    """The method's formula, written out: ``sum_i G_i phi(N_i(h_i))`` with ``G = softmax(N_p(h_N) W^T + prior)``,
    from the raw layer outputs (captured by hooks of this test, not by MoD's own)."""
    layers, final_norm, head = model.parts.layers, model.parts.final_norm, model.parts.head
    captured = {}
    handles = [layers[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out[0] if isinstance(
        out, tuple) else out)) for i in model.member_layers]
    try:
        model(ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    hs = [captured[i] for i in model.member_layers]
    norms = [*model.norms, final_norm]
    gate = torch.softmax(final_norm(hs[-1]) @ model.router.weight.T + model.router.prior, -1)
    phi = lambda z: torch.nn.functional.linear(z, head.weight, head.bias)  # noqa: E731 (not head(): MoD hooks it)
    return sum(gate[..., i : i + 1] * phi(norm(h)) for i, (norm, h) in enumerate(zip(norms, hs)))


@pytest.mark.parametrize("explicit", [False, True])
def test_both_mixing_paths_equal_the_formula_in_values_and_grads(explicit):
    """The one-projection shortcut and the explicit mix, each against the formula computed by hand."""
    ids, mask, _ = batch()
    model = perturb(MoDModel(tiny_model("llama"), MoDConfig(k=3), explicit_mixing=explicit))
    params = [model.router.weight, *model.norms.parameters()]
    probe = torch.linspace(-1, 1, VOCAB)
    logits = model(ids, attention_mask=mask).logits
    got = torch.autograd.grad((logits * probe).sum(), params)
    reference = _ensemble_by_hand(model, ids, mask)
    expected = torch.autograd.grad((reference * probe).sum(), params)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert (reference - model.remove_hooks()(ids, attention_mask=mask).logits).abs().max() > 1e-2  # not the base


def test_gradient_checkpointing_gives_same_grads():
    ids, mask, labels = batch()
    grads = []
    for checkpointing in (False, True):
        model = get_mod_model(lora(tiny_model("llama")), MoDConfig(k=3))
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


def test_beam_search_and_sampling_read_the_ensemble_logits():
    """Beam search's sequence scores are the ensemble's log-probabilities of the tokens it chose, and
    sampling from the top 1 is the ensemble's greedy choice."""
    model = perturb(get_mod_model(lora(tiny_model("llama")), MoDConfig(k=3)))
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    out = model.generate(ids, num_beams=3, do_sample=False, length_penalty=0.0, return_dict_in_generate=True,
                         output_scores=True, num_return_sequences=1, **kwargs)
    with torch.no_grad():
        logprobs = model(out.sequences).logits[:, 4:-1].log_softmax(-1)
    chosen = logprobs.gather(-1, out.sequences[:, 5:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, chosen, rtol=1e-4, atol=1e-4)
    greedy = _greedy_by_hand(model, ids, 6)
    assert torch.equal(model.generate(ids, do_sample=True, top_k=1, **kwargs), greedy)


def test_save_load_round_trip_bitwise(tmp_path):
    ids, mask, _ = batch()
    model = get_mod_model(lora(tiny_model("llama")), MoDConfig(k=3, router_input="entry", train_final_norm=True))
    perturb(model)
    with torch.no_grad():
        model.parts.final_norm.weight.mul_(1.1)
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


def test_load_mod_weights_copies_every_mod_tensor(tmp_path):
    ids, mask, _ = batch()
    config = MoDConfig(k=3, router_input="entry", train_final_norm=True)
    model = get_mod_model(tiny_model("llama"), config)
    perturb(model)
    with torch.no_grad():
        model.parts.final_norm.weight.mul_(1.1)
        expected = model(ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    assert set(load_file(str(tmp_path / WEIGHTS_NAME))) == {"norms.0.weight", "norms.1.weight", "router.weight",
                                                           "final_norm.weight"}
    fresh = get_mod_model(tiny_model("llama"), config)
    fresh.load_mod_weights(tmp_path)
    for name, tensor in model.mod_state_dict().items():
        assert torch.equal(fresh.mod_state_dict()[name], tensor), name
    assert fresh.router.weight.requires_grad  # loading keeps the model trainable (checkpoint resumption)
    with torch.no_grad():
        assert torch.equal(fresh(ids, attention_mask=mask).logits, expected)


def test_load_mod_weights_refuses_a_file_of_another_config(tmp_path):
    get_mod_model(tiny_model("llama"), MoDConfig(k=3)).save_pretrained(tmp_path)
    with pytest.raises(DataError, match="'norms.1.weight'.*does not match this MoD config"):
        get_mod_model(tiny_model("llama"), MoDConfig(k=2)).load_mod_weights(tmp_path)
    save_file({"router.weight": torch.zeros(3, 32), "head.weight": torch.zeros(1)}, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(UserError, match="'head.weight'"):
        get_mod_model(tiny_model("llama"), MoDConfig(k=3)).load_mod_weights(tmp_path)


def test_from_pretrained_needs_the_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        MoDModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_public_api_and_error_classes():
    assert modetune.BaseModelMismatchError is BaseModelMismatchError and issubclass(BaseModelMismatchError, UserError)
    assert {"MoDConfig", "MoDModel", "get_mod_model"} <= set(modetune.__all__)
