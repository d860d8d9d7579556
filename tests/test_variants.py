"""The paper's variants as presets (modetune.mod.variants): where LoRA goes, whether MoD is on."""

from __future__ import annotations

import pytest

from modetune import MoDConfig, MoDModel
from modetune.mod.variants import PRESETS, build_variant, default_lora_targets, parse_preset
from modetune.utils.errors import ConfigError
from tiny import tiny_model


def test_parse_preset_table_and_lora_layer_j():
    assert [parse_preset(p).mod for p in PRESETS[:-1]] == [False, False, True, True, True]
    assert [parse_preset(p).lora_layers for p in PRESETS[:-1]] == ["notk", "all", "all", "notk", "none"]
    variant = parse_preset("lora_layer_2")
    assert (variant.lora_layers, variant.mod, variant.loss_layer) == ("all", True, 2)
    with pytest.raises(ConfigError, match="Unknown preset"):
        parse_preset("lora_everything")


def _lora_layers(model) -> set[int]:
    return {int(name.split(".layers.")[1].split(".")[0]) for name, p in model.named_parameters()
            if "lora_" in name and p.requires_grad}


@pytest.mark.parametrize("preset, lora_layers, mod", [
    ("lora_notk", {0, 1}, False), ("lora_all", {0, 1, 2, 3, 4}, False), ("lora_notk_mod", {0, 1}, True),
    ("lora_all_mod", {0, 1, 2, 3, 4}, True), ("mod_only", set(), True),
])
def test_build_variant_places_lora_and_mod(preset, lora_layers, mod):
    model = build_variant(tiny_model("llama"), preset, MoDConfig(k=3), lora_r=2, lora_alpha=4, lora_dropout=0.0)
    assert isinstance(model, MoDModel) == mod
    assert _lora_layers(model) == lora_layers
    if preset == "mod_only":
        trainable = {".".join(name.split(".")[:2]) for name, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"ensemble.norms", "ensemble.router"}


def test_lora_layer_j_is_a_logit_lens_without_distillation():
    model = build_variant(tiny_model("llama"), "lora_layer_1", MoDConfig(k=3, distill_lambda=2.0, top_k=2))
    config = model.mod_config
    assert (config.k, config.loss_layer, config.member_norms) == (2, 1, False)
    assert (config.distill_lambda, config.top_k) == (0.0, None)
    assert model.router.fixed == 0


def test_bad_variant_input_is_a_config_error():
    with pytest.raises(ConfigError, match="smaller than the model's number of layers"):
        build_variant(tiny_model("llama"), "lora_notk", MoDConfig(k=5))
    assert default_lora_targets(tiny_model("llama")) == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    gpt2 = tiny_model("gpt2")
    gpt2.config.model_type = "unknown"
    with pytest.raises(ConfigError, match="No default LoRA targets"):
        default_lora_targets(gpt2)
