"""Test items: LLM-Adapters test files (``<Name>/test.json``), the built-in test split, and the
Hugging Face hub (rows converted to LLM-Adapters records with LLM-Adapters' wording).

Where a dataset's items come from is the data folder (``--data-dir``, :func:`resolve_data_dir`):
``None`` or ``packaged`` = the LLM-Adapters files shipped in the package
(:mod:`modetune.data.packaged`; HellaSwag, not shipped, then comes from the hub);
``packaged:math-split`` = the clean arithmetic split's test halves (``packaged:llm-adapters``
names the default explicitly); ``hub`` = the Hugging Face hub; anything else = a folder
holding ``<Name>/test.json``.

Test items are ``{instruction, input, output, answer}`` records; only ``answer`` is scored.
(Training records are :mod:`modetune.data`'s business: :func:`modetune.data.load_training_records`.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data import builtin_arithmetic, check_fields, gsm8k_record
from ..data.packaged import DATA_ROOT, LLM_ADAPTERS
from ..utils.errors import ConfigError, DataError, first_line
from ..utils.integrity import read_text
from .datasets import BUILTIN, BUILTIN_TEST_SIZE, get_dataset
from .protocol import gold_number


def validate_test_items(records: Any, dataset: str, source: str) -> list[dict]:
    """Check LLM-Adapters test items: a JSON list of objects with a string ``instruction`` and
    an ``answer`` that the dataset's rule can match. Raises :class:`~modetune.utils.errors.DataError`
    (a ``ValueError``) naming the record."""
    info = get_dataset(dataset)
    check_fields(records, source, required=("instruction",), conversations=False)  # a non-empty list of objects
    for i, record in enumerate(records):
        if record.get("answer") in (None, ""):
            raise DataError(f"{source}: record {i} has no 'answer' field.")
        gold = record["answer"]
        if info.kind == "numeric":
            try:
                gold_number(gold)
            except ValueError as error:
                raise DataError(f"{source}: record {i}: {error}.") from None
        elif str(gold).strip() not in info.keywords:
            raise DataError(f"{source}: record {i}: answer {gold!r} is not one of {'/'.join(info.keywords)}.")
    return records


HUB = "hub"
PACKAGED = "packaged"


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The folder a ``--data-dir`` value names, or ``None`` for the Hugging Face hub.

    ``None``/``"packaged"`` -> the packaged LLM-Adapters sets; ``"packaged:NAME"`` -> the
    packaged folder ``NAME`` (``llm-adapters`` or ``math-split``); ``"hub"`` -> ``None``;
    any other value -> that folder (checked when a dataset is read from it).
    """
    if data_dir is None or str(data_dir) == PACKAGED:
        return LLM_ADAPTERS
    text = str(data_dir)
    if text == HUB:
        return None
    if text.startswith(PACKAGED + ":"):
        name = text[len(PACKAGED) + 1:].strip("/")
        folders = sorted(p.name for p in DATA_ROOT.iterdir() if p.is_dir())
        if name not in folders:
            raise ConfigError(f"{text}: no such packaged data folder; choose packaged:{' or packaged:'.join(folders)}.")
        return DATA_ROOT / name
    return Path(data_dir)


def find_dataset_folder(data_dir: Path, name: str) -> Path | None:
    """``data_dir/<name>`` (matched case-insensitively), or ``None`` when there is none."""
    exact = data_dir / name
    if exact.is_dir():
        return exact
    if data_dir.is_dir():
        for child in sorted(data_dir.iterdir()):
            if child.is_dir() and child.name.lower() == name.lower():
                return child
    return None


def dataset_file(dataset: str, data_dir: str | Path, split: str = "test") -> Path:
    """``data_dir/<Name>/<split>.json`` (folder matched case-insensitively); ``FileNotFoundError``
    naming the expected path when it is missing."""
    info = get_dataset(dataset)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Data folder {data_dir} does not exist.")
    folder = find_dataset_folder(data_dir, info.name)
    if folder is None or not (folder / f"{split}.json").is_file():
        raise FileNotFoundError(f"Dataset {info.name}: {data_dir / info.name / f'{split}.json'} not found.")
    return folder / f"{split}.json"


def load_test_items(dataset: str, data_dir: str | Path | None = None, path: str | Path | None = None,
                    split: str = "test") -> list[dict]:
    """The test items of ``dataset`` (LLM-Adapters format), validated.

    Sources, first match wins: ``path`` (a JSON file); the data folder's ``<Name>/<split>.json``
    (:func:`resolve_data_dir`: by default the packaged LLM-Adapters files; the folder name
    matched case-insensitively); the Hugging Face hub (:func:`load_hf_records`) with
    ``data_dir="hub"``, or by default for a dataset that is not packaged (HellaSwag).
    """
    info = get_dataset(dataset)
    if info is BUILTIN and path is None:
        return builtin_arithmetic(BUILTIN_TEST_SIZE, 0, "test")
    folder = resolve_data_dir(data_dir)
    if data_dir is None and find_dataset_folder(folder, info.name) is None:
        folder = None  # not packaged (HellaSwag): the hub
    if path is None and folder is not None:
        path = dataset_file(info.name, folder, split)
    if path is None:
        return validate_test_items(load_hf_records(info.name, split), info.name, f"hf:{info.name}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Dataset {info.name}: {path} not found.")
    if path.suffix != ".json":
        raise DataError(f"Dataset {info.name}: {path} is not a .json file (a JSON list of LLM-Adapters test items).")
    try:
        records = json.loads(read_text(path, "test file"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}).") from None
    return validate_test_items(records, info.name, str(path))


