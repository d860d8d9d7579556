"""Evaluation on the paper's 15 reasoning datasets with the LLM-Adapters protocol.

The reference is LLM-Adapters' ``evaluate.py`` (arithmetic) and ``commonsense_evaluate.py``
(commonsense); SPEC.md fixes the protocol. Every rule, exactly as implemented here:

Prompt
    ``modetune.prompts.format_prompt(instruction, input, style)`` (Alpaca; ``style="llm-adapters"``
    gives the reference's byte-exact string). The response is the decoded continuation after
    the prompt (special tokens skipped), stripped of surrounding whitespace.

Numeric datasets (AddSub, gsm8k, mawps, MultiArith, SingleEq, SVAMP)
    Delete every ``,`` from the response, find all matches of ``-?\\d+\\.?\\d*`` and take the
    LAST one as a float. Correct iff ``|pred - gold| <= 0.001`` with ``gold = float(answer)``.
    No number at all: extracted ``None``, wrong. Consequences of the rule, all deliberate (they
    are the reference's): ``1,234`` reads 1234 (thousands separators vanish, but so does a
    comma between two numbers: ``3,4`` reads 34); ``5.`` reads 5 and ``.5`` reads 5; a hyphen
    directly before a digit is a minus sign, so ``3-5`` reads -5; digits inside words count
    (``v2`` reads 2); ``1e3`` reads 3; ``1/2`` reads 2.

AQuA (letter)
    The FIRST upper-case ``A``-``E`` anywhere in the (stripped) response: the reference's
    ``re.findall(r'A|B|C|D|E', ...)[0]``, case-sensitive and blind to word boundaries. So
    capitals inside words count: ``"Answer: C"`` reads ``A`` (from "Answer"), ``"Because"``
    reads ``B``, ``"The answer is (C)"`` reads ``C`` (``T`` and lower-case letters never
    match). No such letter: ``None``, wrong. Correct iff it equals the gold letter.

Commonsense datasets
    The FIRST match of the dataset's keywords, case-sensitive and blind to word boundaries,
    exactly as the reference: boolq ``true|false``; piqa ``solution1|solution2``;
    social_i_qa, ARC-Challenge, ARC-Easy, openbookqa ``answer1|...|answer5`` (one pattern for
    all four, as in the reference); hellaswag ``ending1|...|ending4``; winogrande
    ``option1|option2``. So ``"True"`` matches nothing, ``"untrue"`` reads ``true``,
    ``"answer12"`` reads ``answer1``. Correct iff it equals the gold keyword.

Gold answers come from the record's ``answer`` field only (``output`` is a leftover
rationale and is ignored).

Decoding (:class:`EvalConfig`)
    Greedy by default; ``num_beams=4`` is the reference's beam search. The decoding mode is
    recorded with every result (``"greedy"``/``"beam4"``). Generation stops at EOS, at
    ``max_new_tokens`` (default 256 for arithmetic, 32 for commonsense, the reference's
    values), and, with ``stop_at_answer`` (default on), once the answer is settled:
    for keyword and letter datasets as soon as the first keyword/letter has appeared (exact:
    the extracted answer cannot change after that); for numeric datasets once
    ``The answer is ... <number> ... .`` is followed by whitespace. The numeric stop is NOT
    exact: a model that kept writing numbers after that sentence would have a different last
    number under the reference. ``stop_at_answer=False`` is the reference's behaviour.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import StoppingCriteria

from .data import parse_source, select_records
from .prompts import STYLES, format_prompt

NUMERIC_TOLERANCE = 1e-3
NUMBER_RE = re.compile(r"-?\d+\.?\d*")
LETTER_RE = re.compile(r"A|B|C|D|E")
RESULTS_SUFFIX = ".jsonl"
RUN_FILE = "run.json"


# ---------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetInfo:
    """One of the paper's datasets: its LLM-Adapters folder name, paper column, and rule."""

    name: str
    display: str
    kind: Literal["numeric", "letter", "keyword"]
    group: Literal["arithmetic", "commonsense"]
    keywords: tuple[str, ...] = ()

    @property
    def pattern(self) -> re.Pattern:
        """The extraction regex (alternation of the keywords, or the number/letter regex)."""
        if self.kind == "numeric":
            return NUMBER_RE
        if self.kind == "letter":
            return LETTER_RE
        return re.compile("|".join(re.escape(word) for word in self.keywords))

    @property
    def default_max_new_tokens(self) -> int:
        """The reference's budget: 256 new tokens for arithmetic, 32 for commonsense."""
        return 256 if self.group == "arithmetic" else 32


