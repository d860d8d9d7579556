"""``modetune generate``: completions of prompts by a trained adapter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from ..eval.generate import DecodeConfig
from ..loading import ModelSource
from ..utils.config import Config, setting
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class GenerateCommand(Config):
    """Everything ``modetune generate`` takes besides its prompts; every field is a flag."""

    what: ClassVar[str] = "generate"
    source: ModelSource = setting(help="the model and adapter", factory=ModelSource)
    prompts_file: str | None = setting(None, "a file with one prompt per line ('-': stdin)")
    jsonl: bool = setting(False, "print one JSON object per prompt (off: plain text)")
    decode: DecodeConfig = setting(help="decoding options", factory=DecodeConfig)


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter,
                       description="Prompts come from the arguments, else --prompts-file (one per line), else stdin.")
    p.add_argument("prompts", nargs="*", help="prompts (none: read them from --prompts-file or stdin)")
    add_config_flags(p, GenerateCommand, yaml=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..eval.generate import complete, load_for_generation, read_prompts, resolve_style

    command = config_from_args(args, GenerateCommand)
    source, config = command.source, command.decode
    prompts = read_prompts(args.prompts, command.prompts_file)
    model, tokenizer, _ = load_for_generation(source)
    style = resolve_style(config.prompt_style, tokenizer, source.adapter)
    for prompt, completion in zip(prompts, complete(model, tokenizer, prompts, config, style)):
        print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) if command.jsonl
              else completion + ("\n" if len(prompts) > 1 else ""))
