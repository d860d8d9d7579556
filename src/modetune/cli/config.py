"""``modetune config``: the configs installed with modetune (list them, print one)."""

from __future__ import annotations

from .flags import HelpFormatter


def add(sub, name: str, help: str) -> None:  # noqa: A002
    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every shipped config: name, purpose, file").set_defaults(func=run_list)
    show = actions.add_parser("show", help="print a shipped config (to copy and edit, or pass by name to --config)")
    show.add_argument("name", help="a name from `modetune config list`")
    show.set_defaults(func=run_show)


def run_list(args) -> None:
    from ..utils.shipped import describe, shipped_configs

    configs = shipped_configs()
    width = max(map(len, configs))
    for name, path in configs.items():
        print(f"{name:<{width}}  {describe(path)}  ({path})")


def run_show(args) -> None:
    from ..utils.shipped import config_file

    print(config_file(args.name).read_text(encoding="utf-8"), end="")
