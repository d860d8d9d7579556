"""``modetune chat``: talk to a trained adapter, tokens streamed."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from ..eval.generate import DecodeConfig
from ..loading import ModelSource
from ..utils.config import Config, setting
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class ChatCommand(Config):
    """Everything ``modetune chat`` takes; every field is a flag."""

    what: ClassVar[str] = "chat"
    source: ModelSource = setting(help="the model and adapter", factory=ModelSource)
    decode: DecodeConfig = setting(help="decoding options", factory=DecodeConfig)


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter,
                       description="One user turn per line of input; the conversation is kept in the chat template.")
    add_config_flags(p, ChatCommand, yaml=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..eval.generate import chat_loop, load_for_generation

    command = config_from_args(args, ChatCommand)
    model, tokenizer, _ = load_for_generation(command.source)
    chat_loop(model, tokenizer, command.decode, interactive=sys.stdin.isatty())
