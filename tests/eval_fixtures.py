"""Helpers shared by the evaluation tests (test_eval_*.py import them from here)."""

from __future__ import annotations

import json
from pathlib import Path

from modetune import MoDConfig, get_mod_model
from modetune.eval.datasets import get_dataset
from tiny import perturb, tiny_model


def tiny_llama(tokenizer, seed=0, **overrides):
    """A tiny random Llama over the default tokenizer whose greedy outputs vary with the prompt
    (untied head, wider init: a tied, narrow-init model just repeats the last prompt token)."""
    kwargs = {"tie_word_embeddings": False, "initializer_range": 0.2, **overrides}
    return tiny_model("llama", seed=seed, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **kwargs)


def make_mod_model(tokenizer):
    """A k=3 MoD model over :func:`tiny_llama` with its router and norms moved off their init
    (the ``mod_model`` fixture of the test modules)."""
    return perturb(get_mod_model(tiny_llama(tokenizer), MoDConfig(k=3)).eval(), router_std=2.0)


PROMPTS = [
    "What is 2 + 3?",
    "Tom has 7 apples and eats 3 of them. How many apples are left? Answer with a number.",
    "A train travels 60 miles per hour for 3 hours, then 40 miles per hour for 2 hours. How far did it go in total?",
    "Is water wet?",
    "Please choose the correct answer to the question: x\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2",
]


def make_records(n, dataset="gsm8k"):
    """``n`` test items of ``dataset`` with valid gold answers (prompts cycle through PROMPTS)."""
    kind = get_dataset(dataset).kind
    gold = {"numeric": lambda i: str(float(i)), "letter": lambda i: "ABCDE"[i % 5],
            "keyword": lambda i: get_dataset(dataset).keywords[i % 2]}[kind]
    return [{"instruction": f"{PROMPTS[i % len(PROMPTS)]} (item {i})" + " more words" * (i % 3), "input": "",
             "output": "rationale", "answer": gold(i)} for i in range(n)]


def write_json(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path
