"""``modetune lm-eval``: evaluate through EleutherAI lm-evaluation-harness."""

from __future__ import annotations

from .flags import HelpFormatter, add_config_flags, config_from_args


def add(sub, name: str, help: str) -> None:  # noqa: A002
    from ..eval.lm_eval import LmEvalConfig

    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter,
                       description="Tasks: modetune_<dataset>_gen (generation, our protocol), modetune_<dataset>_mc "
                       "(log-likelihood over the answer keywords), or any lm-eval task name.")
    add_config_flags(p, LmEvalConfig, yaml=False)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..eval.lm_eval import LmEvalConfig, lm_eval_source

    print(lm_eval_source(config_from_args(args, LmEvalConfig))["table"])
