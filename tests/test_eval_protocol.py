"""The LLM-Adapters protocol (extraction, scoring, early stop), the dataset registry, and
test-item sources (files, data folders, hub converters)."""

from __future__ import annotations

import json
import re

import pytest

from eval_fixtures import make_records, write_json
from modetune.eval.datasets import ARITHMETIC, COMMONSENSE, DATASETS, get_dataset, parse_dataset_list
from modetune.eval.protocol import (
    answer_settled,
    extract_answer,
    first_response,
    gold_number,
    is_correct,
    item_id,
    score_response,
)
from modetune.eval.sources import CONVERTERS, load_hf_records, load_test_items, resolve_data_dir, validate_test_items
from modetune.utils.errors import ConfigError, DataError, UserError


# ---------------------------------------------------------------------------- extraction and scoring
@pytest.mark.parametrize("response, expected", [
    ("The answer is 1,234.", 1234.0),                       # thousands separator dropped
    ("3 + 4 = 7. The answer is 7", 7.0),                    # the LAST number
    ("She owes -5 dollars, so the answer is -12.", -12.0),  # negative
    ("The answer is 3.75 hours.", 3.75),                    # decimal
    ("The answer is 5.", 5.0),                              # trailing period is not a decimal part
    ("It is .5 of it", 5.0),                                # no leading-dot decimals: ".5" reads 5
    ("between 3-5", -5.0),                                  # a hyphen before a digit is a minus sign
    ("version v2", 2.0),                                    # digits inside words count
    ("3,4", 34.0),                                          # commas vanish even between numbers
    ("1/2", 2.0),
    ("$1,000,000.50 in total", 1000000.5),
])
def test_numeric_extraction(response, expected):
    assert extract_answer("gsm8k", response) == expected


def test_numeric_no_number_is_wrong():
    assert extract_answer("SVAMP", "I do not know.") is None
    assert not is_correct("SVAMP", None, "0")
    assert extract_answer("AddSub", "") is None


@pytest.mark.parametrize("pred, gold, ok", [
    (576.0, "576.0", True), (576.0009, "576", True), (576.0011, "576", False), (0.333, "0.3333333333", True),
    (0.332, "0.3333333333", False), (-3.0, "-3", True), (3.0, "-3", False), (1234.0, "1,234", True),
    (1.8333, "1.8333333333333335", True),
])
def test_numeric_tolerance(pred, gold, ok):
    assert is_correct("mawps", pred, gold) is ok


@pytest.mark.parametrize("response, expected", [
    ("The answer is (C).", "C"),
    ("Answer: C", "A"),                  # the capital A of "Answer" comes first: reference behaviour
    ("Because 3x = 9, x = 3. The answer is (D)", "B"),  # "Because"
    ("the answer is c", None),           # lower case never matches
    ("Then x = 4, so (E)", "E"),         # "T" is not A-E
    ("no capitals here", None),
    ("  (B) 1000  ", "B"),
])
def test_aqua_first_capital_letter(response, expected):
    assert extract_answer("AQuA", response) == expected
    assert is_correct("AQuA", expected, "B") is (expected == "B")


@pytest.mark.parametrize("dataset, response, expected", [
    ("boolq", "the correct answer is true", "true"),
    ("boolq", "The answer is True", None),              # case-sensitive
    ("boolq", "that is untrue", "true"),                 # inside a word
    ("boolq", "false, not true", "false"),               # the FIRST keyword
    ("piqa", "the correct answer is solution2", "solution2"),
    ("piqa", "Solution1", None),
    ("social_i_qa", "answer3 because answer1 is wrong", "answer3"),
    ("ARC-Challenge", "answer12", "answer1"),            # prefix match, as the reference's regex
    ("ARC-Easy", "the correct answer is answer5", "answer5"),
    ("openbookqa", "Answer2", None),
    ("hellaswag", "ending4", "ending4"),
    ("hellaswag", "ending5", None),
    ("winogrande", "option2 fits", "option2"),
    ("winogrande", "", None),
])
def test_keyword_extraction(dataset, response, expected):
    assert extract_answer(dataset, response) == expected
    if expected is not None:
        assert is_correct(dataset, expected, f" {expected} ")
        assert not is_correct(dataset, expected, "nope")


