"""Training records: LLM-Adapters records, Hugging Face datasets, and a built-in offline source.

A record is ``{"instruction", "input", "output", "answer"}`` (LLM-Adapters format): the
prompt is the Alpaca template over ``instruction``/``input``, the target is ``output``; or a
conversation, ``{"messages": [{"role", "content"}]}`` or ShareGPT's ``{"conversations": [{"from",
"value"}]}`` (:mod:`modetune.data.chat`; normalised to ``messages`` here).
Sources (``TrainConfig.data``):
- a ``.json`` file (a list of records) or ``.jsonl`` file (one record per line);
- ``packaged:PATH``: a file shipped in the package (:mod:`modetune.data.packaged`), e.g.
  ``packaged:math-split/train.json`` (the clean arithmetic split) or
  ``packaged:llm-adapters/boolq/train.json``;
- ``hf:gsm8k`` (``openai/gsm8k``, main) and ``hf:NAME[:CONFIG]`` for datasets whose rows
  already have ``instruction``/``output`` fields (needs network the first time);
- ``builtin:arithmetic``: procedurally generated arithmetic word problems with worked
  answers ending in "The answer is N." (offline, deterministic by seed); one question in
  ten (by a hash of its text) belongs to the test split, which `modetune eval --datasets
  builtin` reads, so test questions never occur in training.

Several sources join with commas (a training mix), and each may carry options after ``?``:
``half=train|test`` keeps one half of the file chosen by a hash of the question text (for
test sets without a training set: train on one half, evaluate on the other, never both),
and ``n=N`` keeps a seeded sample of N records, e.g.
``data/piqa/test.json?half=train&n=300,data/boolq/train.json?n=300``.

``columns`` (``TrainConfig.columns``, ``SOURCE=FIELD`` pairs) renames the fields of the records of
local ``.json``/``.jsonl`` files before they are checked (:func:`rename_columns`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from pathlib import Path

from ..utils.errors import ConfigError, DataError, first_line
from ..utils.integrity import read_text
from .chat import CHAT_KEYS, is_conversation, normalise_conversation, record_key, record_target
from .text import normalise_text

REQUIRED_FIELDS = ("instruction", "output")


def check_fields(records: list, source: str, required: tuple[str, ...] = REQUIRED_FIELDS,
                 conversations: bool = True) -> list[dict]:
    """Check every record is an object with string ``required`` fields and a text ``input`` (a missing
    or null one becomes ``""``) or a
    valid conversation (normalised to ``{"messages": [{"role", "content"}]}``)."""
    if not isinstance(records, list):
        raise DataError(f"{source}: expected a JSON list of records, got {type(records).__name__}.")
    if not records:
        raise DataError(f"{source}: the dataset is empty.")
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {index} is not an object.")
        if conversations and is_conversation(record):
            messages = normalise_conversation(record, f"{source}: record {index}")
            out.append({**{k: v for k, v in record.items() if k not in CHAT_KEYS}, "messages": messages})
            continue
        missing = [name for name in required if not isinstance(record.get(name), str)]
        if missing:
            raise DataError(f"{source}: record {index} lacks the field(s) {', '.join(missing)}.")
        if record.get("input") is not None and not isinstance(record["input"], str):
            raise DataError(f"{source}: record {index}'s input must be text, got {type(record['input']).__name__}.")
        out.append({**record, "input": record.get("input") or ""})
    return out


def parse_columns(items: list[str] | None) -> dict[str, str]:
    """``["question=instruction", ...]`` -> ``{"question": "instruction", ...}`` (source column -> record
    field), or one :class:`ConfigError` line."""
    mapping: dict[str, str] = {}
    for item in items or []:
        source, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not source or not target:
            raise ConfigError(f"columns: {item!r} is not SOURCE=FIELD (e.g. question=instruction).")
        if source in mapping:
            raise ConfigError(f"columns: {source!r} is renamed twice.")
        if target in mapping.values():
            raise ConfigError(f"columns: two columns are renamed to {target!r}.")
        mapping[source] = target
    return mapping


def rename_columns(records, mapping: dict[str, str], source: str):
    """Each record's fields renamed by ``mapping`` (source column -> field). A source column that no
    record of ``source`` has, or a record holding both a column and the field it becomes, is one
    :class:`DataError` line naming the file."""
    if not mapping or not isinstance(records, list):
        return records  # not a list: check_fields says so
    objects = [record for record in records if isinstance(record, dict)]
    present = set().union(*objects) if objects else set()
    missing = [name for name in mapping if name not in present]
    if missing:
        raise DataError(f"{source}: no record has the column(s) {', '.join(missing)} that columns renames "
                        f"(its columns: {', '.join(sorted(present)) or 'none'}).")
    renamed = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            renamed.append(record)
            continue
        clash = [mapping[key] for key in record if key in mapping and mapping[key] in record and mapping[key] not in mapping]
        if clash:
            raise DataError(f"{source}: record {index} has both a renamed column and its new name {clash[0]!r}.")
        renamed.append({mapping.get(key, key): value for key, value in record.items()})
    return renamed


def load_json_records(path: str | Path, required: tuple[str, ...] = REQUIRED_FIELDS,
                      columns: dict[str, str] | None = None) -> list[dict]:
    """Read a ``.json`` list or ``.jsonl`` file of records, with one-line errors; ``columns``: its
    fields renamed before they are checked (:func:`rename_columns`)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file not found: {path}")
    if path.is_dir():
        raise DataError(f"Data file {path} is a folder; give a .json or .jsonl file.")
    if path.suffix not in (".json", ".jsonl"):
        raise DataError(f"Data file {path} is not a .json or .jsonl file of records (LLM-Adapters format).")
    try:
        text = read_text(path, "Data file")
    except OSError as error:
        raise DataError(f"Cannot read data file {path}: {error}") from error
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):  # a bad record is named by its own line
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"Malformed JSON in {path}: {error.msg} at line {number}, column {error.colno}.") from None
        return check_fields(rename_columns(records, columns or {}, str(path)), str(path), required)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"Malformed JSON in {path}: {error.msg} at line {error.lineno}, column {error.colno}.") from error
    return check_fields(rename_columns(records, columns or {}, str(path)), str(path), required)


