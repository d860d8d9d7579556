"""The one base of every config dataclass: types coerced, declared ranges checked, one ``from_dict``.

A config is a dataclass deriving from :class:`Config` whose fields carry their help text and, for
numbers, their range in the field's metadata (:func:`setting` writes both; a range only the loaded model
can decide is a ``range_note``, checked there)::

    steps: int = setting(100, "Adam steps", min=1)
    learning_rate: float = setting(1e-3, "Adam learning rate", gt=0)

Building one (from flags, a YAML file, a saved JSON file or Python) coerces every field to its type
hint, then checks every declared range (``min``/``max`` inclusive, ``gt``/``lt`` exclusive; each item
of a list; ``None`` passes) and ``distinct`` (a list whose values may not repeat), then runs the
class's own :meth:`Config.validate` for checks across fields. Every failure is one
:class:`~modetune.utils.errors.ConfigError` line naming the field.
``--help`` shows each range (:func:`range_text`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .checks import coerce_fields, from_flat_dict
from .errors import ConfigError

BOUNDS = ("min", "gt", "max", "lt")
SEED_MAX = 2**32 - 1  # numpy's and torch's seed range


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, **metadata) -> Any:  # noqa: A002
    """A config field with its help sentence and metadata (``min``, ``max``, ``gt``, ``lt``,
    ``distinct``, ``required``, ``hide``, ...); ``factory`` for a mutable default."""
    unknown = set(metadata) - {*BOUNDS, "distinct", "required", "hide", "range_note"}
    if unknown:
        raise TypeError(f"Unknown field metadata {sorted(unknown)}.")
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def seed_field(default: int, help: str) -> Any:  # noqa: A002
    return setting(default, help, min=0, max=SEED_MAX)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def range_text(metadata) -> str:
    """The declared range as ``--help`` shows it: ``>= 1``, ``> 0 and <= 1``, ... (empty: none); a
    range that depends on the model (a member index: -k to k-1) is declared as ``range_note`` text
    and checked where the model is known."""
    if "range_note" in metadata:
        return metadata["range_note"]
    low = (f">= {_number(metadata['min'])}" if "min" in metadata else
           f"> {_number(metadata['gt'])}" if "gt" in metadata else "")
    high = (f"<= {_number(metadata['max'])}" if "max" in metadata else
            f"< {_number(metadata['lt'])}" if "lt" in metadata else "")
    return " and ".join(part for part in (low, high) if part)


def _outside(value, metadata) -> bool:
    return (("min" in metadata and value < metadata["min"]) or ("gt" in metadata and value <= metadata["gt"])
            or ("max" in metadata and value > metadata["max"]) or ("lt" in metadata and value >= metadata["lt"]))


def check_ranges(config) -> None:
    """Every field's declared range and ``distinct`` (see the module docstring), or one
    :class:`ConfigError` line."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("distinct") and value is not None and len(set(value)) != len(value):
            raise ConfigError(f"{f.name} lists a value twice: {value}.")
        if not any(key in f.metadata for key in BOUNDS):
            continue
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if v is not None and _outside(v, f.metadata)]
        if bad:
            shown = value if not isinstance(value, list) else bad[0]
            raise ConfigError(f"{f.name} must be {range_text(f.metadata)}, got {shown!r}.")


class Config:
    """Base of every config dataclass (see the module docstring). ``what``: the config's name in
    errors ("Unknown probe field(s): ..."); ``ignored_keys``: keys a saved file may hold that are
    not fields (metadata), skipped by :meth:`from_dict`; ``renamed``: keys of files written before
    a field was renamed, read as the new field."""

    what: ClassVar[str] = "config"
    ignored_keys: ClassVar[tuple[str, ...]] = ()
    renamed: ClassVar[dict[str, str]] = {}  # an older saved file's key -> the field that holds it now

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_ranges(self)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (contradictions, values a range cannot state); nothing by default."""

    def to_dict(self) -> dict:
        """Every field by its flag name, nested configs' fields at the top level (what ``from_dict``
        reads back, and what saved files such as ``probe.json`` hold)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out.update(value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value))
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict):
        """From a flat mapping (flags, YAML, a saved JSON file): each key to the config that owns
        it, nested configs included (:func:`~modetune.utils.checks.from_flat_dict`)."""
        data = {cls.renamed.get(key, key): value for key, value in data.items()}
        return from_flat_dict(cls, data, cls.what, ignored=cls.ignored_keys)