def test_answer_settled_rules():
    assert not answer_settled("gsm8k", "The answer is 9.")       # could still become 9.8
    assert answer_settled("gsm8k", "The answer is 9.8. ")
    assert answer_settled("gsm8k", "so the answer is 12 apples.\n")
    assert not answer_settled("gsm8k", "The answer is coming. Then")  # no number yet
    assert answer_settled("AQuA", "The answer is (B")
    assert answer_settled("boolq", "the correct answer is fals") is False
    assert answer_settled("boolq", "the correct answer is false")


# ---------------------------------------------------------------------------- the registry
def test_dataset_names_and_lists():
    assert len(DATASETS) == 15 and len(ARITHMETIC) == 7 and len(COMMONSENSE) == 8
    assert get_dataset("svamp").name == "SVAMP" and get_dataset("GSM8K").name == "gsm8k"
    assert get_dataset("arc-c").name == "ARC-Challenge" and get_dataset("OBQA").name == "openbookqa"
    with pytest.raises(ValueError, match="Unknown dataset 'gsm9k'"):
        get_dataset("gsm9k")
    assert parse_dataset_list("gsm8k, svamp") == ["gsm8k", "SVAMP"]
    assert parse_dataset_list("all") == list(DATASETS)
    assert parse_dataset_list("commonsense,boolq") == list(COMMONSENSE)
    assert parse_dataset_list("gsm8k=x/test.json") == ["gsm8k=x/test.json"]


# ---------------------------------------------------------------------------- test items
def test_validate_test_items_names_the_bad_record():
    good = make_records(3)
    assert validate_test_items(good, "gsm8k", "f") is good
    bad = [dict(r) for r in good]
    del bad[1]["answer"]
    with pytest.raises(ValueError, match="record 1 has no 'answer' field"):
        validate_test_items(bad, "gsm8k", "f")
    with pytest.raises(ValueError, match="not a number"):
        validate_test_items([{"instruction": "q", "answer": "twelve"}], "gsm8k", "f")
    with pytest.raises(ValueError, match="not one of true/false"):
        validate_test_items([{"instruction": "q", "answer": "yes"}], "boolq", "f")
    with pytest.raises(ValueError, match="JSON list"):
        validate_test_items({"instruction": "q"}, "boolq", "f")


