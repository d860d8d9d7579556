"""``modetune experiment``: one of the paper's studies (or a tuned comparison) end to end, resumable."""

from __future__ import annotations

from .flags import HelpFormatter, add_config_flags, config_from_args


def add(sub, name: str, help: str) -> None:  # noqa: A002
    from ..studies.plan import STUDIES, ExperimentConfig

    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter,
                       description="Studies: " + ", ".join(STUDIES) + ". Every run trains, validates and "
                       "evaluates; finished parts are skipped on a rerun.")
    p.add_argument("study", choices=STUDIES, help="the study to run")
    add_config_flags(p, ExperimentConfig)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..studies.plan import ExperimentConfig, smoke_settings
    from ..studies.run import run_study

    config = config_from_args(args, ExperimentConfig)
    if config.smoke:  # the tiny setting beneath the fields the user set
        config = config_from_args(args, ExperimentConfig, base=smoke_settings(args.study))
    run_study(args.study, config)
