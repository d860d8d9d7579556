"""``modetune params``: total and trainable parameters of a variant, from a model config alone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from ..mod.config import MoDConfig
from ..train.config import TrainConfig
from ..utils.checks import same_field
from ..utils.config import Config, setting
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class ParamsCommand(Config):
    """Everything ``modetune params`` takes (defaults as ``TrainConfig`` / ``MoDConfig`` have them)."""

    what: ClassVar[str] = "params"
    model: str = same_field(TrainConfig, "model", help="base model: 'default', a local folder (config.json alone "
                            "is enough) or a hub name")
    preset: str = same_field(TrainConfig, "preset")
    k: int = same_field(MoDConfig, "k")
    lora_r: int = same_field(TrainConfig, "lora_r")
    lora_targets: list[str] | None = same_field(TrainConfig, "lora_targets")
    trust_remote_code: bool = same_field(TrainConfig, "trust_remote_code")
    json: bool = setting(False, "print a JSON object (off: a table)")


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter)
    add_config_flags(p, ParamsCommand, yaml=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..train.params import count_parameters, format_parameter_table

    command = config_from_args(args, ParamsCommand)
    result = count_parameters(command.model, command.preset, k=command.k, lora_r=command.lora_r,
                              lora_targets=command.lora_targets, trust_remote_code=command.trust_remote_code)
    print(json.dumps(result, indent=2) if command.json else format_parameter_table(result))