def _answers(n: int, stem: str = "answer") -> tuple[str, ...]:
    return tuple(f"{stem}{i}" for i in range(1, n + 1))


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("AddSub", "AddSub", "numeric", "arithmetic"),
        DatasetInfo("AQuA", "AQuA", "letter", "arithmetic", tuple("ABCDE")),
        DatasetInfo("gsm8k", "GSM8K", "numeric", "arithmetic"),
        DatasetInfo("mawps", "MAWPS", "numeric", "arithmetic"),
        DatasetInfo("MultiArith", "MultiArith", "numeric", "arithmetic"),
        DatasetInfo("SingleEq", "SingleEq", "numeric", "arithmetic"),
        DatasetInfo("SVAMP", "SVAMP", "numeric", "arithmetic"),
        DatasetInfo("boolq", "BoolQ", "keyword", "commonsense", ("true", "false")),
        DatasetInfo("piqa", "PIQA", "keyword", "commonsense", _answers(2, "solution")),
        DatasetInfo("social_i_qa", "SIQA", "keyword", "commonsense", _answers(5)),
        DatasetInfo("hellaswag", "HellaSwag", "keyword", "commonsense", _answers(4, "ending")),
        DatasetInfo("winogrande", "WinoGrande", "keyword", "commonsense", _answers(2, "option")),
        DatasetInfo("ARC-Easy", "ARC-e", "keyword", "commonsense", _answers(5)),
        DatasetInfo("ARC-Challenge", "ARC-c", "keyword", "commonsense", _answers(5)),
        DatasetInfo("openbookqa", "OBQA", "keyword", "commonsense", _answers(5)),
    ]
}
# the built-in offline arithmetic problems (modetune.data), held-out split: scored as numeric
BUILTIN = DatasetInfo("builtin", "Built-in", "numeric", "arithmetic")
BUILTIN_TEST_SIZE = 200
ARITHMETIC = tuple(name for name, info in DATASETS.items() if info.group == "arithmetic")
COMMONSENSE = tuple(name for name, info in DATASETS.items() if info.group == "commonsense")
_ALIASES = {"arc-e": "ARC-Easy", "arc_easy": "ARC-Easy", "arc-c": "ARC-Challenge", "arc_challenge": "ARC-Challenge",
            "obqa": "openbookqa", "siqa": "social_i_qa", "socialiqa": "social_i_qa", "aqua_rat": "AQuA"}


def get_dataset(name: str) -> DatasetInfo:
    """The dataset called ``name``: its folder name, paper column or alias, case-insensitive."""
    key = name.strip().lower()
    if key == BUILTIN.name:
        return BUILTIN
    for info in DATASETS.values():
        if key in (info.name.lower(), info.display.lower()):
            return info
    if key in _ALIASES:
        return DATASETS[_ALIASES[key]]
    raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(DATASETS)}.")


def parse_dataset_list(spec: str | Sequence[str]) -> list[str]:
    """``"gsm8k,svamp"`` -> folder names; ``"all"``, ``"arithmetic"``, ``"commonsense"`` expand.

    An entry may carry an explicit file, ``name=path/to/test.json``, and source options
    (:func:`modetune.data.parse_source`), e.g. ``piqa?half=test`` for the half of PIQA's
    test set whose other half was trained on; both are kept as given.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("No dataset given.")
    groups = {"all": list(DATASETS), "arithmetic": list(ARITHMETIC), "commonsense": list(COMMONSENSE)}
    out: list[str] = []
    for item in items:
        item, query, options = item.partition("?")
        name, sep, path = item.partition("=")
        expanded = groups[name.lower()] if name.lower() in groups else [get_dataset(name).name]
        out.extend((f"{n}={path}" if sep else n) + query + options for n in expanded)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------- the protocol
def extract_answer(dataset: str, response: str) -> float | str | None:
    """The answer in a model response under the LLM-Adapters rule of ``dataset`` (module doc).

    Numeric sets: the LAST ``-?\\d+\\.?\\d*`` after deleting commas, as a float. AQuA: the FIRST
    upper-case A-E anywhere. Commonsense: the FIRST keyword match. ``None`` when nothing
    matches.
    """
    info = get_dataset(dataset)
    text = response.strip()
    if info.kind == "numeric":
        numbers = NUMBER_RE.findall(text.replace(",", ""))
        return float(numbers[-1]) if numbers else None
    match = info.pattern.search(text)
    return match.group(0) if match else None


def gold_number(gold: Any) -> float:
    """A numeric gold answer as a float (``"1,234"`` and ``1234.0`` both read 1234.0)."""
    try:
        return float(str(gold).replace(",", "").strip())
    except ValueError:
        raise ValueError(f"gold answer {gold!r} is not a number") from None


def is_correct(dataset: str, extracted: float | str | None, gold: Any) -> bool:
    """Whether an extracted answer is right: ``|pred - gold| <= 0.001`` for numeric sets,
    string equality with the (stripped) gold for the others; ``None`` is always wrong."""
    if extracted is None:
        return False
    info = get_dataset(dataset)
    if info.kind == "numeric":
        return abs(float(extracted) - gold_number(gold)) <= NUMERIC_TOLERANCE
    return extracted == str(gold).strip()


def score_response(dataset: str, response: str, gold: Any) -> tuple[float | str | None, bool]:
    """``(extracted, correct)`` for one response."""
    extracted = extract_answer(dataset, response)
    return extracted, is_correct(dataset, extracted, gold)


# ---------------------------------------------------------------------------- records
def item_id(record: dict) -> str:
    """A stable id of a test item: SHA-1 of its instruction and input (12 hex digits)."""
    text = f"{record.get('instruction', '')}\x00{record.get('input') or ''}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def validate_records(records: Any, dataset: str, source: str) -> list[dict]:
    """Check LLM-Adapters records: a JSON list of objects with a string ``instruction`` and
    an ``answer`` that the dataset's rule can match. Raises ``ValueError`` naming the record."""
    from .data import check_fields as check_structure

    info = get_dataset(dataset)
    check_structure(records, source, required=("instruction",))  # a non-empty list of objects
    for i, record in enumerate(records):
        if record.get("answer") in (None, ""):
            raise ValueError(f"{source}: record {i} has no 'answer' field.")
        gold = record["answer"]
        if info.kind == "numeric":
            try:
                gold_number(gold)
            except ValueError as error:
                raise ValueError(f"{source}: record {i}: {error}.") from None
        elif str(gold).strip() not in info.keywords:
            raise ValueError(f"{source}: record {i}: answer {gold!r} is not one of {'/'.join(info.keywords)}.")
    return records


