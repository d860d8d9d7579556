"""Every exception modetune raises on purpose, and the one helper that formats an error for users.

The command line turns :class:`UserError` (and the few standard errors that mean bad input:
a missing file, malformed JSON/YAML) into one line and exit status 1. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (input, configuration), reported without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing, of the wrong type, out of range, or contradicts another."""


class DataError(UserError, ValueError):
    """Unusable data; the message says which file, record and field."""


class UnsupportedModelError(UserError, ValueError):
    """The model lacks a part MoD needs; the message names it in one sentence."""


class BaseModelMismatchError(UserError, ValueError):
    """A saved adapter was loaded onto a base model other than the one it was trained on."""


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class ContaminationWarning(UserWarning):
    """Training data shares questions with an evaluation set (:mod:`modetune.data.contamination`)."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of ``str(error)``, or the error's class name when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
