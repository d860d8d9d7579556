"""Training data: LLM-Adapters records, Hugging Face datasets, and a built-in offline source.

A record is ``{"instruction", "input", "output", "answer"}`` (LLM-Adapters format): the
prompt is the Alpaca template over ``instruction``/``input``, the target is ``output``.
Sources (``TrainConfig.data``):
- a ``.json`` file (a list of records) or ``.jsonl`` file (one record per line);
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
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .prompts import format_prompt

REQUIRED_FIELDS = ("instruction", "output")


class DataError(UserError, ValueError):
    """Unusable training data; the message says which file, record and field."""


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def validate_records(records: list, source: str, required: tuple[str, ...] = REQUIRED_FIELDS) -> list[dict]:
    """Check every record is an object with string ``required`` fields; fill a missing ``input``."""
    if not isinstance(records, list):
        raise DataError(f"{source}: expected a JSON list of records, got {type(records).__name__}.")
    if not records:
        raise DataError(f"{source}: the dataset is empty.")
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {index} is not an object.")
        missing = [name for name in required if not isinstance(record.get(name), str)]
        if missing:
            raise DataError(f"{source}: record {index} lacks the field(s) {', '.join(missing)}.")
        out.append({**record, "input": record.get("input") or ""})
    return out


def load_json_records(path: str | Path, required: tuple[str, ...] = REQUIRED_FIELDS) -> list[dict]:
    """Read a ``.json`` list or ``.jsonl`` file of records, with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot read data file {path}: {error}") from error
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"Malformed JSON in {path}: {error.msg} at line {error.lineno}, column {error.colno}.") from error
    return validate_records(records, str(path), required)


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
    if name == "gsm8k":
        rows = load_dataset("openai/gsm8k", config or "main", split=split)
        return [gsm8k_record(row) for row in rows]
    rows = load_dataset(name, config or None, split=split)
    return validate_records([dict(row) for row in rows], f"hf:{spec}")


# ---------------------------------------------------------------- built-in arithmetic problems
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Isla", "Jonas", "Kemi", "Liam", "Maya",
         "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "cards", "stamps", "beads"]


def _problem(rng: random.Random) -> tuple[str, str, int]:
    """One word problem: (question, worked answer, result). Seven templates, 1-2 steps."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(1, 20)
    kind = rng.randrange(7)
    if kind == 0:
        q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
        steps, r = [f"{name} starts with {a} {item} and gets {b} more: {a} + {b} = {a + b}."], a + b
    elif kind == 1:
        a = a + b
        q = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} does {name} have left?"
        steps, r = [f"{name} gives away {b} of {a} {item}: {a} - {b} = {a - b}."], a - b
    elif kind == 2:
        a, b = a % 12 + 2, b % 12 + 2
        q = f"{name} buys {a} packs of {item}. Each pack holds {b} {item}. How many {item} does {name} buy?"
        steps, r = [f"{a} packs with {b} {item} each make {a} * {b} = {a * b} {item}."], a * b
    elif kind == 3:
        a, b = a % 12 + 2, b % 9 + 2
        q = f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend get?"
        steps, r = [f"{a * b} {item} shared by {b} friends gives {a * b} / {b} = {a} each."], a
    elif kind == 4:
        c = min(c, a + b - 1)
        q = f"{name} has {a} {item}, buys {b} more, and then gives {c} to {other}. How many {item} does {name} have now?"
        steps = [f"After buying, {name} has {a} + {b} = {a + b} {item}.",
                 f"After giving {c} away, {name} has {a + b} - {c} = {a + b - c} {item}."]
        r = a + b - c
    elif kind == 5:
        a, b = a % 15 + 5, b % 8 + 2
        c = min(c, a * b - 1)
        q = (f"{name} earns {a} dollars per hour and works {b} hours. Then {name} spends {c} dollars. "
             "How many dollars are left?")
        steps = [f"{name} earns {a} * {b} = {a * b} dollars.",
                 f"After spending {c}, {a * b} - {c} = {a * b - c} dollars are left."]
        r = a * b - c
    else:
        a, b = a % 10 + 2, b % 10 + 2
        q = (f"{name} reads {a} pages a day for {b} days and then {c} more pages. "
             f"How many pages does {name} read in total?")
        steps = [f"In {b} days {name} reads {a} * {b} = {a * b} pages.",
                 f"Adding {c} more gives {a * b} + {c} = {a * b + c} pages."]
        r = a * b + c
    return q, "\n".join(steps) + f"\nThe answer is {r}.", r


def _bucket(question: str) -> str:
    """``"test"`` for one question in ten (by a SHA-1 of its normalised text), else ``"train"``."""
    return "test" if hashlib.sha1(_normalise(question).encode()).digest()[0] < 26 else "train"


def builtin_arithmetic(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """``n`` distinct generated problems of one split. The split is fixed by a hash of the
    question, so no test question can ever occur in training, whatever the seeds and sizes."""
    rng = random.Random(f"{split}-{seed}")
    seen: set[str] = set()
    records = []
    for _ in range(n * 200):
        if len(records) == n:
            break
        question, worked, result = _problem(rng)
        key = _normalise(question)
        if key in seen or _bucket(question) != split:
            continue
        seen.add(key)
        records.append({"instruction": question, "input": "", "output": worked, "answer": str(result)})
    if len(records) < n:
        raise DataError(f"Could only generate {len(records)} distinct built-in problems for the {split} split.")
    return records


def hash_half(question: str) -> str:
    """``"train"`` or ``"test"``: the half of a 50/50 split a question belongs to, by the
    parity of a SHA-1 of its normalised text (identical questions always share a half)."""
    return "test" if hashlib.sha1(_normalise(question).encode()).digest()[0] % 2 else "train"


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
        records = [r for r in records if hash_half(r["instruction"] + r.get("input", "")) == options["half"]]
    if "n" in options and int(options["n"]) < len(records):
        chosen = sorted(random.Random("sample").sample(range(len(records)), int(options["n"])))
        records = [records[i] for i in chosen]
    return records


def builtin_split(n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and held-out test problems; the test questions never occur in training."""
    return builtin_arithmetic(n_train, seed, "train"), builtin_arithmetic(n_test, 0, "test")


