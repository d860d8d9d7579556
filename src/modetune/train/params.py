"""`modetune params`: total and trainable parameters of a variant, from the model config alone."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..mod.config import MoDConfig
from ..mod.model import parameter_counts
from ..mod.variants import build_variant, parse_preset
from ..utils.checks import coerce_fields, from_flat_dict, same_field
from ..utils.errors import ConfigError
from .config import TrainConfig


@dataclass
class ParamsCommand:
    """Everything ``modetune params`` takes (defaults and help from TrainConfig / MoDConfig)."""

    model: str = same_field(TrainConfig, "model", help="base model: 'default', a local folder (config.json alone "
                            "is enough) or a hub name")
    preset: str = same_field(TrainConfig, "preset")
    k: int = same_field(MoDConfig, "k")
    lora_r: int = same_field(TrainConfig, "lora_r")
    lora_targets: list[str] | None = same_field(TrainConfig, "lora_targets")
    trust_remote_code: bool = same_field(TrainConfig, "trust_remote_code")
    json: bool = field(default=False, metadata={"help": "print a JSON object (off: a table)"})

    def __post_init__(self) -> None:
        coerce_fields(self)

    @classmethod
    def from_dict(cls, data: dict) -> ParamsCommand:
        return from_flat_dict(cls, data, "params")


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
