"""The paper's variants (docs/method.md) as presets: which layers get LoRA, and whether MoD is on.

| preset          | LoRA on          | MoD                                              |
|-----------------|------------------|--------------------------------------------------|
| `lora_notk`     | layers 0..N-k-1  | no                                               |
| `lora_all`      | all layers       | no                                               |
| `lora_all_mod`  | all layers       | yes                                              |
| `lora_notk_mod` | layers 0..N-k-1  | yes                                              |
| `mod_only`      | none             | yes                                              |
| `lora_layer_j`  | all layers       | task loss on layer N-j's logit lens (j = 0, 1, 2, ...) |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..utils.errors import ConfigError
from .config import MoDConfig
from .model import get_mod_model
from .surgery import check_members, find_parts

PRESETS = ("lora_notk", "lora_all", "lora_all_mod", "lora_notk_mod", "mod_only", "lora_layer_j")

# q, k, v, up, down projections (the paper's targets), by architecture
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_fc", "mlp.c_proj"],
    "gpt_neox": ["query_key_value", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense_h_to_4h", "dense_4h_to_h"],
    "phi3": ["qkv_proj", "down_proj", "gate_up_proj"],
}
LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Variant:
    name: str
    lora_layers: str  # "none", "notk", "all"
    mod: bool
    loss_layer: int | None = None


def parse_preset(name: str) -> Variant:
    """``"lora_layer_2"`` -> LoRA on all layers, loss on layer N-2; the others from the table."""
    match = re.fullmatch(r"lora_layer_(\d+)", name)
    if match:
        return Variant(name, "all", True, int(match.group(1)))
    table = {
        "lora_notk": Variant(name, "notk", False),
        "lora_all": Variant(name, "all", False),
        "lora_all_mod": Variant(name, "all", True),
        "lora_notk_mod": Variant(name, "notk", True),
        "mod_only": Variant(name, "none", True),
    }
    if name not in table:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)} (lora_layer_j with j = 0, 1, ...).")
    return table[name]


def default_lora_targets(model: nn.Module) -> list[str]:
    """The paper's q, k, v, up, down projections under this architecture's module names."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if set(LLAMA_STYLE) <= names:
        return LLAMA_STYLE
    raise ConfigError(f"No default LoRA targets for model type {model_type!r}; pass lora_targets explicitly.")


def build_variant(model: nn.Module, preset: str, mod_config: MoDConfig | None = None, lora_r: int = 32,
                  lora_alpha: int = 64, lora_dropout: float = 0.05, lora_targets: list[str] | None = None,
                  use_dora: bool = False) -> nn.Module:
    """Apply a preset to a transformers causal LM: peft LoRA on the preset's layers, then MoD.

    ``k`` (from ``mod_config``) fixes which layers are "the last k" even for variants
    without MoD, so that ``lora_notk`` and ``lora_notk_mod`` tune the same layers.
    For ``lora_layer_j``: ``k = j + 1``, all router weight on layer N-j, that layer read
    through the frozen final norm (a logit lens), no distillation.
    """
    variant = parse_preset(preset)
    mod_config = mod_config or MoDConfig()
    if variant.loss_layer is not None:
        j = variant.loss_layer
        mod_config = MoDConfig(**{**mod_config.to_dict(), "k": j + 1, "loss_layer": j, "member_norms": False,
                                  "distill_lambda": 0.0, "top_k": None})
    n = find_parts(model).num_layers
    check_members(mod_config.k, n)
    if variant.lora_layers != "none":
        from peft import LoraConfig, get_peft_model

        layers = list(range(n - mod_config.k)) if variant.lora_layers == "notk" else list(range(n))
        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_dora=use_dora,
                          target_modules=lora_targets or default_lora_targets(model), layers_to_transform=layers,
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    else:
        for param in model.parameters():
            param.requires_grad_(False)
    return get_mod_model(model, mod_config) if variant.mod else model
