"""`modetune params`: total and trainable parameters of a variant, from the model config alone."""

from __future__ import annotations

import torch

from ..mod.config import MoDConfig
from ..mod.model import parameter_counts
from ..mod.variants import build_variant, parse_preset
from ..utils.errors import ConfigError


def count_parameters(model: str, preset: str, k: int = 3, lora_r: int = 32, lora_targets: list[str] | None = None,
                     trust_remote_code: bool = False) -> dict:
    """Total and trainable parameters of a preset, from the model config alone (meta device).

    ``delta_pct`` is the trainable delta in % relative to ``lora_notk`` with the same LoRA
    settings. ``model`` may be a folder holding only ``config.json``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..utils.models import check_remote_code, model_error, resolve_model

    MoDConfig(k=k)  # bad k fails before any download or remote code
    if lora_r < 1:
        raise ConfigError(f"lora_r must be >= 1, got {lora_r}.")
    parse_preset(preset)
    path = resolve_model(model)
    check_remote_code(model, path, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise model_error(model, error) from error

    def counts(name: str) -> tuple[int, int]:
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        variant = build_variant(base, name, MoDConfig(k=k), lora_r=lora_r, lora_alpha=2 * lora_r,
                                lora_dropout=0.0, lora_targets=lora_targets)
        return parameter_counts(variant)

    trainable, total = counts(preset)
    reference, _ = counts("lora_notk")
    delta = 100.0 * (trainable - reference) / reference if reference else float("nan")
    return {"model": model, "preset": preset, "k": k, "lora_r": lora_r, "total": total, "trainable": trainable,
            "lora_notk_trainable": reference, "delta_pct": delta}


def format_parameter_table(result: dict) -> str:
    return (f"preset {result['preset']} on {result['model']} (k={result['k']}, LoRA r={result['lora_r']})\n"
            f"  total parameters      {result['total']:>15,}\n"
            f"  trainable parameters  {result['trainable']:>15,}\n"
            f"  vs lora_notk          {result['delta_pct']:>+14.2f}%  ({result['lora_notk_trainable']:,} trainable)")
