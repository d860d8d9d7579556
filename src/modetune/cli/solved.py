"""``modetune solved``: the items each run solved, their intersections, and a Venn diagram."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..utils.config import Config, setting
from .flags import HelpFormatter, add_config_flags, config_from_args


@dataclass
class SolvedCommand(Config):
    """Everything ``modetune solved`` takes besides its results; every field is a flag."""

    what: ClassVar[str] = "solved"
    dataset: str | None = setting(None, "dataset to compare when RESULT are run folders")
    variant: str | None = setting(None, "with run folders: 'ensemble' or member<i> (none: ensemble)")
    labels: list[str] | None = setting(None, "comma-separated names of the runs, in order (none: from the paths)")
    output: str = setting(".", "folder for solved-<dataset>.png/.md/.json")
    overwrite: bool = setting(False, "replace existing solved-<dataset> files (off: refuse)")


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULT",
                   help="results files (<dataset>[.member<i>].jsonl) or eval run folders (with --dataset)")
    add_config_flags(p, SolvedCommand, yaml=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..eval.results import solved

    command = config_from_args(args, SolvedCommand)
    result = solved(args.results, labels=command.labels, dataset=command.dataset, variant=command.variant,
                    output_dir=command.output, overwrite=command.overwrite)
    print(result["markdown"])
    print("\nWrote " + ", ".join(result["files"].values()))
