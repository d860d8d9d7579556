"""Generation for evaluation: the KV-cache greedy decoder against ``generate``, the shared
prefix, finished rows, batching, beam search, and ensemble members (forcing, parsing)."""

from __future__ import annotations

import pytest
import torch

from eval_fixtures import PROMPTS, make_mod_model, tiny_llama
from modetune.eval.generation import generate_responses, generation_config, greedy_generate, shared_prefix_length
from modetune.eval.members import forced_member, parse_members
from modetune.utils.errors import ConfigError
from modetune.utils.prompts import format_prompt
from tiny import ARCHS, VOCAB, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest.py)


@pytest.fixture(scope="module")
def mod_model(tokenizer):
    return make_mod_model(tokenizer)


# ---------------------------------------------------------------------------- the greedy decoder
def _sequences(tokenizer, prompts=PROMPTS):
    return [tokenizer(format_prompt(p))["input_ids"] for p in prompts]


def test_greedy_loop_equals_hf_generate(tokenizer, mod_model, monkeypatch):
    enc = tokenizer([format_prompt(p) for p in PROMPTS], return_tensors="pt", padding=True)
    gen = mod_model.generate(**enc, generation_config=generation_config(mod_model, tokenizer, 12, 1))
    expected = gen[:, enc["input_ids"].shape[1]:].tolist()
    seqs = _sequences(tokenizer)
    assert greedy_generate(mod_model, seqs, 12, [tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id) == expected
    n = shared_prefix_length(tokenizer, seqs)
    assert n == len(tokenizer(format_prompt("x").split("x")[0])["input_ids"])  # the Alpaca header
    prefixed = greedy_generate(mod_model, seqs, 12, [tokenizer.eos_token_id], prefix_len=n,
                               pad_id=tokenizer.pad_token_id)
    assert prefixed == expected
    # models whose cache cannot be merged row by row prefill the padded batch instead
    import modetune.eval.generation as generation

    monkeypatch.setattr(generation, "_plain_layers", lambda cache: None)
    for prefix_len in (0, n):
        assert greedy_generate(mod_model, seqs, 12, [tokenizer.eos_token_id], prefix_len=prefix_len,
                               pad_id=tokenizer.pad_token_id) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_loop_equals_hf_generate_across_architectures(arch):
    """Left padding, a shared prefix and row-wise prefill give ``generate``'s tokens on every
    architecture (absolute and rotary positions)."""
    model = tiny_model(arch, initializer_range=0.3)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, VOCAB, (4,), generator=g).tolist()
    seqs = [prefix + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 7, 1, 5)]
    width = max(map(len, seqs))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(s) for s in seqs])[:, None]).long()
    gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                         eos_token_id=None)
    expected = gen[:, width:].tolist()
    assert greedy_generate(model, seqs, 6, []) == expected
    assert greedy_generate(model, seqs, 6, [], prefix_len=4) == expected


def test_shared_prefix_length_depends_on_the_template_only(tokenizer):
    seqs = _sequences(tokenizer)
    n = shared_prefix_length(tokenizer, seqs)
    assert n > 10 and all(shared_prefix_length(tokenizer, [s]) == n for s in seqs)
    with_input = tokenizer(format_prompt("q", "some input"))["input_ids"]
    assert shared_prefix_length(tokenizer, [with_input]) > 10
    assert shared_prefix_length(tokenizer, [seqs[0], with_input]) == 0  # two templates: no sharing
    assert shared_prefix_length(tokenizer, [tokenizer("plain text")["input_ids"]]) == 0
    assert shared_prefix_length(tokenizer, [tokenizer(format_prompt("x", style="llm-adapters"))["input_ids"]]) > n
    with pytest.raises(ValueError, match="prefix_len"):
        greedy_generate(tiny_llama(tokenizer), [seqs[0], [1, 2]], 2, [], prefix_len=n)


