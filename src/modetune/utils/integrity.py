"""Damaged files named in one line, and every adapter tied to its base model.

- :func:`read_json`, :func:`load_safetensors`, :func:`damage`: read or check a JSON file, a
  safetensors file or a torch checkpoint file (a zip archive: its CRCs are checked, nothing is
  unpickled), raising :class:`~modetune.utils.errors.DataError` that names the file.
- :func:`write_base_record`, :func:`stored_fingerprint`, :func:`check_adapter_base`: a LoRA-only adapter
  written by modetune carries ``modetune_adapter.json`` (the base fingerprint, as MoD adapters
  carry it in ``mod_config.json``); loaders refuse another base unless told to ignore it, loudly.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

from .errors import BaseModelMismatchError, DataError, first_line

BASE_RECORD = "modetune_adapter.json"
MOD_CONFIG = "mod_config.json"  # (= config.CONFIG_NAME; kept here so this module imports no config)


def warn(message: str) -> None:
    """One ``modetune: warning: ...`` line on stderr (for things a user must see but that do not stop a command)."""
    print(f"modetune: warning: {message}", file=sys.stderr, flush=True)


def read_text(path: str | Path, what: str = "file") -> str:
    """``path``'s text as UTF-8; :class:`DataError` naming the file and the first bad byte when it is not."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{what} {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                        f"{error.start}); save it as UTF-8.") from None


def read_json(path: str | Path):
    """The JSON value in ``path``; :class:`DataError` naming the file when it is damaged (empty, not
    UTF-8, not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is damaged (not UTF-8 text: byte 0x{data[error.start]:02x} at offset "
                        f"{error.start}).") from None
    if not text.strip():
        raise DataError(f"{path} is damaged (empty: no JSON in it).")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is damaged (not valid JSON: {first_line(error)}).") from None


def load_safetensors(path: str | Path, device: str = "cpu") -> dict:
    """The tensors of a safetensors file; :class:`DataError` naming the file when it is truncated or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found.")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as error:  # a bad header, a short file, a bad dtype or shape
        raise DataError(f"{path} is damaged (not a complete safetensors file: {first_line(error)}).") from None


def damage(path: str | Path) -> str | None:
    """Why a weights, optimizer or config file cannot be loaded (``None``: it can).

    ``.json`` must parse; ``.safetensors`` must load; ``.pt``/``.pth``/``.bin`` (torch's zip
    format) must be a complete archive whose every member passes its CRC check. (Whether it agrees
    with the rest of an adapter folder: :func:`modetune.loading.adapter.file_problem`.)
    """
    path = Path(path)
    try:
        if path.suffix == ".json":
            read_json(path)
        elif path.suffix == ".safetensors":
            load_safetensors(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{path} is damaged (member {bad} fails its CRC check)."
    except DataError as error:
        return str(error)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"{path} is damaged (not a complete torch file: {first_line(error)})."
    return None


WEIGHTS_OF = {"mod_config.json": "mod_model.safetensors", "adapter_config.json": "adapter_model.safetensors"}


def check_files(directory: str | Path, names: tuple[str, ...] | None = None) -> None:
    """Raise one :class:`DataError` naming every damaged file among ``names`` (default: every
    JSON, safetensors and torch file) in ``directory``, and every weights file whose config is
    there without it (``mod_config.json`` without ``mod_model.safetensors``, peft's likewise)."""
    directory = Path(directory)
    paths = [directory / n for n in names] if names else sorted(p for p in directory.iterdir() if p.is_file())
    problems = [problem for path in paths if path.exists() and (problem := damage(path))]
    problems += [f"{directory / weights} is missing ({config} is there: the folder is incomplete)"
                 for config, weights in WEIGHTS_OF.items()
                 if (directory / config).is_file() and not (directory / weights).exists()]
    if problems:  # each once (an adapter file's check may name its partner's problem too)
        raise DataError(" ".join(dict.fromkeys(p if p.endswith(".") else p + "." for p in problems)))


# ---------------------------------------------------------------------------- the base of an adapter
def write_base_record(directory: str | Path, fingerprint: str | None, version: str) -> None:
    """Write ``modetune_adapter.json`` (base fingerprint, modetune version) beside peft's adapter files."""
    Path(directory, BASE_RECORD).write_text(json.dumps({"base_fingerprint": fingerprint, "modetune_version": version},
                                                       indent=2) + "\n")


def fingerprint_record(directory: str | Path) -> tuple[str, str] | None:
    """``(file name, base fingerprint)`` an adapter folder records (``mod_config.json`` or
    ``modetune_adapter.json``), if any."""
    for name in (MOD_CONFIG, BASE_RECORD):
        path = Path(directory) / name
        if path.is_file():
            data = read_json(path)
            if not isinstance(data, dict):
                raise DataError(f"{path} is damaged (expected a JSON object).")
            if data.get("base_fingerprint"):
                return name, data["base_fingerprint"]
    return None


def stored_fingerprint(directory: str | Path) -> str | None:
    """The base fingerprint an adapter folder records, if any (:func:`fingerprint_record`)."""
    record = fingerprint_record(directory)
    return None if record is None else record[1]


def check_adapter_base(directory: str | Path, found: str, ignore: bool = False) -> None:
    """Refuse an adapter recorded for another base (fingerprint ``found``); with ``ignore``, warn instead.

    An adapter without a record (not written by modetune) cannot be checked: a warning says so.
    """
    record = fingerprint_record(directory)
    if record is None:
        warn(f"{directory} records no base model fingerprint (not written by modetune?); "
             "it cannot be checked against this base.")
        return
    name, expected = record
    if expected == found:
        return
    message = (f"The adapter in {directory} was trained on a different base model "
               f"(its {name} records fingerprint {expected}, this base is {found})")
    config = Path(directory, "train_config.json")
    quantized = read_json(config).get("quantization", "none") if config.is_file() else "none"
    if quantized != "none":  # a QLoRA adapter: its base is the quantized one
        message += f"; it was trained on the base quantized as {quantized}: load it with --quantization {quantized}"
    if not ignore:
        raise BaseModelMismatchError(message + "; pass --ignore-base-mismatch to load it anyway.")
    warn(message + ". Loading it anyway (--ignore-base-mismatch): its outputs may be meaningless.")