def _find_folder(data_dir: Path, name: str) -> Path | None:
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
    folder = _find_folder(data_dir, info.name)
    if folder is None or not (folder / f"{split}.json").is_file():
        raise FileNotFoundError(f"Dataset {info.name}: {data_dir / info.name / f'{split}.json'} not found.")
    return folder / f"{split}.json"


def load_records(dataset: str, data_dir: str | Path | None = None, path: str | Path | None = None,
                 split: str = "test") -> list[dict]:
    """The test records of ``dataset`` (LLM-Adapters format), validated.

    Sources, first match wins: ``path`` (a JSON file); ``data_dir/<Name>/<split>.json`` (the
    folder name matched case-insensitively); otherwise the Hugging Face hub
    (:func:`load_hf_records`).
    """
    info = get_dataset(dataset)
    if info is BUILTIN and path is None:
        from .data import builtin_arithmetic

        return builtin_arithmetic(BUILTIN_TEST_SIZE, 0, "test")
    if path is None and data_dir is not None:
        path = dataset_file(info.name, data_dir, split)
    if path is None:
        return validate_records(load_hf_records(info.name, split), info.name, f"hf:{info.name}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Dataset {info.name}: {path} not found.")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}).") from None
    return validate_records(records, info.name, str(path))


# ---------------------------------------------------------------------------- Hugging Face sources
def _choices_instruction(question: str, options: Sequence[str], stem: str = "Answer") -> str:
    listed = " ".join(f"{stem}{i}: {text}" for i, text in enumerate(options, 1))
    formats = "/".join(f"{stem.lower()}{i}" for i in range(1, len(options) + 1))
    return f"Please choose the correct answer to the question: {question}\n\n{listed}\n\nAnswer format: {formats}"


def _from_gsm8k(row: dict) -> dict:
    return {"instruction": row["question"], "answer": row["answer"].split("####")[-1].strip().replace(",", "")}


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


# dataset -> (hub id, config, split used as "test", converter to an LLM-Adapters record)
HF_SOURCES: dict[str, tuple[str, str | None, str, Callable[[dict], dict]]] = {
    "gsm8k": ("openai/gsm8k", "main", "test", _from_gsm8k),
    "SVAMP": ("ChilleD/SVAMP", None, "test", _from_svamp),
    "MultiArith": ("ChilleD/MultiArith", None, "test", _from_multiarith),
    "AQuA": ("deepmind/aqua_rat", "raw", "test", _from_aqua),
    "boolq": ("google/boolq", None, "validation", _from_boolq),
    "piqa": ("baber/piqa", None, "validation", _from_piqa),  # parquet copy (ybisk/piqa is a script)
    "social_i_qa": ("lighteval/siqa", None, "validation", _from_siqa),  # parquet copy
    "hellaswag": ("Rowan/hellaswag", None, "validation", _from_hellaswag),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation", _from_winogrande),
    "ARC-Easy": ("allenai/ai2_arc", "ARC-Easy", "test", _from_arc),
    "ARC-Challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", _from_arc),
    "openbookqa": ("allenai/openbookqa", "main", "test", _from_arc),
}


def load_hf_records(dataset: str, split: str = "test") -> list[dict]:
    """Download ``dataset`` from the Hugging Face hub and convert it to LLM-Adapters records
    with the same instruction wording as LLM-Adapters' files (:data:`HF_SOURCES`).

    ``split="test"`` means the split the paper evaluates on (validation for the commonsense
    sets whose test labels are hidden). AddSub, SingleEq and mawps have no hub source: use
    LLM-Adapters' files with ``data_dir``.
    """
    info = get_dataset(dataset)
    if info.name not in HF_SOURCES:
        raise ValueError(f"No Hugging Face source is known for {info.name}; pass --data-dir with LLM-Adapters' "
                         f"dataset/{info.name}/test.json.")
    hub_id, config, hub_split, convert = HF_SOURCES[info.name]
    import datasets

    try:
        rows = datasets.load_dataset(hub_id, config, split=hub_split if split == "test" else split)
    except Exception as error:  # network, missing dataset, offline mode: one clear line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"Cannot load {hub_id} from the Hugging Face hub: {first}") from error
    return [{"input": "", "output": "", **convert(dict(row))} for row in rows]


