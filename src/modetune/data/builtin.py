"""The built-in offline training source: procedurally generated arithmetic word problems.

Worked answers end in "The answer is N."; deterministic by seed. One question in ten (by a
hash of its text) belongs to the test split, which ``modetune eval --datasets builtin`` reads,
so test questions never occur in training (``holdout="question"``, the default the main job
uses). Questions that differ only in names and objects can still straddle that split; with
``holdout="template"`` the split is by a hash of the template and its numbers instead, so no
held-out item shares both its template and its numbers with a training item
(``builtin:arithmetic-tn[:N]`` as a training source).
"""

from __future__ import annotations

import hashlib
import random
import re

from ..utils.errors import DataError
from .text import normalise_text

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
    return "test" if hashlib.sha1(normalise_text(question).encode()).digest()[0] < 26 else "train"


def template_key(question: str) -> str:
    """The template and numbers of a question: its text with every name and object word dropped
    is the template, and its numbers in order. Two questions with the same key differ only in names
    and objects."""
    words = set(NAMES) | set(ITEMS)
    template = " ".join("#" if re.fullmatch(r"\d+", w) else w for w in re.findall(r"\w+", question) if w not in words)
    return template + "|" + ",".join(re.findall(r"\d+", question))


def _template_bucket(question: str) -> str:
    """``"test"`` for one template-and-numbers key in ten (by a SHA-1 of :func:`template_key`)."""
    return "test" if hashlib.sha1(template_key(question).encode()).digest()[0] < 26 else "train"


def builtin_arithmetic(n: int, seed: int = 0, split: str = "train", holdout: str = "question") -> list[dict]:
    """``n`` distinct generated problems of one split. The split is fixed by a hash of the
    question (``holdout="question"``) or of its template and numbers (``"template"``; then the
    test items also have distinct keys), so no test item can ever occur in training, whatever
    the seeds and sizes."""
    if holdout not in ("question", "template"):
        raise DataError(f"holdout must be 'question' or 'template', got {holdout!r}.")
    bucket = _bucket if holdout == "question" else _template_bucket
    rng = random.Random(f"{split}-{seed}" if holdout == "question" else f"{split}-{seed}-template")
    seen: set[str] = set()
    records = []
    for _ in range(n * 200):
        if len(records) == n:
            break
        question, worked, result = _problem(rng)
        key = normalise_text(question) if holdout == "question" or split == "train" else template_key(question)
        if key in seen or bucket(question) != split:
            continue
        seen.add(key)
        records.append({"instruction": question, "input": "", "output": worked, "answer": str(result)})
    if len(records) < n:
        raise DataError(f"Could only generate {len(records)} distinct built-in problems for the {split} split.")
    return records


def builtin_split(n_train: int, n_test: int, seed: int = 0, holdout: str = "question"
                  ) -> tuple[list[dict], list[dict]]:
    """Train and held-out test problems; the test questions never occur in training."""
    return builtin_arithmetic(n_train, seed, "train", holdout), builtin_arithmetic(n_test, 0, "test", holdout)
