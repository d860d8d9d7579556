"""Config values validated once, at the boundary: every config (:class:`modetune.utils.config.Config`)
coerces its fields with :func:`coerce_fields` and checks their declared ranges, whether the value
came from a flag, a YAML file or the Python API. :func:`check_device` and :func:`check_dtype` check
the two runtime choices that are not config fields, before any model is loaded.

Coercion is deliberately narrow: a number written as text (YAML reads ``3e-4`` as the string
``"3e-4"``) becomes the number; ``"true"``/``"false"`` become booleans; a comma-separated
string becomes a list. Anything else of the wrong type is refused with one line naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from .errors import ConfigError

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
DTYPES = ("float32", "float16", "bfloat16", "float64")


def _split_optional(hint) -> tuple[typing.Any, bool]:
    """``(base type, whether None is allowed)`` of a hint such as ``int | None``."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Any), type(None) in args
    return hint, False


def _number(value, kind: type, name: str):
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float or not value.strip().lstrip("+-").isdigit() \
                else int(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}.") from None
    if not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} must be a whole number, got {value!r}.")
        return int(value)
    return float(value)


def coerce_value(value, hint, name: str):
    """``value`` as the type ``hint`` names (see the module docstring), or :class:`ConfigError`."""
    base, optional = _split_optional(hint)
    if value is None:
        if optional or base is typing.Any:
            return None
        raise ConfigError(f"{name} must be set (it cannot be none).")
    origin = typing.get_origin(base)
    if origin is typing.Literal:
        if value not in typing.get_args(base):
            raise ConfigError(f"{name} must be one of {', '.join(map(str, typing.get_args(base)))}, got {value!r}.")
        return value
    if base is bool:
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if isinstance(value, bool):
            return value
        if text in TRUE or text in FALSE:
            return text in TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}.")
    if base in (int, float):
        return _number(value, base, name)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be text, got {value!r}.")
        return value
    if origin is list:
        item = (typing.get_args(base) or (str,))[0]
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}.")
        return [coerce_value(v, item, name) for v in value]
    if base is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}.")
        return value
    if isinstance(base, type) and dataclasses.is_dataclass(base) and isinstance(value, dict):
        return base(**value)
    return value


def coerce_fields(config) -> None:
    """Coerce every field of a dataclass instance to its type hint, in place (:func:`coerce_value`)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        setattr(config, f.name, coerce_value(getattr(config, f.name), hints[f.name], f.name))


def check_dtype(name: str) -> str:
    """A weights dtype name this project loads models in (``float32``, ``bfloat16``, ...)."""
    if name not in DTYPES:
        raise ConfigError(f"Unknown dtype {name!r}; choose one of {', '.join(DTYPES)}.")
    return name


def check_device(device: str | None) -> str | None:
    """A device this torch can use (``cpu``, ``cuda``, ``cuda:1``, ``mps``), or ``None``."""
    import torch

    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"Device {device!r}: this torch ({torch.__version__}) cannot use CUDA "
                              "(no CUDA build or no GPU visible).")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"Device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"Device {device!r}: this torch cannot use MPS.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"Unsupported device {device!r}; use cpu, cuda, cuda:N or mps.")
    return device


def _nested(cls) -> dict[str, tuple[type, set[str]]]:
    """The fields of a config class that hold another config dataclass: ``{name: (class, hidden names)}``
    (a nested config's fields listed under its metadata's ``"hide"`` are not set through the outer one)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], set(f.metadata.get("hide", ()))) for f in dataclasses.fields(cls)
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])}


def field_names(cls) -> set[str]:
    """Every name a flat mapping may set on a config class: its own fields and, recursively, those
    of the configs nested in it (``TrainConfig`` takes ``k`` for its ``mod: MoDConfig``)."""
    nested = _nested(cls)
    own = {f.name for f in dataclasses.fields(cls)} - set(nested)
    return own.union(*(field_names(inner) - hidden for inner, hidden in nested.values()))


def same_field(cls, name: str, **changes):
    """A dataclass field with the default and help of ``cls``'s field ``name`` (``changes``: metadata
    to change): one place for a default that several commands share."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    metadata = {**source.metadata, **changes}
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    return dataclasses.field(default=source.default, metadata=metadata)


def from_flat_dict(cls, data: dict, what: str = "config", ignored: tuple[str, ...] = ()):
    """``cls`` from a flat mapping (YAML, flags, a saved JSON file): each key goes to the config
    that owns it, nested configs included; a nested config may also be given whole (a mapping or an
    instance) under its own name. Unknown keys (other than ``ignored``) raise :class:`ConfigError`
    naming them: the one ``from_dict`` of every config class."""
    nested = _nested(cls)
    data = {key: value for key, value in data.items() if key not in ignored}
    unknown = sorted(set(data) - field_names(cls) - set(nested))
    if unknown:
        raise ConfigError(f"Unknown {what} field(s): {', '.join(unknown)}.")
    kwargs = {key: value for key, value in data.items() if key not in nested and key in
              {f.name for f in dataclasses.fields(cls)}}
    for name, (inner, hidden) in nested.items():
        given = data.get(name)
        if isinstance(given, inner):
            kwargs[name] = given
            continue
        if given is not None and not isinstance(given, dict):
            raise ConfigError(f"{name} must be a mapping of {inner.__name__} fields, got {given!r}.")
        part = {**(given or {}), **{key: value for key, value in data.items()
                                    if key in field_names(inner) - hidden}}
        kwargs[name] = from_flat_dict(inner, part, what)
    return cls(**kwargs)


def differing_settings(saved: dict, wanted: dict, defaults: dict | None = None, ignored=frozenset()) -> list[str]:
    """The settings (keys) whose values differ between a saved run and the one asked for, compared as
    JSON values; a key the saved run lacks (a setting newer than the run) counts as its default from
    ``defaults``. The one "same settings" check of resuming, study runs and evaluation folders."""
    import json

    normal = lambda mapping: json.loads(json.dumps(mapping))  # noqa: E731 (tuples -> lists, as saved)
    saved, wanted = normal(saved), normal(wanted)
    saved = {**{key: value for key, value in normal(defaults or {}).items() if key not in saved}, **saved}
    return sorted(key for key in set(saved) | set(wanted) if key not in ignored and saved.get(key) != wanted.get(key))
