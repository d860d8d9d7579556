"""Tokenisation of training records: prompt tokens masked, validation split."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..utils.errors import DataError
from ..utils.prompts import format_prompt
from .chat import alpaca_messages, tokenize_conversation


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]


def tokenize_record(record: dict, tokenizer, cutoff_len: int, train_on_inputs: bool, style: str = "alpaca",
                    add_eos: bool = True) -> Tokenized:
    """Prompt + output (+ EOS), truncated to ``cutoff_len``; prompt tokens get label -100
    unless ``train_on_inputs`` (LLM-Adapters' choice for the paper's runs).

    A conversation (``messages``), or any record under ``style="chat"``, is rendered with the
    tokenizer's chat template instead and learns its assistant turns only
    (:func:`modetune.data.chat.tokenize_conversation`; the template supplies the end of turn)."""
    if "messages" in record or style == "chat":
        messages = record["messages"] if "messages" in record else alpaca_messages(record)
        ids, labels = tokenize_conversation(messages, tokenizer, train_on_inputs)
        return Tokenized(ids[:cutoff_len], labels[:cutoff_len])
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


def pack_rows(rows: list[dict], block: int) -> list[dict]:
    """Tokenised rows concatenated in order and cut into blocks of ``block`` tokens (the last
    block may be shorter): no padding, every block full. Each row's first label becomes -100, so
    no token is trained to predict the start of the next record from the end of the previous
    one; attention still spans record boundaries inside a block (TRL's ``wrapped`` packing).
    Blocks with no target left are dropped."""
    ids = [token for row in rows for token in row["input_ids"]]
    labels = [label for row in rows for label in [-100, *row["labels"][1:]]]
    blocks = []
    for start in range(0, len(ids), block):
        chunk = labels[start:start + block]
        if any(label != -100 for label in chunk[1:]):
            blocks.append({"input_ids": ids[start:start + block], "attention_mask": [1] * len(chunk), "labels": chunk})
    return blocks


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
