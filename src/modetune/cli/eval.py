"""``modetune eval``: generate answers for the paper's test sets and score them (LLM-Adapters protocol)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..eval.runner import EvalConfig
from ..loading import ModelSource
from ..utils.config import Config
from ..utils.errors import ConfigError
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class EvalCommand(Config):
    """Everything ``modetune eval`` takes; every field is a flag."""

    what: ClassVar[str] = "eval"
    source: ModelSource = field(default_factory=ModelSource, metadata={"help": "the model and adapter"})
    datasets: str = field(default="all", metadata={
        "help": "comma-separated names (gsm8k,SVAMP,boolq,...), 'all', 'arithmetic', 'commonsense', or "
                "name=path/to/test.json"})
    data_dir: str | None = field(default=None, metadata={
        "help": "where test sets come from: a folder holding <Name>/test.json (LLM-Adapters layout), "
                "packaged:math-split (the clean split's test halves), packaged:llm-adapters, or hub (none: the "
                "packaged LLM-Adapters sets)"})
    output: str | None = field(default=None, metadata={
        "help": "run folder; never inside an input (none: RUN/eval-<decoding> beside RUN/adapter, else "
                "ADAPTER-eval-<decoding> beside the adapter; eval/<model>-<decoding> for the base model alone)"})
    label: str | None = field(default=None, metadata={
        "help": "name of this run in tables (none: the adapter or model folder name)"})
    member: int | None = field(default=None, metadata={"range_note": "-k to k-1, the model\'s members",
        "help": "evaluate ensemble member i alone (0 = shallowest, k-1 = final; -1 = final; none: the model as loaded)"})
    members: str | None = field(default=None, metadata={
        "help": "'all' (every member and the ensemble) or a list like 0,2,ensemble (none: the model as loaded)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing output folder whole (off: refuse one that holds anything but a run of the "
                "same settings, which resumes); an input is never replaced"})
    options: EvalConfig = field(default_factory=EvalConfig, metadata={
        "help": "generation and scoring options", "hide": ("members",)})

    def validate(self) -> None:
        if self.member is not None and self.members is not None:
            raise ConfigError("Give --member or --members, not both.")


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter,
                       description="Generate answers for LLM-Adapters test sets and score them with the reference "
                       "protocol (see modetune.eval.protocol). Writes <dataset>[.member<i>].jsonl, run.json, "
                       "summary.md/json into the output folder; an interrupted run resumes there.")
    add_config_flags(p, EvalCommand, yaml=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..eval.runner import evaluate_model

    c = config_from_args(args, EvalCommand)
    summary = evaluate_model(c.source, c.datasets, c.options, c.output, data_dir=c.data_dir, label=c.label,
                             member=c.member, members=c.members, overwrite=c.overwrite)
    print(summary["markdown"])
    print(f"\nResults in {summary['run_dir']}")