# ---------------------------------------------------------------------------- Hugging Face sources
def _choices_instruction(question: str, options: Sequence[str], stem: str = "Answer") -> str:
    listed = " ".join(f"{stem}{i}: {text}" for i, text in enumerate(options, 1))
    formats = "/".join(f"{stem.lower()}{i}" for i in range(1, len(options) + 1))
    return f"Please choose the correct answer to the question: {question}\n\n{listed}\n\nAnswer format: {formats}"


def _from_svamp(row: dict) -> dict:
    return {"instruction": f"{row['Body'].strip()} {row['Question'].strip()}", "answer": str(float(row["Answer"]))}


def _from_multiarith(row: dict) -> dict:
    return {"instruction": row["question"].strip(), "answer": str(float(row["final_ans"]))}


def _from_aqua(row: dict) -> dict:
    options = " ".join(f"({opt.split(')', 1)[0].strip()}) {opt.split(')', 1)[1].strip()}" for opt in row["options"])
    return {"instruction": f"{row['question'].strip()} Answer Choices: {options}", "answer": row["correct"].strip()}


def _from_boolq(row: dict) -> dict:
    question = row["question"].strip().rstrip("?")
    return {"instruction": f"Please answer the following question with true or false, question: {question}?"
                           "\n\nAnswer format: true/false",
            "answer": "true" if row["answer"] else "false"}


def _from_piqa(row: dict) -> dict:
    return {"instruction": f"Please choose the correct solution to the question: {row['goal']}\n\n"
                           f"Solution1: {row['sol1']}\n\nSolution2: {row['sol2']}\n\nAnswer format: solution1/solution2",
            "answer": f"solution{int(row['label']) + 1}"}


def _from_siqa(row: dict) -> dict:
    question = f"{row['context']} {row['question']}"
    return {"instruction": _choices_instruction(question, [row["answerA"], row["answerB"], row["answerC"]]),
            "answer": f"answer{int(row['label'])}"}


def _from_hellaswag(row: dict) -> dict:
    endings = " ".join(f"Ending{i}: {text}" for i, text in enumerate(row["endings"], 1))
    formats = "/".join(f"ending{i}" for i in range(1, len(row["endings"]) + 1))
    context = f"{row['activity_label']}: {row['ctx']}" if row.get("activity_label") else row["ctx"]
    return {"instruction": f"Please choose the correct ending to complete the given sentence: {context}\n\n"
                           f"{endings}\n\nAnswer format: {formats}",
            "answer": f"ending{int(row['label']) + 1}"}


def _from_winogrande(row: dict) -> dict:
    return {"instruction": "Please choose the correct answer to fill in the blank to complete the given sentence: "
                           f"{row['sentence']}\n\nOption1: {row['option1']} Option2: {row['option2']} "
                           "Answer format: option1/option2",
            "answer": f"option{row['answer']}"}


def _from_arc(row: dict) -> dict:
    labels = list(row["choices"]["label"])
    question = row.get("question") or row["question_stem"]
    return {"instruction": _choices_instruction(question, row["choices"]["text"]),
            "answer": f"answer{labels.index(row['answerKey']) + 1}"}


# dataset -> its converter to an LLM-Adapters record (where each one lives on the hub: the registry,
# eval.datasets' ``DatasetInfo.hub``)
CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "gsm8k": gsm8k_record,  # shared with training (modetune.data)
    "SVAMP": _from_svamp, "MultiArith": _from_multiarith, "AQuA": _from_aqua, "boolq": _from_boolq,
    "piqa": _from_piqa,  # parquet copy (ybisk/piqa is a script)
    "social_i_qa": _from_siqa,  # parquet copy
    "hellaswag": _from_hellaswag, "winogrande": _from_winogrande, "ARC-Easy": _from_arc, "ARC-Challenge": _from_arc,
    "openbookqa": _from_arc,
}


def load_hf_records(dataset: str, split: str = "test") -> list[dict]:
    """Download ``dataset`` from the Hugging Face hub and convert it to LLM-Adapters records
    with the same instruction wording as LLM-Adapters' files (the registry's ``hub`` entry and
    :data:`CONVERTERS`).

    ``split="test"`` means the split the paper evaluates on (validation for the commonsense
    sets whose test labels are hidden). AddSub, SingleEq and mawps have no hub source: use
    LLM-Adapters' files with ``data_dir``.
    """
    info = get_dataset(dataset)
    if info.hub is None:
        raise ConfigError(f"No Hugging Face source is known for {info.name}; use the packaged files (no --data-dir) "
                          f"or a --data-dir holding LLM-Adapters' {info.name}/test.json.")
    (hub_id, config, hub_split), convert = info.hub, CONVERTERS[info.name]
    import datasets

    try:
        rows = datasets.load_dataset(hub_id, config, split=hub_split if split == "test" else split)
    except Exception as error:  # network, missing dataset, offline mode: one clear line
        raise FileNotFoundError(f"Cannot load {hub_id} from the Hugging Face hub: {first_line(error)}") from error
    return [{"input": "", "output": "", **convert(dict(row))} for row in rows]

