"""``modetune data``: list the packaged datasets; rebuild the clean arithmetic split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..utils.config import Config, setting
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class SplitCommand(Config):
    """What ``modetune data split-arithmetic`` takes."""

    what: ClassVar[str] = "split-arithmetic"
    source: str = setting("", "LLM-Adapters' dataset folder: math_data.json and <Name>/test.json", required=True)
    output: str = setting("", "folder to write the split into", required=True)
    overwrite: bool = setting(False, "replace an existing output folder, once the new one is complete (off: refuse it)")


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the packaged data files with their record counts",
                       formatter_class=HelpFormatter).set_defaults(func=run_list)
    split = actions.add_parser("split-arithmetic", formatter_class=HelpFormatter,
                               help="rebuild the clean arithmetic split from LLM-Adapters' files",
                               description="Write OUTPUT/train.json and OUTPUT/<Name>/test.json for the seven "
                               "arithmetic sets by the rule of modetune.data.split; from LLM-Adapters' own "
                               "files this reproduces the packaged math-split byte for byte.")
    add_config_flags(split, SplitCommand, yaml=False)
    split.set_defaults(func=run_split)


def run_list(args) -> None:
    from ..data.packaged import format_listing

    print(format_listing())


def run_split(args) -> None:
    from ..data.split import format_counts, split_arithmetic_source

    command = config_from_args(args, SplitCommand)
    print(format_counts(split_arithmetic_source(command.source, command.output, command.overwrite), command.output))