def test_load_test_items_from_a_data_dir(tmp_path):
    write_json(tmp_path / "svamp" / "test.json", make_records(4, "SVAMP"))  # folder matched case-insensitively
    assert len(load_test_items("SVAMP", data_dir=tmp_path)) == 4
    with pytest.raises(FileNotFoundError, match="gsm8k/test.json not found"):
        load_test_items("gsm8k", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_test_items("gsm8k", data_dir=tmp_path / "nowhere")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_test_items("gsm8k", path=tmp_path / "broken.json")


def test_real_llm_adapters_files_load_and_their_rationales_score(packaged_data):
    """Every real test file validates; the leftover rationales mostly carry the gold answer."""
    folder = packaged_data / "llm-adapters"
    for name in DATASETS:
        if name == "hellaswag":
            continue  # not packaged (no LLM-Adapters file here)
        records = load_test_items(name, data_dir=folder)
        scored = [is_correct(name, extract_answer(name, r["output"]), r["answer"]) for r in records if r["output"]]
        if name in COMMONSENSE:
            assert sum(scored) / len(scored) > 0.5, name
        assert len({item_id(r) for r in records}) > 0.95 * len(records)


def test_hf_converters_reproduce_llm_adapters_wording(packaged_data):
    """Hub rows converted by our code give the same instruction as LLM-Adapters' own files."""
    folder = packaged_data / "llm-adapters"
    first = lambda name: json.loads((folder / name / "test.json").read_text())[0]
    boolq = first("boolq")
    row = {"question": "does ethanol take more energy make that produces", "answer": False, "passage": "..."}
    assert CONVERTERS["boolq"](row) == {"instruction": boolq["instruction"], "answer": boolq["answer"]}
    wino = first("winogrande")
    row = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
           "option1": "Sarah", "option2": "Maria", "answer": "2"}
    assert CONVERTERS["winogrande"](row) == {"instruction": wino["instruction"], "answer": wino["answer"]}
    arc = first("ARC-Easy")
    row = {"question": "Which statement best explains why photosynthesis is the foundation of most food webs?",
           "choices": {"label": ["A", "B", "C", "D"], "text": [
               "Sunlight is the source of energy for nearly all ecosystems.",
               "Most ecosystems are found on land instead of in water.",
               "Carbon dioxide is more available than other gases.", "The producers in all ecosystems are plants."]},
           "answerKey": "A"}
    assert CONVERTERS["ARC-Easy"](row) == {"instruction": arc["instruction"], "answer": arc["answer"]}
    siqa = first("social_i_qa")
    row = {"context": "Tracy didn't go home that evening and resisted Riley's attacks.",
           "question": "What does Tracy need to do before this?", "answerA": "make a new plan",
           "answerB": "Go home and see Riley", "answerC": "Find somewhere to go", "label": "3"}
    assert CONVERTERS["social_i_qa"](row) == {"instruction": siqa["instruction"], "answer": siqa["answer"]}
    piqa = first("piqa")
    goal, sol1, sol2 = re.fullmatch(r"Please choose the correct solution to the question: (.*)\n\nSolution1: (.*)"
                                    r"\n\nSolution2: (.*)\n\nAnswer format: solution1/solution2",
                                    piqa["instruction"], re.S).groups()
    row = {"goal": goal, "sol1": sol1, "sol2": sol2, "label": int(piqa["answer"][-1]) - 1}
    assert CONVERTERS["piqa"](row) == {"instruction": piqa["instruction"], "answer": piqa["answer"]}
    obqa = first("openbookqa")
    texts = re.findall(r"Answer\d: (.*?)(?= Answer\d:|\n\n)", obqa["instruction"])
    stem = obqa["instruction"].split("question: ", 1)[1].split("\n\n")[0]
    row = {"question_stem": stem, "choices": {"label": list("ABCD"), "text": texts},
           "answerKey": "ABCD"[int(obqa["answer"][-1]) - 1]}
    assert CONVERTERS["openbookqa"](row) == {"instruction": obqa["instruction"], "answer": obqa["answer"]}
    aqua = first("AQuA")
    question = aqua["instruction"].split(" Answer Choices:")[0]
    row = {"question": question, "options": ["A)23.65", "B)1000", "C)35.62", "D)2.65", "E)1023.65"], "correct": "A"}
    assert CONVERTERS["AQuA"](row) == {"instruction": aqua["instruction"], "answer": "A"}


