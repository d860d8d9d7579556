"""The contamination guard: which evaluated questions a model was trained on.

A question's key is ``sha1(normalise_text(instruction + input)).hexdigest()[:KEY_DIGITS]``:
the normalised text (lower case, ``[a-z0-9]`` only, :func:`modetune.data.text.normalise_text`)
hashed, so a run folder records *which* questions it trained on without holding their text.

- ``modetune train`` writes :data:`FINGERPRINT_NAME` (``train_questions.json``: the sorted
  unique keys and the record count) into the run folder and its ``adapter/``, and warns
  before training when its records share more than ``contamination_warn_at`` questions with
  one of the known evaluation sets (:func:`known_evaluation_sets`: the 14 packaged
  LLM-Adapters test sets and the math-split test halves).
- ``modetune eval`` on an adapter with that file counts, per dataset, the evaluated items
  whose key is among the training keys (:func:`count_in_training`), warns when any are,
  and writes the counts into ``run.json`` and the summaries.

Pure functions over records and files; no model, no torch.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path

from ..utils.errors import ContaminationWarning, DataError
from .packaged import LLM_ADAPTERS, MATH_SPLIT
from .text import normalise_text

FINGERPRINT_NAME = "train_questions.json"
KEY_DIGITS = 16  # 64 bits of SHA-1: a chance collision among 10^5 questions has probability ~3e-10


def question_key(record: dict) -> str:
    """``sha1(normalise_text(instruction + input)).hexdigest()[:KEY_DIGITS]``."""
    text = normalise_text(str(record.get("instruction", "")) + str(record.get("input") or ""))
    return hashlib.sha1(text.encode()).hexdigest()[:KEY_DIGITS]


def fingerprint(records: Iterable[dict]) -> dict:
    """``{"records": n, "keys": sorted unique question keys, ...}``: what a run folder keeps."""
    records = list(records)
    return {"records": len(records), "unique_questions": len({question_key(r) for r in records}),
            "key": f"sha1(normalise_text(instruction + input))[:{KEY_DIGITS}]",
            "keys": sorted({question_key(r) for r in records})}


def write_fingerprint(records: Iterable[dict], *folders: str | Path) -> dict:
    """Write :func:`fingerprint` of ``records`` as ``train_questions.json`` into each folder."""
    data = fingerprint(records)
    for folder in folders:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, FINGERPRINT_NAME).write_text(json.dumps(data, indent=0) + "\n")
    return data


def read_fingerprint(adapter: str | Path | None) -> set[str] | None:
    """The training keys recorded for an adapter: ``adapter/train_questions.json``, else the run
    folder's (``adapter/..``); ``None`` when neither exists (an adapter trained elsewhere)."""
    if adapter is None:
        return None
    for folder in (Path(adapter), Path(adapter).parent):
        path = folder / FINGERPRINT_NAME
        if path.is_file():
            try:
                return set(json.loads(path.read_text())["keys"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}: not a training-question fingerprint.") from None
    return None


def count_in_training(records: Iterable[dict], keys: set[str]) -> int:
    """How many of ``records`` have their question key in ``keys``."""
    return sum(question_key(r) in keys for r in records)


def known_evaluation_sets() -> dict[str, set[str]]:
    """``{"llm-adapters/<Name>/test.json" or "math-split/<Name>/test.json": question keys}``
    for every packaged evaluation file."""
    sets = {}
    for root in (LLM_ADAPTERS, MATH_SPLIT):
        for path in sorted(root.glob("*/test.json")):
            records = json.loads(path.read_text(encoding="utf-8"))
            sets[f"{root.name}/{path.parent.name}/test.json"] = {question_key(r) for r in records}
    return sets


def training_overlap(records: Iterable[dict], sets: dict[str, set[str]] | None = None) -> dict[str, int]:
    """``{evaluation set: distinct training questions that are also its items}`` (sets with
    no overlap left out); ``sets`` defaults to :func:`known_evaluation_sets`."""
    keys = {question_key(r) for r in records}
    sets = known_evaluation_sets() if sets is None else sets
    return {name: len(keys & items) for name, items in sets.items() if keys & items}


def overlap_message(overlap: dict[str, int], threshold: int) -> str | None:
    """The warning for overlaps above ``threshold`` items, or ``None`` when there is none."""
    over = {name: n for name, n in overlap.items() if n > threshold}
    if not over:
        return None
    listed = ", ".join(f"{name} ({n})" for name, n in sorted(over.items(), key=lambda item: -item[1]))
    return (f"the training data shares questions with known evaluation sets: {listed}. Scores on those sets "
            "would measure memorisation; evaluate on disjoint items (e.g. packaged:math-split, ?half=test).")


def warn_training_overlap(records: Iterable[dict], threshold: int) -> dict[str, int]:
    """Compute :func:`training_overlap`, warn (:class:`ContaminationWarning`) above
    ``threshold`` items; return the overlap. ``threshold < 0`` skips the check."""
    if threshold < 0:
        return {}
    overlap = training_overlap(records)
    message = overlap_message(overlap, threshold)
    if message:
        warnings.warn(message, ContaminationWarning, stacklevel=2)
    return overlap


def eval_contamination(adapter: str | Path | None, datasets: list[tuple[str, list[dict]]]) -> dict[str, int] | None:
    """``{dataset: evaluated items that were training questions}`` for the ``(name, evaluated
    records)`` pairs of an adapter with a fingerprint (``None`` without one); warns
    (:class:`ContaminationWarning`) when any count is positive."""
    keys = read_fingerprint(adapter)
    if keys is None:
        return None
    counts = {name: count_in_training(records, keys) for name, records in datasets}
    sizes = {name: len(records) for name, records in datasets}
    if any(counts.values()):
        listed = ", ".join(f"{name} {n} of {sizes[name]}" for name, n in counts.items() if n)
        warnings.warn(f"evaluated items that the adapter was trained on: {listed}; their scores measure "
                      "memorisation.", ContaminationWarning, stacklevel=2)
    return counts
