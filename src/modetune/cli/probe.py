"""``modetune probe``: a late-layer ensemble's headroom on labelled tokens, before spending a GPU."""

from __future__ import annotations

from .flags import HelpFormatter, add_config_flags, config_from_args


def add(sub, name: str, help: str) -> None:  # noqa: A002
    from ..eval.probe import ProbeConfig

    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter,
                       description="Teacher-forced cross-entropy of each member, the model's own ensemble, the "
                       "per-token oracles (upper bounds), the best global mix and a router fitted on half of the "
                       "records; writes probe.json, probe.md and probe.png.")
    add_config_flags(p, ProbeConfig)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..eval.probe import ProbeConfig, probe_markdown, run_probe

    result = run_probe(config_from_args(args, ProbeConfig))
    print(probe_markdown(result))
    print(f"\nWrote probe.json, probe.md and probe.png to {result['config']['output']} in {result['seconds']:.0f} s")