def load_records(source: str, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Records from a file, ``hf:...`` or ``builtin:arithmetic[:N]`` (default N = 2000), or
    a comma-separated mix of them, each with optional ``?half=train|test&n=N``."""
    if "," in source or "?" in source:
        records = []
        for spec in filter(str.strip, source.split(",")):
            path, options = parse_source(spec)
            records += select_records(load_records(path, None, seed), options)
        return records[:limit] if limit else records
    if source.startswith("builtin:"):
        kind, _, count = source[len("builtin:"):].partition(":")
        if kind != "arithmetic":
            raise DataError(f"Unknown built-in dataset {kind!r}; the built-in source is builtin:arithmetic.")
        records = builtin_arithmetic(int(count or 2000), seed, "train")
    elif source.startswith("hf:"):
        records = load_hf_records(source[3:])
    else:
        records = load_json_records(source)
    kept = [record for record in records if record["output"].strip()]
    if len(kept) < len(records):
        warnings.warn(f"{source}: skipped {len(records) - len(kept)} record(s) with an empty output.", stacklevel=2)
    if not kept:
        raise DataError(f"{source}: every record has an empty output; nothing to train on.")
    return kept[:limit] if limit else kept


# ---------------------------------------------------------------- tokenisation
@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]


def tokenize_record(record: dict, tokenizer, cutoff_len: int, train_on_inputs: bool, style: str = "alpaca",
                    add_eos: bool = True) -> Tokenized:
    """Prompt + output (+ EOS), truncated to ``cutoff_len``; prompt tokens get label -100
    unless ``train_on_inputs`` (LLM-Adapters' choice for the paper's runs)."""
    prompt = format_prompt(record["instruction"], record.get("input", ""), style)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(prompt + record["output"], add_special_tokens=True)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        full_ids = full_ids + [tokenizer.eos_token_id]
    full_ids = full_ids[:cutoff_len]
    labels = list(full_ids)
    if not train_on_inputs:
        n_prompt = min(len(prompt_ids), len(full_ids))
        labels[:n_prompt] = [-100] * n_prompt
    return Tokenized(full_ids, labels)


def tokenize_records(records: list[dict], tokenizer, cutoff_len: int, train_on_inputs: bool,
                     style: str = "alpaca") -> list[dict]:
    """Tokenise every record; drop records with no label left after truncation."""
    rows = []
    for record in records:
        tok = tokenize_record(record, tokenizer, cutoff_len, train_on_inputs, style)
        if any(label != -100 for label in tok.labels[1:]):
            rows.append({"input_ids": tok.input_ids, "attention_mask": [1] * len(tok.input_ids), "labels": tok.labels})
    if not rows:
        raise DataError(f"The dataset is empty after truncation to cutoff_len={cutoff_len}: no record keeps a target token.")
    return rows


def split_validation(records: list[dict], val_size: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A seeded random validation split of ``val_size`` records (0: none)."""
    if val_size <= 0:
        return records, []
    if val_size >= len(records):
        raise DataError(f"val_size={val_size} leaves no training records (the dataset has {len(records)}).")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val = set(order[:val_size])
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]
