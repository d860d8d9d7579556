"""``modetune export``: a trained adapter as a Hugging Face model folder (LoRA merged, MoD beside it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..loading import ModelSource
from ..utils.config import Config
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class ExportCommand(Config):
    """Everything ``modetune export`` takes; every field is a flag."""

    what: ClassVar[str] = "export"
    source: ModelSource = field(default_factory=ModelSource, metadata={
        "help": "the MoD adapter to export (--adapter, required) and its base (--model; none: the one it records)"})
    output: str = field(default="", metadata={"help": "new folder to write", "required": True})
    merge: bool = field(default=True, metadata={
        "help": "merge LoRA into the base weights (--no-merge: keep it apart in OUTPUT/lora; loading then needs peft)"})
    final_member: bool = field(default=False, metadata={
        "help": "write the final member alone as a standard model folder (LoRA merged, no ensemble, no remote code: "
                "what llama.cpp, ONNX Runtime and other engines read); it loses what the ensemble adds"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing output folder, once the new one is complete (off: refuse it)"})


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter)
    add_config_flags(p, ExportCommand, yaml=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..export import FINAL_MEMBER_NOTE, export_adapter

    c = config_from_args(args, ExportCommand)
    output = export_adapter(c.source, c.output, merge=c.merge, final_member=c.final_member, overwrite=c.overwrite)
    if c.final_member:
        print(f"[modetune export] {output} is the final member alone. {FINAL_MEMBER_NOTE}", flush=True)
    print(f"Exported to {output}")
