"""``modetune fit-router``: fit only the router and member norms on frozen members."""

from __future__ import annotations

from .flags import HelpFormatter, add_config_flags, config_from_args


def add(sub, name: str, help: str) -> None:  # noqa: A002
    from ..train.fit_router import FitRouterConfig

    p = sub.add_parser(name, help=help, formatter_class=HelpFormatter,
                       description="Fit a MoD router and member norms for a base model or an existing adapter, "
                       "every other weight frozen; writes a MoD adapter and fit_router.json.")
    add_config_flags(p, FitRouterConfig)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..train.fit_router import FitRouterConfig, fit_router, format_fit

    _, result = fit_router(config_from_args(args, FitRouterConfig))
    print(format_fit(result))