# ---------------------------------------------------------------------------- models
def load_for_eval(model: str = "default", adapter: str | Path | None = None, dtype: str = "float32",
                  device: str | None = None, trust_remote_code: bool = False) -> tuple[nn.Module, Any, dict]:
    """Load ``(model, tokenizer, info)`` for evaluation.

    ``adapter``: a MoD folder (``mod_config.json``; loaded with :meth:`MoDModel.from_pretrained`,
    which raises :class:`~modetune.model.BaseModelMismatchError` on another base), a LoRA-only
    folder (``adapter_config.json``; peft), or ``None`` for the base model alone. The
    tokenizer pads on the left. ``info``: ``model``, ``adapter``, ``kind`` (base/lora/mod).
    """
    from .models import load_model

    adapter_path = Path(adapter) if adapter is not None else None
    if adapter_path is not None and not adapter_path.is_dir():
        raise FileNotFoundError(f"Adapter folder {adapter_path} does not exist.")
    base, tokenizer = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    kind = "base"
    if adapter_path is not None:
        from .config import CONFIG_NAME
        from .model import ADAPTER_CONFIG, BaseModelMismatchError, MoDModel

        if (adapter_path / CONFIG_NAME).exists():
            base, kind = MoDModel.from_pretrained(base, adapter_path), "mod"
        elif (adapter_path / ADAPTER_CONFIG).exists():
            from peft import PeftModel

            try:
                base = PeftModel.from_pretrained(base, str(adapter_path))
            except (RuntimeError, ValueError, KeyError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise BaseModelMismatchError(f"The LoRA adapter in {adapter_path} does not fit base model "
                                             f"{model!r}: {first}") from error
            kind = "lora"
        else:
            raise ValueError(f"{adapter_path} holds neither {CONFIG_NAME} (a MoD adapter) nor {ADAPTER_CONFIG} "
                             "(a LoRA adapter).")
    base.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = {"model": model, "adapter": None if adapter_path is None else str(adapter_path), "kind": kind}
    return base, tokenizer, info


def find_mod(model: nn.Module):
    """The :class:`MoDModel` in ``model`` (itself), or ``None`` for a plain/peft model."""
    from .model import MoDModel

    return model if isinstance(model, MoDModel) else None


def member_names(model: nn.Module) -> list[str]:
    """Labels of the ensemble members, shallow to final: ``member0 .. member{k-1}``."""
    mod = find_mod(model)
    return [] if mod is None else [f"member{i}" for i in range(mod.mod_config.k)]


def describe_member(model: nn.Module, member: int) -> str:
    """``"member1 = layer 29 of 30 (N-1)"`` (layers counted from 1)."""
    mod = find_mod(model)
    layer = mod.member_layers[member] + 1
    n = mod._parts.num_layers
    return f"member{member} = layer {layer} of {n} ({'N' if layer == n else f'N-{n - layer}'})"


def _member_index(model: nn.Module, member: int) -> int:
    mod = find_mod(model)
    if mod is None:
        raise ValueError("--member needs a MoD model (an adapter folder with mod_config.json).")
    k = mod.mod_config.k
    if not -k <= member < k:
        raise ValueError(f"member must be in 0..{k - 1} (shallow to final) or -{k}..-1, got {member}.")
    return member % k


@contextlib.contextmanager
def forced_member(model: nn.Module, member: int | None) -> Iterator[None]:
    """Route every token to one member (``None``: the model as it is).

    Member ``i``'s logits are then ``head(N_i(h_i))``: its own norm and the shared head, via
    the router's ``fixed`` switch, so ``generate`` (KV cache, beams) works unchanged.
    """
    if member is None:
        yield
        return
    index = _member_index(model, member)
    router = find_mod(model).router
    previous = router.fixed
    router.fixed = index
    try:
        yield
    finally:
        router.fixed = previous


# ---------------------------------------------------------------------------- generation
@dataclass
class EvalConfig:
    """Options of an evaluation run (defaults in brackets).

    Attributes:
        batch_size: prompts per ``generate`` call [16]; outputs do not depend on it.
        max_new_tokens: generation budget; ``None`` = the reference's 256 (arithmetic) or
            32 (commonsense) [None].
        num_beams: 1 = greedy [1]; 4 = the reference protocol's beam search.
        prompt_style: ``"alpaca"`` or ``"llm-adapters"`` (byte-exact reference string) [alpaca].
        limit: evaluate only the first ``limit`` items of each dataset [None = all].
        members: which routings to evaluate: ``None`` = the model as loaded (the ensemble for
            MoD); a list of member indices and/or ``None`` entries (``None`` = ensemble) [None].
        stop_at_answer: stop once the answer is settled (see the module doc) [True].
        sort_by_length: batch prompts of similar length together (longest first) [True].
        progress: show a progress bar with items/s [True].
        prefix_cache: greedy only: compute the prompt template's shared header once per
            batch instead of once per item (same math) [True].
    """

    batch_size: int = 16
    max_new_tokens: int | None = None
    num_beams: int = 1
    prompt_style: str = "alpaca"
    limit: int | None = None
    members: list[int | None] | None = None
    stop_at_answer: bool = True
    sort_by_length: bool = True
    progress: bool = True
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}.")
        if self.prompt_style not in STYLES:
            raise ValueError(f"Unknown prompt style {self.prompt_style!r}; choose one of {', '.join(STYLES)}.")

    @property
    def decoding(self) -> str:
        """``"greedy"`` or ``"beam<n>"``: the label stored with every result."""
        return "greedy" if self.num_beams == 1 else f"beam{self.num_beams}"

    def settings(self) -> dict:
        """The options that change outputs (a resumed run must match them)."""
        return {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, "prompt_style": self.prompt_style,
                "stop_at_answer": self.stop_at_answer, "decoding": self.decoding}


