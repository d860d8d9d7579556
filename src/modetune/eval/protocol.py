"""The LLM-Adapters scoring protocol: answer extraction, scoring, and when an answer is settled.

Pure Python (no torch), so the rules can be read and tested alone. The reference is
LLM-Adapters' ``evaluate.py`` (arithmetic) and ``commonsense_evaluate.py`` (commonsense);
docs/evaluation.md describes the protocol. Every rule, exactly as implemented here:

Prompt
    ``modetune.utils.prompts.format_prompt(instruction, input, style)`` (Alpaca; ``style="llm-adapters"``
    gives the reference's byte-exact string). The response is the decoded continuation after
    the prompt (special tokens skipped), stripped of surrounding whitespace.

The scored text (``cut_at_next_response``, default on)
    Only the text before the first ``### Response:`` the model itself writes, stripped
    (:func:`first_response`): the reference decodes prompt + continuation and scores
    ``output.split("### Response:")[1]``, so a model that starts a new turn is scored on its
    first answer. With the option off the whole continuation is scored.

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

Deliberate differences from the reference scripts
    mawps is scored with the numeric rule (the reference's ``evaluate.py`` has no mawps rule
    at all); numeric gold answers are read with surrounding whitespace and thousands
    separators removed (``"1,234"`` is 1234, on which the reference's ``float(answer)``
    would raise); keyword and letter golds are compared stripped of surrounding whitespace.

Decoding (:class:`modetune.eval.runner.EvalConfig`, :mod:`modetune.eval.generation`)
    Greedy by default; ``num_beams=4`` is the reference's beam search. The decoding mode is
    recorded with every result (``"greedy"``/``"beam4"``). Generation stops at EOS, at
    ``max_new_tokens`` (default 256 for arithmetic, 32 for commonsense, the reference's
    values), and, with ``stop_at_answer`` (default on), once the answer is settled:
    for keyword and letter datasets as soon as the first keyword/letter has appeared (exact:
    the extracted answer cannot change after that); for numeric datasets once
    ``The answer is ... <number> ... .`` is followed by whitespace. The numeric stop is NOT
    exact: a model that kept writing numbers after that sentence would have a different last
    number under the reference. With ``cut_at_next_response``, generation also stops once the
    model writes ``### Response:`` (exact: nothing after it is scored), and the rules look at
    the cut text. ``stop_at_answer=False`` generates to EOS or the budget, as the reference
    does; it changes the score only through the numeric stop's rare cases.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..utils.errors import DataError
from ..utils.prompts import RESPONSE_MARKER
from .datasets import NUMBER_RE, get_dataset

NUMERIC_TOLERANCE = 1e-3
NUMERIC_STOP = re.compile(r"[Tt]he answer is[^\n]*?\d[^\n]*?\.\s")
LETTER_STOP = re.compile(r"[Tt]he answer is[^\n]*?[A-E]")


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


def first_response(response: str) -> str:
    """The text before the first ``### Response:`` in a model's continuation, stripped: the
    reference's ``decoded.split("### Response:")[1].strip()`` (the prompt's own marker is the
    split's first one)."""
    return response.split(RESPONSE_MARKER, 1)[0].strip()


def gold_number(gold: Any) -> float:
    """A numeric gold answer as a float (``"1,234"`` and ``1234.0`` both read 1234.0)."""
    try:
        return float(str(gold).replace(",", "").strip())
    except ValueError:
        raise DataError(f"gold answer {gold!r} is not a number") from None


def is_correct(dataset: str, extracted: float | str | None, gold: Any) -> bool:
    """Whether an extracted answer is right: ``|pred - gold| <= 0.001`` for numeric sets,
    string equality with the (stripped) gold for the others; ``None`` is always wrong."""
    if extracted is None:
        return False
    info = get_dataset(dataset)
    if info.kind == "numeric":
        return abs(float(extracted) - gold_number(gold)) <= NUMERIC_TOLERANCE
    return extracted == str(gold).strip()


def score_response(dataset: str, response: str, gold: Any, cut_at_next_response: bool = True
                   ) -> tuple[float | str | None, bool]:
    """``(extracted, correct)`` for one response (:func:`first_response` of it, by default)."""
    extracted = extract_answer(dataset, first_response(response) if cut_at_next_response else response)
    return extracted, is_correct(dataset, extracted, gold)


def item_id(record: dict) -> str:
    """A stable id of a test item: SHA-1 of its instruction and input (12 hex digits)."""
    text = f"{record.get('instruction', '')}\x00{record.get('input') or ''}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def answer_settled(dataset: str, text: str, cut_at_next_response: bool = True) -> bool:
    """Whether generation may stop: the rule of ``stop_at_answer`` (module doc); with
    ``cut_at_next_response``, also as soon as the model writes ``### Response:``."""
    if cut_at_next_response and RESPONSE_MARKER in text:
        return True
    info = get_dataset(dataset)
    if info.kind == "numeric":
        return NUMERIC_STOP.search(text) is not None
    if info.kind == "letter":
        return LETTER_STOP.search(text) is not None
    return info.pattern.search(text) is not None
