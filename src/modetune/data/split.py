"""The clean arithmetic split: LLM-Adapters' seven arithmetic test sets cut in two halves by question text.

LLM-Adapters' ``math_data.json`` (worked answers written by a model) holds ONLY items of the
seven arithmetic test sets, so training on it and evaluating on those sets is contamination.
The rule, exactly:

- ``key = normalise_text(instruction)`` (lower-case, keep ``[a-z0-9]``);
- an item is a test item iff ``int(sha1(key).hexdigest(), 16)`` is odd;
- ``<Name>/test.json`` keeps the odd items of upstream ``<Name>/test.json``, in upstream order;
- ``train.json`` keeps the records of ``math_data.json`` whose key is even, de-duplicated by
  key (first occurrence kept), in upstream order.

So no training question is ever a test question, whatever the wording of the worked answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..utils.errors import DataError
from ..utils.integrity import read_text
from ..utils.outputs import check_output, staged
from .text import normalise_text

ARITHMETIC_SETS = ("AddSub", "AQuA", "gsm8k", "mawps", "MultiArith", "SingleEq", "SVAMP")


def is_test_question(instruction: str) -> bool:
    """``int(sha1(normalise_text(instruction)).hexdigest(), 16)`` is odd."""
    return int(hashlib.sha1(normalise_text(instruction).encode()).hexdigest(), 16) % 2 == 1


def split_arithmetic(math_data: list[dict], test_sets: dict[str, list[dict]]) -> tuple[list[dict], dict[str, list[dict]]]:
    """``(train, {name: test_half})`` by the rule in the module docstring (pure: no files)."""
    train, seen = [], set()
    for record in math_data:
        key = normalise_text(record["instruction"])
        if is_test_question(record["instruction"]) or key in seen:
            continue
        seen.add(key)
        train.append(record)
    halves = {name: [r for r in records if is_test_question(r["instruction"])] for name, records in test_sets.items()}
    return train, halves


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path} not found: the split needs LLM-Adapters' math_data.json and <Name>/test.json files.")
    try:
        records = json.loads(read_text(path, "data file"))
    except json.JSONDecodeError as error:
        raise DataError(f"Malformed JSON in {path}: {error.msg} at line {error.lineno}.") from error
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}.")
    for index, record in enumerate(records):  # checked, never rewritten: the split is reproduced byte for byte
        if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
            raise DataError(f"{path}: record {index} has no 'instruction' text.")
    return records


def write_json(records: list[dict], path: Path) -> None:
    """The shipped files' format: a JSON list, one-space indent, ASCII with \\u escapes, no final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")


def split_arithmetic_files(math_data: str | Path, test_dir: str | Path, output_dir: str | Path,
                           overwrite: bool = False) -> dict[str, int]:
    """Rebuild the split from ``math_data`` (LLM-Adapters' ``math_data.json``) and ``test_dir/<Name>/test.json``
    into ``output_dir`` (``train.json`` and ``<Name>/test.json``); returns the record counts. The
    output may not be or hold an input, and replaces an existing folder only with ``overwrite``."""
    check_output(output_dir, [math_data, test_dir], overwrite)
    train, halves = split_arithmetic(_read(Path(math_data)),
                                     {name: _read(Path(test_dir) / name / "test.json") for name in ARITHMETIC_SETS})
    with staged(output_dir) as stage:
        write_json(train, stage / "train.json")
        for name, records in halves.items():
            write_json(records, stage / name / "test.json")
    return {"train": len(train), **{name: len(records) for name, records in halves.items()}}


def split_arithmetic_source(source_dir: str | Path, output_dir: str | Path, overwrite: bool = False) -> dict[str, int]:
    """:func:`split_arithmetic_files` from LLM-Adapters' dataset folder (``math_data.json`` and
    ``<Name>/test.json`` side by side): ``modetune data split-arithmetic``."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise DataError(f"{source_dir}: no such folder (expected LLM-Adapters' dataset folder).")
    return split_arithmetic_files(source_dir / "math_data.json", source_dir, output_dir, overwrite)


def format_counts(counts: dict[str, int], output_dir: str | Path) -> str:
    """The record counts of a split, one line per file written, as the command prints them."""
    lines = [f"{'train.json':<22} {counts['train']:>6,}"]
    lines += [f"{name + '/test.json':<22} {n:>6,}" for name, n in counts.items() if name != "train"]
    return "\n".join([*lines, f"written to {output_dir}"])
