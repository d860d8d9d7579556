"""Training records (modetune.data): the built-in split, prompt masking, real files, source options."""

from __future__ import annotations

import json

import pytest

from modetune.data import builtin_split, load_json_records, load_training_records, tokenize_record
from modetune.utils.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_builtin_split_never_overlaps():
    from modetune.eval import sources

    train, test = builtin_split(2000, 200, seed=3)
    assert len(train) == 2000 and len(test) == 200
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}
    assert sources.load_test_items("builtin") == test  # what `modetune eval --datasets builtin` reads
    other_seed = load_training_records("builtin:arithmetic:2000", seed=42)
    assert not {r["instruction"] for r in other_seed} & {r["instruction"] for r in test}
    for record in train[:50]:
        assert record["output"].endswith(f"The answer is {record['answer']}.")


def test_prompt_tokens_are_masked(default_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir))
    record = {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5.\nThe answer is 5."}
    masked = tokenize_record(record, tokenizer, 256, train_on_inputs=False)
    full = tokenize_record(record, tokenizer, 256, train_on_inputs=True)
    assert masked.input_ids == full.input_ids and full.labels == full.input_ids
    assert full.input_ids[-1] == tokenizer.eos_token_id
    target = [t for t, label in zip(masked.input_ids, masked.labels) if label != -100]
    assert tokenizer.decode(target).startswith("2 + 3 = 5.")
    short = tokenize_record(record, tokenizer, 10, train_on_inputs=False)
    assert len(short.input_ids) == 10 and all(label == -100 for label in short.labels)


def test_real_math_split_records_load(packaged_data):
    records = load_json_records(packaged_data / "math-split" / "train.json")
    assert len(records) == 1573
    with pytest.warns(UserWarning, match="skipped 3 record"):
        usable = load_training_records(str(packaged_data / "math-split" / "train.json"))
    assert len(usable) == 1573 - 3 and all(r["output"].strip() for r in usable)


def test_source_options_split_by_hash_and_sample(tmp_path):
    from modetune.data import hash_half, parse_source
    from modetune.eval.runner import load_datasets

    questions = [f"Please choose: question number {i}?" for i in range(400)]
    records = [{"instruction": q, "input": "", "output": "the correct answer is solution1", "answer": "solution1"}
               for q in questions + questions[:50]]  # 50 duplicated questions must share a half
    path = tmp_path / "piqa" / "test.json"
    path.parent.mkdir()
    path.write_text(json.dumps(records))
    train = load_training_records(f"{path}?half=train")
    _, test = load_datasets("piqa?half=test", tmp_path)[0]
    train_q, test_q = {r["instruction"] for r in train}, {r["instruction"] for r in test}
    assert not train_q & test_q and train_q | test_q == set(questions)
    assert 150 < len(train_q) < 250  # a 50/50 split by hash parity
    assert all(hash_half(r["instruction"]) == "train" for r in train)
    sample = load_training_records(f"{path}?half=train&n=20,{path}?n=5")
    assert len(sample) == 25 and sample == load_training_records(f"{path}?half=train&n=20,{path}?n=5", seed=7)
    assert {r["instruction"] for r in sample[:20]} <= train_q
    with pytest.raises(DataError, match="unknown source option"):
        parse_source("x.json?halves=train")
    with pytest.raises(DataError, match="half must be train or test"):
        parse_source("x.json?half=dev")