def test_finished_rows_leave_the_batch_without_changing_the_others(tokenizer, mod_model):
    seqs = _sequences(tokenizer)
    n = shared_prefix_length(tokenizer, seqs)
    full = greedy_generate(mod_model, seqs, 10, [], prefix_len=n)
    stop_at = {0: 2, 3: 5}  # rows 0 and 3 stop early; the cache drops them
    cut = greedy_generate(mod_model, seqs, 10, [], prefix_len=n,
                          stop=lambda rows, toks: [len(t) >= stop_at.get(r, 99) for r, t in zip(rows, toks)])
    assert [len(t) for t in cut] == [2, 10, 10, 5, 10]
    assert all(c == f[: len(c)] for c, f in zip(cut, full))


# ---------------------------------------------------------------------------- batches and beams
@pytest.mark.parametrize("member", [None, 0, 2])
@pytest.mark.parametrize("dataset", ["gsm8k", "boolq"])
def test_batched_generation_equals_batch_size_one(tokenizer, mod_model, member, dataset):
    prompts = [format_prompt(p) for p in PROMPTS]
    with forced_member(mod_model, member):
        batched = generate_responses(mod_model, tokenizer, prompts, dataset, 16)
        single = [generate_responses(mod_model, tokenizer, [p], dataset, 16)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1  # the prompts lead to different outputs


def test_beam_search_batched_equals_single(tokenizer, mod_model):
    prompts = [format_prompt(p) for p in PROMPTS[:3]]
    batched = generate_responses(mod_model, tokenizer, prompts, "gsm8k", 8, num_beams=3)
    single = [generate_responses(mod_model, tokenizer, [p], "gsm8k", 8, num_beams=3)[0] for p in prompts]
    assert batched == single


# ---------------------------------------------------------------------------- members
def test_members_differ_and_router_is_restored(tokenizer, mod_model):
    prompts = [format_prompt(PROMPTS[2])]
    outs = {}
    for member in (None, 0, 1, 2):
        with forced_member(mod_model, member):
            outs[member] = generate_responses(mod_model, tokenizer, prompts, "gsm8k", 12)[0]
    assert len(set(outs.values())) >= 3
    assert mod_model.router.fixed is None
    with pytest.raises(ValueError, match="member must be in 0..2"):
        with forced_member(mod_model, 3):
            pass
    with pytest.raises(ValueError, match="needs a MoD model"):
        with forced_member(tiny_llama(tokenizer), 0):
            pass


def test_forced_member_logits_are_its_own_norm_and_the_shared_head(tokenizer, mod_model):
    ids = tokenizer([format_prompt(PROMPTS[1])], return_tensors="pt")["input_ids"]
    base = mod_model.base_model
    states = {}
    hooks = [base.model.layers[i].register_forward_hook(
        lambda m, a, out, i=i: states.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i in mod_model.member_layers]
    try:
        with torch.no_grad():
            for i, layer in enumerate(mod_model.member_layers):
                with forced_member(mod_model, i):
                    got = mod_model(input_ids=ids).logits
                # F.linear, not base.lm_head(...): the head carries MoD's own pre-hook
                expected = torch.nn.functional.linear(mod_model.member_norms()[i](states[layer]), base.lm_head.weight)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        for hook in hooks:
            hook.remove()


def test_parse_members(mod_model, tokenizer):
    assert parse_members(None, None, mod_model) is None
    assert parse_members(1, None, mod_model) == [1]
    assert parse_members(None, "all", mod_model) == [0, 1, 2, None]
    assert parse_members(None, "member0,ensemble", mod_model) == [0, None]
    with pytest.raises(ValueError, match="needs a MoD model"):
        parse_members(None, "all", tiny_llama(tokenizer))
    with pytest.raises(ValueError, match="not both"):
        parse_members(0, "all", mod_model)
    with pytest.raises(ConfigError, match="not a member index"):
        parse_members(None, "0,first", mod_model)
