"""The contamination guard: training-question fingerprints, the warning before training, and the
per-dataset counts of evaluated items that were trained on."""

from __future__ import annotations

import json
import warnings

import pytest

from eval_fixtures import make_records, write_json
from modetune.cli import main
from modetune.data import load_training_records
from modetune.data.contamination import (
    FINGERPRINT_NAME,
    count_in_training,
    fingerprint,
    known_evaluation_sets,
    overlap_message,
    question_key,
    read_fingerprint,
    training_overlap,
    warn_training_overlap,
)
from modetune.data.packaged import LLM_ADAPTERS
from modetune.utils.errors import ContaminationWarning
from train_helpers import train_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _packaged(name: str, n: int) -> list[dict]:
    return json.loads((LLM_ADAPTERS / name / "test.json").read_text())[:n]


def _contamination_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ContaminationWarning)]


def test_keys_normalise_the_question_and_the_fingerprint_holds_no_text():
    a = {"instruction": "What is 2 + 3?", "input": ""}
    assert question_key(a) == question_key({"instruction": "what is 2+3", "input": None})
    assert question_key(a) != question_key({"instruction": "What is 2 + 4?"})
    assert question_key({"instruction": "Q", "input": "ctx"}) == question_key({"instruction": "Qctx"})
    records = [a, {"instruction": "WHAT IS 2+3?"}, {"instruction": "Another question", "input": "x"}]
    data = fingerprint(records)
    assert data["records"] == 3 and data["unique_questions"] == 2 and data["keys"] == sorted(data["keys"])
    assert "what" not in json.dumps(data).lower()  # hashes, not the text
    assert count_in_training([a, {"instruction": "new"}], set(data["keys"])) == 1


def test_training_overlap_warns_above_the_threshold_only():
    sets = {"x/test.json": {question_key(r) for r in _packaged("gsm8k", 10)}}
    overlapping = _packaged("gsm8k", 7) + make_records(3)
    assert training_overlap(overlapping, sets) == {"x/test.json": 7}
    assert training_overlap(make_records(5), sets) == {}
    assert overlap_message({"x/test.json": 7}, 5).startswith("the training data shares questions")
    assert "x/test.json (7)" in overlap_message({"x/test.json": 7}, 5)
    assert overlap_message({"x/test.json": 5}, 5) is None  # a handful is tolerated
    with pytest.warns(ContaminationWarning, match=r"llm-adapters/gsm8k/test.json \(7\)"):
        assert warn_training_overlap(overlapping, 5)["llm-adapters/gsm8k/test.json"] == 7
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert warn_training_overlap(make_records(8), 5) == {}
        assert warn_training_overlap(overlapping, -1) == {}  # the check switched off
    assert _contamination_warnings(record) == []


def test_real_training_sets_overlap_their_test_sets_by_a_few_items():
    sets = known_evaluation_sets()
    assert len(sets) == 14 + 7  # the packaged LLM-Adapters test sets and the math-split halves
    boolq = training_overlap(load_training_records("packaged:llm-adapters/boolq/train.json"), sets)
    assert boolq == {"llm-adapters/boolq/test.json": 6}
    math = training_overlap(load_training_records("packaged:math-split/train.json"), sets)
    assert not any(name.startswith("math-split/") for name in math)  # the split's halves are clean
    assert math["llm-adapters/gsm8k/test.json"] > 100  # the full test sets are not


def test_train_records_its_questions_and_eval_counts_the_trained_items(tiny_model_dir, tmp_path, capsys):
    trained = _packaged("gsm8k", 6) + make_records(4, "gsm8k")
    data = write_json(tmp_path / "train.json", trained)
    out = tmp_path / "run"
    with pytest.warns(ContaminationWarning, match=r"llm-adapters/gsm8k/test.json \(6\)"):
        assert main(train_args(tiny_model_dir, out, "--data", str(data), "--max-steps", "1", "--batch-size", "2",
                               "--micro-batch-size", "2", "--val-size", "0")) == 0
    assert read_fingerprint(out / "adapter") == {question_key(r) for r in trained}
    assert json.loads((out / FINGERPRINT_NAME).read_text())["records"] == 10
    # evaluation: 3 trained questions (written differently) among 5 items
    seen = [{**r, "instruction": r["instruction"].upper() + " "} for r in trained[:3]]
    test_dir = write_json(tmp_path / "eval-data" / "gsm8k" / "test.json", seen + make_records(6)[4:]).parent.parent
    common = ["eval", "--model", str(tiny_model_dir), "--adapter", str(out / "adapter"), "--datasets", "gsm8k",
              "--data-dir", str(test_dir), "--max-new-tokens", "2", "--no-progress"]
    capsys.readouterr()
    with pytest.warns(ContaminationWarning, match="trained on: gsm8k 3 of 5"):
        assert main([*common, "--output", str(tmp_path / "eval")]) == 0
    assert "GSM8K 3 of 5" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "run.json").read_text())["in_training"] == {"gsm8k": 3}
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["in_training"] == {"gsm8k": 3}
    assert "contamination" in (tmp_path / "eval" / "summary.md").read_text()
    with pytest.warns(ContaminationWarning, match="trained on: gsm8k 1 of 1"):
        assert main([*common, "--limit", "1", "--output", str(tmp_path / "eval-1")]) == 0  # counts what is evaluated


def test_a_clean_run_warns_nowhere_and_counts_zero(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(train_args(tiny_model_dir, out, "--max-steps", "1", "--batch-size", "2",
                               "--micro-batch-size", "2")) == 0
        test_dir = write_json(tmp_path / "data" / "gsm8k" / "test.json", make_records(3)).parent.parent
        assert main(["eval", "--model", str(tiny_model_dir), "--adapter", str(out / "adapter"), "--datasets",
                     "gsm8k", "--data-dir", str(test_dir), "--max-new-tokens", "2", "--no-progress",
                     "--output", str(tmp_path / "eval")]) == 0
    assert _contamination_warnings(record) == []
    assert json.loads((tmp_path / "eval" / "run.json").read_text())["in_training"] == {"gsm8k": 0}
    assert "contamination" not in (tmp_path / "eval" / "summary.md").read_text()