def gsm8k_record(row: dict) -> dict:
    """GSM8K's ``answer`` ("... #### 42") as an LLM-Adapters record ending "The answer is 42."."""
    rationale, _, final = row["answer"].rpartition("####")
    final = final.strip().replace(",", "")
    rationale = re.sub(r"<<[^>]*>>", "", rationale).strip()
    return {"instruction": row["question"], "input": "", "output": f"{rationale}\nThe answer is {final}.", "answer": final}


def load_hf_records(spec: str, split: str = "train") -> list[dict]:
    """``hf:gsm8k`` or ``hf:NAME[:CONFIG]`` through the ``datasets`` library (network needed once)."""
    from datasets import load_dataset

    name, _, config = spec.partition(":")
    try:  # offline, unknown names, a folder with a loading script (no longer run by datasets), a bad split
        if name == "gsm8k":
            rows = load_dataset("openai/gsm8k", config or "main", split=split)
            return [gsm8k_record(row) for row in rows]
        rows = load_dataset(name, config or None, split=split)
    except (OSError, RuntimeError, ValueError, ImportError) as error:
        raise DataError(f"hf:{spec}: the datasets library cannot load it ({first_line(error)})") from None
    return check_fields([dict(row) for row in rows], f"hf:{spec}")


def hash_half(question: str) -> str:
    """``"train"`` or ``"test"``: the half of a 50/50 split a question belongs to, by the
    parity of a SHA-1 of its normalised text (identical questions always share a half)."""
    return "test" if hashlib.sha1(normalise_text(question).encode()).digest()[0] % 2 else "train"


def parse_source(spec: str) -> tuple[str, dict[str, str]]:
    """``"path?half=train&n=300"`` -> ``("path", {"half": "train", "n": "300"})``, checked."""
    source, _, query = spec.strip().partition("?")
    options = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("half", "n"):
            raise DataError(f"{spec}: unknown source option {item!r}; the options are half=train|test and n=N.")
        options[key] = value
    if options.get("half", "train") not in ("train", "test"):
        raise DataError(f"{spec}: half must be train or test, not {options['half']!r}.")
    if "n" in options and not (options["n"].isdigit() and int(options["n"]) > 0):
        raise DataError(f"{spec}: n must be a positive whole number, not {options['n']!r}.")
    return source, options


def select_records(records: list[dict], options: dict[str, str]) -> list[dict]:
    """Apply a source's options: keep one hash half (``half``), then a fixed sample of ``n``
    records (the same for every run and seed, so runs differ only in what they should)."""
    if "half" in options:
        records = [r for r in records if hash_half(record_key(r)) == options["half"]]
    if "n" in options and int(options["n"]) < len(records):
        chosen = sorted(random.Random("sample").sample(range(len(records)), int(options["n"])))
        records = [records[i] for i in chosen]
    return records


def load_training_records(source: str, limit: int | None = None, seed: int = 0,
                          columns: dict[str, str] | None = None) -> list[dict]:
    """Records from a file, ``hf:...`` or ``builtin:arithmetic[:N]`` (default N = 2000), or
    a comma-separated mix of them, each with optional ``?half=train|test&n=N``; ``columns``: the
    local files' fields renamed (:func:`rename_columns`)."""
    if "," in source or "?" in source:
        records = []
        for spec in filter(str.strip, source.split(",")):
            path, options = parse_source(spec)
            records += select_records(load_training_records(path, None, seed, columns), options)
        return records[:limit] if limit else records
    if source.startswith("builtin:"):
        from .builtin import builtin_arithmetic

        kind, _, count = source[len("builtin:"):].partition(":")
        if kind not in ("arithmetic", "arithmetic-tn"):
            raise DataError(f"Unknown built-in dataset {kind!r}; the built-in sources are builtin:arithmetic and "
                            "builtin:arithmetic-tn (held out by template and numbers).")
        if count and not (count.isdigit() and int(count) > 0):
            raise DataError(f"{source}: the count after builtin:{kind}: must be a positive whole number, "
                            f"not {count!r}.")
        records = builtin_arithmetic(int(count or 2000), seed, "train", "template" if kind.endswith("-tn") else "question")
    elif source.startswith("hf:"):
        records = load_hf_records(source[3:])
    elif source.startswith("packaged:"):
        from .packaged import packaged_path

        records = load_json_records(packaged_path(source))
    else:
        records = load_json_records(source, columns=columns)
    kept = [record for record in records if record_target(record).strip()]
    if len(kept) < len(records):
        warnings.warn(f"{source}: skipped {len(records) - len(kept)} record(s) with an empty output.", stacklevel=2)
    if not kept:
        raise DataError(f"{source}: every record has an empty output; nothing to train on.")
    return kept[:limit] if limit else kept