NUMERIC_STOP = re.compile(r"[Tt]he answer is[^\n]*?\d[^\n]*?\.\s")
LETTER_STOP = re.compile(r"[Tt]he answer is[^\n]*?[A-E]")


def answer_settled(dataset: str, text: str) -> bool:
    """Whether generation may stop: the rule of ``stop_at_answer`` (module doc)."""
    info = get_dataset(dataset)
    if info.kind == "numeric":
        return NUMERIC_STOP.search(text) is not None
    if info.kind == "letter":
        return LETTER_STOP.search(text) is not None
    return info.pattern.search(text) is not None


class AnswerStop(StoppingCriteria):
    """A ``StoppingCriteria`` that ends a row once :func:`answer_settled` holds for its text.

    Decodes only the last ``window`` generated tokens of each row, which is enough for the
    rules (they look at the text just generated; a row that stopped never resumes).
    """

    def __init__(self, tokenizer, dataset: str, prompt_length: int, window: int = 48) -> None:
        self.tokenizer, self.dataset, self.prompt_length, self.window = tokenizer, dataset, prompt_length, window

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        info = get_dataset(self.dataset)
        tail = input_ids[:, self.prompt_length:]
        if info.kind == "keyword":  # the first keyword may sit anywhere in the response
            texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        else:
            texts = self.tokenizer.batch_decode(tail[:, -self.window:], skip_special_tokens=True)
        done = [answer_settled(self.dataset, text) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generation_config(model: nn.Module, tokenizer, max_new_tokens: int, num_beams: int):
    """A fresh ``GenerationConfig``: greedy or beam search, no sampling knobs, the model's EOS."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    eos = getattr(own, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                            eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=getattr(own, "bos_token_id", None))


def _eos_ids(model: nn.Module, tokenizer) -> list[int]:
    own = getattr(model, "generation_config", None)
    eos = getattr(own, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _forward(model: nn.Module, **kwargs):
    """One forward pass; accepts the cache under transformers 5's name (``cache``)."""
    return model(**kwargs)


def _plain_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The (keys, values) of every layer of a cache made of plain full-attention dynamic
    layers, or ``None`` for any other cache (sliding windows, linear attention, ...)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _prefill_rows(model: nn.Module, rests: list[list[int]], prefix_kv, past: int, device):
    """Prefill each row alone (no padding, so no wasted compute and the same math as batch
    size 1), then merge the row caches into one left-padded batch cache. ``None`` when the
    model's cache is not a plain dynamic cache (the caller then prefills the padded batch)."""
    import torch.nn.functional as F
    from transformers.cache_utils import DynamicCache

    logits, caches = [], []
    for rest in rests:
        cache = DynamicCache(ddp_cache_data=prefix_kv) if prefix_kv is not None else None
        ids = torch.tensor([rest], device=device)
        out = _forward(model, input_ids=ids, attention_mask=torch.ones((1, past + len(rest)), dtype=torch.long,
                                                                        device=device),
                       position_ids=torch.arange(past, past + len(rest), device=device)[None], cache=cache,
                       use_cache=True, logits_to_keep=1)
        layers = _plain_layers(out.cache)
        if layers is None:
            return None
        logits.append(out.logits[:, -1:])
        caches.append(layers)
    lengths = [past + len(rest) for rest in rests]
    width = max(lengths)
    merged = []
    for layer in range(len(caches[0])):
        keys = torch.cat([F.pad(c[layer][0], (0, 0, width - n, 0)) for c, n in zip(caches, lengths)])
        values = torch.cat([F.pad(c[layer][1], (0, 0, width - n, 0)) for c, n in zip(caches, lengths)])
        merged.append((keys, values))
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=device)
    last = torch.tensor([[n - 1] for n in lengths], device=device)
    return torch.cat(logits), DynamicCache(ddp_cache_data=merged), mask, last


