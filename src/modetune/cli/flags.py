"""The generic layer between config dataclasses and the command line: one flag per field, YAML files.

A config is a dataclass whose fields carry their help text, ``field(default=..., metadata={"help": ...})``.
Every field becomes a ``--field-name`` flag whose ``--help`` line shows the type (or the choices),
the sentence and the default. A field holding another config dataclass is flattened: its fields
become flags too (``TrainConfig.mod`` gives ``--k``, ``--distill-lambda``, ...), except the names its
metadata lists under ``"hide"``. A field whose metadata has ``"const"`` takes an optional value: the flag
alone means that value (``--resume`` alone: ``"latest"``). Fields of type ``dict`` are YAML-only. Flags left
out stay unset, so ``config_from_args`` applies YAML first, then exactly the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from ..utils.config import range_text
from ..utils.errors import ConfigError, first_line
from ..utils.shipped import config_file

TYPE_NAMES = {int: "INT", float: "FLOAT", str: "TEXT"}


@dataclass(frozen=True)
class ConfigFlag:
    """One settable field of a config: its name, type hint, default and help sentence, and whether
    the command requires it (metadata ``"required"``)."""

    name: str
    hint: typing.Any
    default: typing.Any
    help: str
    required: bool = False
    range: str = ""  # the declared range (utils.config.range_text), shown by --help
    const: typing.Any = None  # metadata "const": the flag may be given alone, meaning this value (nargs="?")


def config_flags(config) -> list[ConfigFlag]:
    """The settable fields of a config class or instance (nested configs flattened; defaults from the
    instance, else from the class: a class with required fields is never built just to read them)."""
    cls = config if isinstance(config, type) else type(config)
    hints = typing.get_type_hints(cls)
    flags = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if not isinstance(config, type):
            value = getattr(config, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(value) or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            hidden = set(f.metadata.get("hide", ()))
            flags += [flag for flag in config_flags(value if value is not None else hint) if flag.name not in hidden]
        elif hint is not dict and typing.get_origin(hint) is not dict:
            flags.append(ConfigFlag(f.name, hint, value, f.metadata.get("help", ""), f.metadata.get("required", False),
                                    range_text(f.metadata), f.metadata.get("const")))
    return flags


def _split_optional(hint) -> tuple[typing.Any, bool]:
    """``(base type, whether None is allowed)`` of a type hint such as ``int | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint
    return base, optional


def _parser_for(hint):
    """An argparse ``type`` for a field's type hint (``None``/``none`` allowed for optionals)."""
    base, optional = _split_optional(hint)
    if typing.get_origin(base) is list:
        item_type = (typing.get_args(base) or (str,))[0]
        convert = lambda text: [item_type(item) for item in text.split(",") if item]
    elif typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)

        def convert(text: str) -> str:
            if text not in choices:
                raise argparse.ArgumentTypeError(f"choose one of {', '.join(map(str, choices))} (got {text!r})")
            return text
    elif base is bool:
        convert = lambda text: text.lower() in ("1", "true", "yes", "on")
    else:
        convert = base

    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        return convert(text)

    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def _metavar(hint) -> str:
    """The type (or the choices) of a field as ``--help`` shows it: ``INT``, ``{final,entry}``, ``INT,...``."""
    base, optional = _split_optional(hint)
    if typing.get_origin(base) is list:
        item = (typing.get_args(base) or (str,))[0]
        shown = f"{TYPE_NAMES.get(item, 'TEXT')},..."
    elif typing.get_origin(base) is typing.Literal:
        shown = "{" + ",".join(map(str, typing.get_args(base))) + "}"
    else:
        shown = TYPE_NAMES.get(base, getattr(base, "__name__", "VALUE").upper())
    return shown + ("|none" if optional else "")


def _shown(default) -> str:
    if default is None:
        return "none"
    return ",".join(map(str, default)) if isinstance(default, list) else str(default)


def add_config_flags(parser: argparse.ArgumentParser, config, yaml: bool = True) -> None:
    """One ``--field-name`` flag per settable field of ``config`` (a config class or an instance,
    whose values are then the defaults shown); unset flags stay unset. ``yaml``: the command also
    takes ``--config FILE`` (added here), whose values the flags override."""
    name = config.__name__ if isinstance(config, type) else type(config).__name__
    if yaml:
        parser.add_argument("--config", help=f"YAML file of {name} fields, or a shipped config's name "
                            "(`modetune config list`); flags override it")
    group = parser.add_argument_group("config fields (override the YAML file)" if yaml else "options")
    for flag in config_flags(config):
        option = "--" + flag.name.replace("_", "-")
        shown = "required" if flag.required else f"default: {_shown(flag.default)}"
        text = f"{flag.help} ({shown}{'; range: ' + flag.range if flag.range else ''})".replace("%", "%%")
        if flag.hint is bool:
            group.add_argument(option, dest=flag.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            alone = {} if flag.const is None else {"nargs": "?", "const": flag.const}  # `--flag` alone: the const
            group.add_argument(option, dest=flag.name, type=_parser_for(flag.hint), default=argparse.SUPPRESS,
                               metavar=_metavar(flag.hint), help=text, required=flag.required, **alone)


def load_yaml_config(path: str | Path) -> dict:
    import yaml

    from ..utils.integrity import read_text

    path = config_file(path)
    try:
        data = yaml.safe_load(read_text(path, "config")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Malformed YAML in {path}: {first_line(error)}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields.")
    return data


def config_from_args(args: argparse.Namespace, cls, base: dict | None = None):
    """``base`` (settings beneath the user's), then YAML (``--config``), then every config flag given
    on the command line: a ``cls``."""
    yaml = load_yaml_config(args.config) if getattr(args, "config", None) else {}
    names = {flag.name for flag in config_flags(cls)}
    flags = {key: value for key, value in vars(args).items() if key in names}
    from_yaml = [key for key in yaml if key not in flags]
    data = {**(base or {}), **yaml, **flags}
    try:
        return cls.from_dict(data)
    except ConfigError as error:  # a value the YAML file gave: the error names the file
        if any(re.search(rf"\b{re.escape(str(key))}\b", str(error)) for key in from_yaml):
            raise ConfigError(f"{config_file(args.config)}: {error}") from None
        raise


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's type as its metavar and its default after the help sentence.

    Config flags write their default themselves; so do on/off switches (``store_true``), whose
    help says what the switch changes.
    """

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        return TYPE_NAMES.get(action.type, "TEXT")

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default:" in text or not action.option_strings or action.default is argparse.SUPPRESS
                or action.nargs == 0):
            return text
        return f"{text} (default: {_shown(action.default).replace('%', '%%')})"
