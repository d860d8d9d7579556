"""``modetune train``: train a MoD / LoRA variant (the main job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..train.config import TrainConfig
from ..utils.config import Config
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class TrainCommand(Config):
    """Everything ``modetune train`` takes: the run's :class:`TrainConfig` (its fields are flags and
    YAML keys at the top level) and how to treat a folder that already holds a run."""

    what: ClassVar[str] = "config"
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "the training run"})
    resume: str | None = field(default=None, metadata={"const": "latest",
        "help": "continue the run in output_dir: --resume alone (or 'latest') from its newest complete checkpoint, "
                "--resume PATH from that checkpoint folder of the run (checkpoint-N, or its path), newer checkpoints "
                "then removed; either is checked for damage and for the same settings (none: start afresh)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over in an output_dir that holds a run, removing it first, checkpoints included (off: such a "
                "folder is refused)"})

    def __post_init__(self) -> None:
        if isinstance(self.resume, bool):  # a YAML `resume: true` (the switch it was): the newest checkpoint
            self.resume = "latest" if self.resume else None
        super().__post_init__()


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter,
                       description="Train a variant. Defaults: the shipped config `default` "
                       "(`modetune config show default`); every field is a flag.")
    add_config_flags(p, TrainCommand)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..train.trainer import train

    command = config_from_args(args, TrainCommand)
    train(command.train, resume=command.resume, overwrite=command.overwrite)