def test_hf_loading_converts_rows(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"question": "Natalia sold 48 clips. How many?", "answer": "She sold 48.\n#### 1,048"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    records = load_hf_records("gsm8k")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert records[0]["answer"] == "1048" and records[0]["instruction"].startswith("Natalia")
    assert records[0]["output"] == "She sold 48.\nThe answer is 1048."  # the training converter's record
    assert load_test_items("gsm8k", data_dir="hub")[0]["answer"] == "1048"  # the hub, on request only
    assert len(calls) == 2 and len(load_test_items("gsm8k")) == 1319  # no data_dir: the packaged file, no hub call
    assert len(calls) == 2
    with pytest.raises(ValueError, match="No Hugging Face source is known for AddSub"):
        load_hf_records("AddSub")

    def failing(*args, **kwargs):
        raise ConnectionError("offline\nmore")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(FileNotFoundError, match="Cannot load google/boolq .*: offline$"):
        load_hf_records("boolq")


def test_bad_input_raises_user_errors(tmp_path):
    """Bad names and files raise the project's user-error classes (still ValueErrors)."""
    with pytest.raises(ConfigError, match="Unknown dataset"):
        get_dataset("gsm9k")
    with pytest.raises(ConfigError, match="No dataset given"):
        parse_dataset_list(" , ")
    with pytest.raises(DataError, match="not a number"):
        gold_number("twelve")
    with pytest.raises(DataError, match="record 0 has no 'answer' field"):
        validate_test_items([{"instruction": "q"}], "gsm8k", "f")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_test_items("gsm8k", path=tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="No Hugging Face source"):
        load_hf_records("mawps")
    assert issubclass(ConfigError, UserError) and issubclass(DataError, UserError)


# ---------------------------------------------------------------------------- the scored text: the first response
ISSUE_GSM8K = "Let me think.\n\n### Instruction:\nWhat is 2+3?\n\n### Response:\nThe answer is 5."
ISSUE_BOOLQ = "the answer is\n\n### Instruction:\nWhat is 2+3?\n\n### Response:\nfalse"


def test_scored_text_ends_at_the_next_response_marker_like_the_reference():
    # the reference decodes prompt + continuation and scores split("### Response:")[1]
    prompt = "Below is an instruction.\n\n### Instruction:\nQ\n\n### Response:\n"
    for continuation in (ISSUE_GSM8K, ISSUE_BOOLQ, "The answer is 7.", "  true  "):
        assert first_response(continuation) == (prompt + continuation).split("### Response:")[1].strip()
    assert score_response("gsm8k", ISSUE_GSM8K, "5") == (3.0, False)   # the number taken is 3: wrong
    assert score_response("boolq", ISSUE_BOOLQ, "false") == (None, False)  # nothing found: wrong
    assert score_response("gsm8k", "3 + 4 = 7. The answer is 7.", "7") == (7.0, True)  # a normal response
    assert score_response("boolq", "false", "false") == ("false", True)
    # the whole-text option scores what the model wrote after its new turn
    assert score_response("gsm8k", ISSUE_GSM8K, "5", cut_at_next_response=False) == (5.0, True)
    assert score_response("boolq", ISSUE_BOOLQ, "false", cut_at_next_response=False) == ("false", True)


def test_generation_stops_at_a_new_turn_only_when_cutting():
    text = "Let me think.\n\n### Instruction:\nWhat is 2+3?\n\n### Response:"
    assert answer_settled("gsm8k", text) and answer_settled("boolq", text)
    assert not answer_settled("gsm8k", text, cut_at_next_response=False)
    assert not answer_settled("boolq", text, cut_at_next_response=False)
    assert not answer_settled("boolq", "the answer is")


# ---------------------------------------------------------------------------- where test items come from
def test_default_data_is_packaged_and_the_hub_is_explicit(tmp_path):
    from modetune.data.packaged import LLM_ADAPTERS, MATH_SPLIT

    assert resolve_data_dir(None) == LLM_ADAPTERS == resolve_data_dir("packaged")
    assert resolve_data_dir("packaged:llm-adapters") == LLM_ADAPTERS
    assert resolve_data_dir("packaged:math-split") == MATH_SPLIT
    assert resolve_data_dir("hub") is None and resolve_data_dir(tmp_path) == tmp_path
    with pytest.raises(ConfigError, match="no such packaged data folder"):
        resolve_data_dir("packaged:nope")
    assert len(load_test_items("gsm8k")) == 1319 and len(load_test_items("mawps")) == 238
    half = load_test_items("gsm8k", data_dir="packaged:math-split")
    assert len(half) == 661 and half == [r for r in load_test_items("gsm8k") if r in half]


def test_every_hub_source_has_a_converter_and_the_registry_names_it():
    from modetune.eval.datasets import DATASETS

    assert {name for name, info in DATASETS.items() if info.hub} == set(CONVERTERS)
