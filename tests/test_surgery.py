"""Finding the parts MoD needs (modetune.mod.surgery) in Hugging Face causal LMs of several architectures."""

from __future__ import annotations

import pytest
from torch import nn

from modetune import MoDConfig, get_mod_model
from modetune.mod.surgery import find_parts, unwrap
from modetune.utils.errors import ConfigError, UnsupportedModelError, UserError
from tiny import ARCHS, lora, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_surgery_finds_parts(arch):
    base = tiny_model(arch)
    parts = find_parts(base)
    assert parts.num_layers == 5 and len(parts.layers) == 5
    assert parts.head is base.get_output_embeddings()
    assert parts.final_norm not in list(parts.layers.modules())


@pytest.mark.parametrize("arch", [*ARCHS, "gemma2"])
def test_surgery_reads_size_and_soft_capping(arch):
    parts = find_parts(tiny_model(arch))
    assert parts.hidden_size == 32
    assert parts.softcap == (3.0 if arch == "gemma2" else None)
    assert isinstance(parts.head, nn.Linear) and parts.head.in_features == 32


def test_surgery_sees_through_peft():
    base = tiny_model("llama")
    peft_model = lora(base)
    assert unwrap(peft_model) is base and unwrap(base) is base
    parts = find_parts(peft_model)
    assert parts.head is base.get_output_embeddings() and parts.final_norm is base.model.norm


def test_surgery_names_missing_part():
    with pytest.raises(UnsupportedModelError, match="no `config`"):
        find_parts(nn.Linear(2, 2))
    base = tiny_model("llama")
    del base.model.norm  # a decoder without a final norm
    with pytest.raises(UnsupportedModelError, match="final norm"):
        find_parts(base)


def test_surgery_names_other_unsupported_parts():
    base = tiny_model("llama")
    base.lm_head = nn.Identity()
    with pytest.raises(UnsupportedModelError, match="no linear LM head"):
        find_parts(base)
    base = tiny_model("llama")
    base.config.logit_scale = 2.0
    with pytest.raises(UnsupportedModelError, match="rescales its logits"):
        find_parts(base)
    base = tiny_model("llama")
    base.config.num_hidden_layers = 4  # no module list of that length
    with pytest.raises(UnsupportedModelError, match="decoder layers cannot be identified"):
        find_parts(base)
    assert issubclass(UnsupportedModelError, UserError)


def test_k_must_be_below_layers():
    with pytest.raises(ValueError, match="smaller than the model's number of layers"):
        get_mod_model(tiny_model("llama"), MoDConfig(k=5))
    with pytest.raises(ConfigError):  # bad input: the command line reports it in one line
        get_mod_model(tiny_model("llama"), MoDConfig(k=5))
    with pytest.raises(ValueError, match="top_k"):
        MoDConfig(k=3, top_k=4)
    assert get_mod_model(tiny_model("llama"), MoDConfig(k=4)).member_layers == [1, 2, 3, 4]
