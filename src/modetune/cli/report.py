"""``modetune report``: the paper-shaped accuracy table of eval run folders, side by side."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from ..utils.config import Config, setting
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class ReportCommand(Config):
    """Everything ``modetune report`` takes besides its run folders; every field is a flag."""

    what: ClassVar[str] = "report"
    output: str | None = setting(None, "write OUTPUT.md and OUTPUT.json (a path without extension; none: print only)")
    json: bool = setting(False, "print JSON instead of markdown (off: markdown)")
    overwrite: bool = setting(False, "replace existing OUTPUT.md/.json (off: refuse)")


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by 'modetune eval'")
    add_config_flags(p, ReportCommand, yaml=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..eval.results import report, write_accuracy_report

    command = config_from_args(args, ReportCommand)
    table = report(args.runs)
    if command.output:
        write_accuracy_report(table, command.output, inputs=args.runs, overwrite=command.overwrite)
    print(json.dumps({k: v for k, v in table.items() if k != "markdown"}, indent=2) if command.json
          else table["markdown"])