@torch.no_grad()
def greedy_generate(model: nn.Module, sequences: Sequence[Sequence[int]], max_new_tokens: int,
                    eos_ids: Sequence[int], stop: Callable[[list[int], list[list[int]]], list[bool]] | None = None,
                    prefix_len: int = 0, pad_id: int = 0) -> list[list[int]]:
    """Greedy decoding of a batch of token sequences with a KV cache that drops finished rows.

    The same computation as ``generate(do_sample=False)`` with left padding for each row
    (positions ``cumsum(mask) - 1``, argmax of the float32 logits of the last position), with
    savings that leave each row's math unchanged:

    - ``prefix_len > 0``: the first ``prefix_len`` tokens, identical in every row (the prompt
      template's header), are run once and their cache shared;
    - each row's prompt is prefilled alone (no padding to pay for) and the row caches are
      merged into one left-padded batch cache for decoding (models with a plain dynamic
      cache; others prefill the padded batch);
    - a row that emits EOS, or for which ``stop(rows, tokens)`` is true, leaves the batch
      (and the cache), so the batch stops paying for it.

    Returns the new tokens of each row, EOS included when emitted.
    """
    batch = len(sequences)
    if prefix_len and any(len(s) <= prefix_len or list(s[:prefix_len]) != list(sequences[0][:prefix_len])
                          for s in sequences):
        raise ValueError("prefix_len must be shorter than every sequence and shared by all of them.")
    device = next(model.parameters()).device
    prefix_kv, past, prefix_cache = None, 0, None
    if prefix_len:
        prefix = torch.tensor([list(sequences[0][:prefix_len])], device=device)
        out = _forward(model, input_ids=prefix, attention_mask=torch.ones_like(prefix),
                       position_ids=torch.arange(prefix_len, device=device)[None], use_cache=True, logits_to_keep=1)
        prefix_cache, past = out.cache, prefix_len
        prefix_kv = _plain_layers(prefix_cache)
    rests = [list(s[prefix_len:]) for s in sequences]
    prefilled = _prefill_rows(model, rests, prefix_kv, past, device) if (prefix_kv or not prefix_len) else None
    if prefilled is not None:
        logits, cache, mask, last = prefilled
    else:  # one padded batch: [prefix][padding][rest]
        if prefix_cache is not None and batch > 1:
            prefix_cache.batch_repeat_interleave(batch)
        width = max(len(r) for r in rests)
        input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rests], device=device)
        mask = torch.tensor([[1] * past + [0] * (width - len(r)) + [1] * len(r) for r in rests], device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = _forward(model, input_ids=input_ids, attention_mask=mask, position_ids=positions[:, past:],
                       cache=prefix_cache, use_cache=True, logits_to_keep=1)
        logits, cache, last = out.logits, out.cache, positions[:, -1:]
    out_tokens: list[list[int]] = [[] for _ in range(batch)]
    rows = list(range(batch))
    eos = torch.tensor(list(eos_ids) or [-1], device=device)
    for step in range(max_new_tokens):
        tokens = logits[:, -1].to(torch.float32).argmax(-1)
        for row, token in zip(rows, tokens.tolist()):
            out_tokens[row].append(token)
        finished = torch.isin(tokens, eos)
        if stop is not None:
            flags = stop(rows, [out_tokens[r] for r in rows])
            finished |= torch.tensor(flags, dtype=torch.bool, device=device)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows = [rows[i] for i in keep.tolist()]
            tokens, mask, last = tokens[keep], mask[keep], last[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        last = last + 1
        out = _forward(model, input_ids=tokens[:, None], attention_mask=mask, position_ids=last, cache=cache,
                       use_cache=True)
        logits, cache = out.logits, out.cache
    return out_tokens


_PROBES = ("0", "Z")


def template_prefixes(tokenizer) -> list[list[int]]:
    """Token prefixes shared by every prompt of one prompt template (each style, with and
    without input): the longest common token prefix of two probe prompts. Longest first."""
    found = []
    for style in STYLES:
        for has_input in (False, True):
            a, b = (tokenizer(format_prompt(p, p if has_input else "", style))["input_ids"] for p in _PROBES)
            n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            if n:
                found.append(list(a[:n]))
    return sorted(found, key=len, reverse=True)


def shared_prefix_length(tokenizer, sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest template prefix (:func:`template_prefixes`) that every sequence
    starts with and is longer than; 0 when there is none (no prefix sharing). It depends on
    the prompt template only, not on which prompts share the batch."""
    for prefix in template_prefixes(tokenizer):
        n = len(prefix)
        if all(len(s) > n and list(s[:n]) == prefix for s in sequences):
            return n
    return 0


@torch.no_grad()
def generate_responses(model: nn.Module, tokenizer, prompts: Sequence[str], dataset: str, max_new_tokens: int,
                       num_beams: int = 1, stop_at_answer: bool = True, prefix_cache: bool = True) -> list[str]:
    """Generate one batch; return the decoded continuations (special tokens skipped), stripped.

    Greedy uses :func:`greedy_generate` (the template header computed once with
    ``prefix_cache``; finished rows leave the batch); beam search uses the model's own
    ``generate`` on the left-padded batch, with :class:`AnswerStop`.
    """
    from transformers import StoppingCriteriaList

    if num_beams == 1:
        sequences = [tokenizer(p)["input_ids"] for p in prompts]
        keyword = get_dataset(dataset).kind == "keyword"
        stop = None
        if stop_at_answer:
            def stop(rows: list[int], tokens: list[list[int]]) -> list[bool]:
                texts = tokenizer.batch_decode([t if keyword else t[-48:] for t in tokens], skip_special_tokens=True)
                return [answer_settled(dataset, text) for text in texts]

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        new = greedy_generate(model, sequences, max_new_tokens, _eos_ids(model, tokenizer), stop,
                              prefix_len=shared_prefix_length(tokenizer, sequences) if prefix_cache else 0,
                              pad_id=pad)
    else:
        if tokenizer.padding_side != "left":
            raise ValueError("Batched beam search needs a tokenizer with padding_side='left'.")
        device = next(model.parameters()).device
        encoded = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
        length = encoded["input_ids"].shape[1]
        stopping = StoppingCriteriaList([AnswerStop(tokenizer, dataset, length)] if stop_at_answer else [])
        out = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                             generation_config=generation_config(model, tokenizer, max_new_tokens, num_beams),
                             stopping_criteria=stopping)
        new = out[:, length:].tolist()
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


# ---------------------------------------------------------------------------- runs
def results_path(output_dir: str | Path, dataset: str, member: int | None) -> Path:
    """``<out>/<dataset>.jsonl`` for the model as loaded, ``<out>/<dataset>.member<i>.jsonl`` for member ``i``."""
    suffix = "" if member is None else f".member{member}"
    return Path(output_dir) / f"{dataset}{suffix}{RESULTS_SUFFIX}"


def read_results(path: str | Path) -> list[dict]:
    """Rows of a results JSONL file; a partial last line (an interrupted write) is ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Results file {path} not found.")
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: cut off mid-write
                break
            raise ValueError(f"{path}: line {number} is not valid JSON.") from None
    return rows


def _resume_rows(path: Path, ids: list[str]) -> dict[int, dict]:
    """Rows already written to ``path`` (for resuming), checked against the current items."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # drop a half-written last row before appending
        text = text[: text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    done = {}
    for row in read_results(path):
        index = row.get("index")
        if not isinstance(index, int) or index >= len(ids) or row.get("id") != ids[index]:
            raise ValueError(f"{path} holds results for other items (item {index}); use another output folder.")
        done[index] = row
    return done


def _check_run_file(output_dir: Path, run: dict) -> None:
    path = output_dir / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        for key in ("settings", "model", "adapter"):
            if previous.get(key) != run.get(key):
                raise ValueError(f"{output_dir} holds a run with other {key} ({previous.get(key)} vs "
                                 f"{run.get(key)}); use another output folder.")
        run["label"] = previous.get("label", run["label"])
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=2) + "\n")


def _write_sorted(path: Path, rows: dict[int, dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for index in sorted(rows):
            handle.write(json.dumps(rows[index], ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, dynamic_ncols=True)


def evaluate_dataset(model: nn.Module, tokenizer, dataset: str, records: list[dict], config: EvalConfig,
                     output_dir: str | Path) -> dict[str, dict]:
    """Evaluate ``records`` of ``dataset`` for every routing in ``config.members``.

    One pass over the data: items are sorted by prompt length and batched once, and each
    batch is generated for every routing in turn (member texts diverge, so each routing
    needs its own generation). Rows are appended to ``<dataset>[.member<i>].jsonl`` after every batch, so
    an interrupted run resumes where it stopped; at the end each file is rewritten in item
    order. Returns ``{variant: {n, correct, accuracy, items_per_s, ...}}``.
    """
    info = get_dataset(dataset)
    output_dir = Path(output_dir)
    members = config.members if config.members is not None else [None]
    for member in members:
        if member is not None:
            _member_index(model, member)
    max_new = config.max_new_tokens or info.default_max_new_tokens
    ids = [item_id(r) for r in records]  # all items: a file may hold rows beyond this run's limit
    records = records[: config.limit] if config.limit else records
    prompts = [format_prompt(r["instruction"], r.get("input") or "", config.prompt_style) for r in records]
    paths = {m: results_path(output_dir, info.name, m) for m in members}
    done = {m: _resume_rows(paths[m], ids) for m in members}
    todo = [i for i in range(len(records)) if any(i not in done[m] for m in members)]
    if config.sort_by_length:
        lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
        todo.sort(key=lambda i: (-lengths[i], i))
    pending = sum(1 for i in todo for m in members if i not in done[m])
    generated, started = 0, time.perf_counter()
    with _progress(pending, info.name, config.progress) as bar:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            for member in members:
                items = [i for i in batch if i not in done[member]]
                if not items:
                    continue
                with forced_member(model, member):
                    responses = generate_responses(model, tokenizer, [prompts[i] for i in items], info.name, max_new,
                                                   config.num_beams, config.stop_at_answer, config.prefix_cache)
                rows = []
                for i, response in zip(items, responses):
                    extracted, correct = score_response(info.name, response, records[i]["answer"])
                    rows.append({"index": i, "id": ids[i], "dataset": info.name, "variant": _variant(model, member),
                                 "decoding": config.decoding, "prompt": prompts[i], "response": response,
                                 "extracted": extracted, "gold": records[i]["answer"], "correct": correct})
                with paths[member].open("a", encoding="utf-8") as handle:
                    for row in rows:
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    handle.flush()
                done[member].update({row["index"]: row for row in rows})
                generated += len(rows)
                bar.update(len(rows))
    seconds = time.perf_counter() - started
    summary = {}
    for member in members:
        _write_sorted(paths[member], done[member])
        rows = [row for index, row in done[member].items() if index < len(records)]
        correct = sum(bool(row["correct"]) for row in rows)
        summary[_variant(model, member)] = {
            "dataset": info.name, "n": len(rows), "correct": correct, "accuracy": correct / len(rows) if rows else 0.0,
            "file": paths[member].name, "decoding": config.decoding,
            "generated": generated, "seconds": round(seconds, 3),
            "items_per_s": round(generated / seconds, 3) if generated and seconds > 0 else None,
        }
    return summary


def _variant(model: nn.Module, member: int | None) -> str:
    if member is None:
        return "ensemble" if find_mod(model) is not None else "model"
    return f"member{_member_index(model, member)}"


def load_datasets(datasets: str | Sequence[str] | list[tuple[str, list[dict]]], data_dir: str | Path | None = None
                  ) -> list[tuple[str, list[dict]]]:
    """``[(name, records)]`` for dataset names/``name=path`` specs, every one loaded and
    validated (so bad input fails before any model is loaded). Already loaded pairs pass."""
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], tuple):
        return datasets
    loaded = []
    for spec in parse_dataset_list(datasets):
        spec, options = parse_source(spec)
        name, _, path = spec.partition("=")
        records = select_records(load_records(name, data_dir=data_dir, path=path or None), options)
        loaded.append((get_dataset(name).name, records))
    return loaded


def evaluate(model: nn.Module, tokenizer, datasets: str | Sequence[str] | list[tuple[str, list[dict]]],
             config: EvalConfig,
             output_dir: str | Path, data_dir: str | Path | None = None, info: dict | None = None,
             label: str | None = None) -> dict:
    """Evaluate a loaded model on several datasets; write results, ``run.json`` and the summary.

    ``datasets``: names (``"gsm8k,svamp"``, ``"all"``), ``name=path.json`` entries, or the
    output of :func:`load_datasets`. Every dataset is loaded and validated before any
    generation starts. Returns the summary
    (:func:`modetune.analysis.summarize_run`).
    """
    from . import __version__
    from .analysis import report_from_summaries, summarize_run, write_summary

    output_dir = Path(output_dir)
    loaded = load_datasets(datasets, data_dir)
    info = dict(info or {})
    members = config.members if config.members is not None else [None]
    run = {"label": label or _default_label(info), "model": info.get("model"), "adapter": info.get("adapter"),
           "kind": info.get("kind"), "settings": config.settings(),
           "members": {_variant(model, m): (describe_member(model, _member_index(model, m)) if m is not None
                                            else _variant(model, None)) for m in members},
           "modetune_version": __version__}
    _check_run_file(output_dir, run)
    timings = {}
    for name, records in loaded:
        timings[name] = evaluate_dataset(model, tokenizer, name, records, config, output_dir)
    summary = summarize_run(output_dir)
    summary["timings"] = timings
    write_summary(summary, output_dir)
    summary["markdown"] = report_from_summaries([summary])["markdown"]
    return summary


def _default_label(info: dict) -> str:
    if info.get("adapter"):
        path = Path(info["adapter"]).resolve()
        return path.parent.name if path.name == "adapter" else path.name  # runs/NAME/adapter -> NAME
    return Path(str(info.get("model") or "model")).name


def parse_members(member: int | None = None, members: str | None = None, model: nn.Module | None = None
                  ) -> list[int | None] | None:
    """CLI ``--member i`` / ``--members all|0,2,ensemble`` -> :attr:`EvalConfig.members`."""
    if member is not None and members is not None:
        raise ValueError("Give --member or --members, not both.")
    if member is not None:
        return [member]
    if members is None:
        return None
    if members.strip().lower() == "all":
        if model is None or find_mod(model) is None:
            raise ValueError("--members all needs a MoD model (an adapter folder with mod_config.json).")
        return [*range(find_mod(model).mod_config.k), None]
    out: list[int | None] = []
    for part in members.split(","):
        part = part.strip().lower()
        if part in ("ensemble", "model", "main"):
            out.append(None)
        else:
            try:
                out.append(int(part.removeprefix("member")))
            except ValueError:
                raise ValueError(f"--members: {part!r} is not a member index, 'ensemble' or 'all'.") from None
    return out


def run_eval(model: str = "default", adapter: str | None = None, datasets: str = "all", output: str | None = None,
             data_dir: str | None = None, member: int | None = None, members: str | None = None,
             label: str | None = None, dtype: str = "float32", device: str | None = None, **options) -> dict:
    """Load a model (and adapter), evaluate it, and return the summary: the CLI's ``eval``.

    ``options`` are :class:`EvalConfig` fields. The output folder defaults to
    ``ADAPTER/eval-<decoding>`` or ``eval/<model>-<decoding>``.
    """
    config = EvalConfig(**options)
    data = load_datasets(datasets, data_dir)  # bad names, files, records fail before the model loads
    _quiet_transformers()
    loaded, tokenizer, info = load_for_eval(model, adapter, dtype=dtype, device=device)
    config = dataclasses.replace(config, members=parse_members(member, members, loaded))
    if output is None:
        base = Path(adapter) if adapter else Path("eval") / Path(model).name
        output = str(base / f"eval-{config.decoding}") if adapter else f"{base}-{config.decoding}"
    return evaluate(loaded, tokenizer, data, config, output, info=info, label=label)


def _quiet_transformers() -> None:
    """No weight-loading progress bars or advisory warnings from transformers (command line)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
