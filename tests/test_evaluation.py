"""Evaluation: the LLM-Adapters protocol, batched generation, runs, resume, members, CLI errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from modetune import MoDConfig, get_mod_model
from modetune.cli import main
from modetune.evaluation import (
    ARITHMETIC,
    COMMONSENSE,
    DATASETS,
    HF_SOURCES,
    EvalConfig,
    answer_settled,
    evaluate,
    extract_answer,
    forced_member,
    generate_responses,
    generation_config,
    get_dataset,
    greedy_generate,
    is_correct,
    item_id,
    load_hf_records,
    load_records,
    parse_dataset_list,
    parse_members,
    read_results,
    shared_prefix_length,
    validate_records,
)
from modetune.prompts import format_prompt
from tiny import ARCHS, VOCAB, perturb, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest.py)


# ---------------------------------------------------------------------------- fixtures
def _tiny(tokenizer, seed=0, **overrides):
    """A tiny random Llama over the default tokenizer whose greedy outputs vary with the prompt
    (untied head, wider init: a tied, narrow-init model just repeats the last prompt token)."""
    kwargs = {"tie_word_embeddings": False, "initializer_range": 0.2, **overrides}
    return tiny_model("llama", seed=seed, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **kwargs)


@pytest.fixture(scope="module")
def mod_model(tokenizer):
    return perturb(get_mod_model(_tiny(tokenizer), MoDConfig(k=3)).eval(), router_std=2.0)


PROMPTS = [
    "What is 2 + 3?",
    "Tom has 7 apples and eats 3 of them. How many apples are left? Answer with a number.",
    "A train travels 60 miles per hour for 3 hours, then 40 miles per hour for 2 hours. How far did it go in total?",
    "Is water wet?",
    "Please choose the correct answer to the question: x\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2",
]


def _records(n, dataset="gsm8k"):
    kind = get_dataset(dataset).kind
    gold = {"numeric": lambda i: str(float(i)), "letter": lambda i: "ABCDE"[i % 5],
            "keyword": lambda i: get_dataset(dataset).keywords[i % 2]}[kind]
    return [{"instruction": f"{PROMPTS[i % len(PROMPTS)]} (item {i})" + " more words" * (i % 3), "input": "",
             "output": "rationale", "answer": gold(i)} for i in range(n)]


def _write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


# ---------------------------------------------------------------------------- the protocol
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


def test_validate_records_names_the_bad_record():
    good = _records(3)
    assert validate_records(good, "gsm8k", "f") is good
    bad = [dict(r) for r in good]
    del bad[1]["answer"]
    with pytest.raises(ValueError, match="record 1 has no 'answer' field"):
        validate_records(bad, "gsm8k", "f")
    with pytest.raises(ValueError, match="not a number"):
        validate_records([{"instruction": "q", "answer": "twelve"}], "gsm8k", "f")
    with pytest.raises(ValueError, match="not one of true/false"):
        validate_records([{"instruction": "q", "answer": "yes"}], "boolq", "f")
    with pytest.raises(ValueError, match="JSON list"):
        validate_records({"instruction": "q"}, "boolq", "f")


def test_load_records_from_a_data_dir(tmp_path):
    _write(tmp_path / "svamp" / "test.json", _records(4, "SVAMP"))  # folder matched case-insensitively
    assert len(load_records("SVAMP", data_dir=tmp_path)) == 4
    with pytest.raises(FileNotFoundError, match="gsm8k/test.json not found"):
        load_records("gsm8k", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records("gsm8k", data_dir=tmp_path / "nowhere")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_records("gsm8k", path=tmp_path / "broken.json")


def test_real_llm_adapters_files_load_and_their_rationales_score(shared_data):
    """Every real test file validates; the leftover rationales mostly carry the gold answer."""
    folder = shared_data / "llm-adapters"
    for name in DATASETS:
        if name == "hellaswag":
            continue  # not in ../shared
        records = load_records(name, data_dir=folder)
        scored = [is_correct(name, extract_answer(name, r["output"]), r["answer"]) for r in records if r["output"]]
        if name in COMMONSENSE:
            assert sum(scored) / len(scored) > 0.5, name
        assert len({item_id(r) for r in records}) > 0.95 * len(records)


def test_hf_converters_reproduce_llm_adapters_wording(shared_data):
    """Hub rows converted by our code give the same instruction as LLM-Adapters' own files."""
    folder = shared_data / "llm-adapters"
    first = lambda name: json.loads((folder / name / "test.json").read_text())[0]
    boolq = first("boolq")
    row = {"question": "does ethanol take more energy make that produces", "answer": False, "passage": "..."}
    assert HF_SOURCES["boolq"][3](row) == {"instruction": boolq["instruction"], "answer": boolq["answer"]}
    wino = first("winogrande")
    row = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
           "option1": "Sarah", "option2": "Maria", "answer": "2"}
    assert HF_SOURCES["winogrande"][3](row) == {"instruction": wino["instruction"], "answer": wino["answer"]}
    arc = first("ARC-Easy")
    row = {"question": "Which statement best explains why photosynthesis is the foundation of most food webs?",
           "choices": {"label": ["A", "B", "C", "D"], "text": [
               "Sunlight is the source of energy for nearly all ecosystems.",
               "Most ecosystems are found on land instead of in water.",
               "Carbon dioxide is more available than other gases.", "The producers in all ecosystems are plants."]},
           "answerKey": "A"}
    assert HF_SOURCES["ARC-Easy"][3](row) == {"instruction": arc["instruction"], "answer": arc["answer"]}
    siqa = first("social_i_qa")
    row = {"context": "Tracy didn't go home that evening and resisted Riley's attacks.",
           "question": "What does Tracy need to do before this?", "answerA": "make a new plan",
           "answerB": "Go home and see Riley", "answerC": "Find somewhere to go", "label": "3"}
    assert HF_SOURCES["social_i_qa"][3](row) == {"instruction": siqa["instruction"], "answer": siqa["answer"]}
    piqa = first("piqa")
    goal, sol1, sol2 = re.fullmatch(r"Please choose the correct solution to the question: (.*)\n\nSolution1: (.*)"
                                    r"\n\nSolution2: (.*)\n\nAnswer format: solution1/solution2",
                                    piqa["instruction"], re.S).groups()
    row = {"goal": goal, "sol1": sol1, "sol2": sol2, "label": int(piqa["answer"][-1]) - 1}
    assert HF_SOURCES["piqa"][3](row) == {"instruction": piqa["instruction"], "answer": piqa["answer"]}
    obqa = first("openbookqa")
    texts = re.findall(r"Answer\d: (.*?)(?= Answer\d:|\n\n)", obqa["instruction"])
    stem = obqa["instruction"].split("question: ", 1)[1].split("\n\n")[0]
    row = {"question_stem": stem, "choices": {"label": list("ABCD"), "text": texts},
           "answerKey": "ABCD"[int(obqa["answer"][-1]) - 1]}
    assert HF_SOURCES["openbookqa"][3](row) == {"instruction": obqa["instruction"], "answer": obqa["answer"]}
    aqua = first("AQuA")
    question = aqua["instruction"].split(" Answer Choices:")[0]
    row = {"question": question, "options": ["A)23.65", "B)1000", "C)35.62", "D)2.65", "E)1023.65"], "correct": "A"}
    assert HF_SOURCES["AQuA"][3](row) == {"instruction": aqua["instruction"], "answer": "A"}


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
    assert load_records("gsm8k")[0]["answer"] == "1048"  # no data_dir: the hub
    with pytest.raises(ValueError, match="No Hugging Face source is known for AddSub"):
        load_hf_records("AddSub")

    def failing(*args, **kwargs):
        raise ConnectionError("offline\nmore")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(FileNotFoundError, match="Cannot load google/boolq .*: offline$"):
        load_hf_records("boolq")


def test_answer_settled_rules():
    assert not answer_settled("gsm8k", "The answer is 9.")       # could still become 9.8
    assert answer_settled("gsm8k", "The answer is 9.8. ")
    assert answer_settled("gsm8k", "so the answer is 12 apples.\n")
    assert not answer_settled("gsm8k", "The answer is coming. Then")  # no number yet
    assert answer_settled("AQuA", "The answer is (B")
    assert answer_settled("boolq", "the correct answer is fals") is False
    assert answer_settled("boolq", "the correct answer is false")


# ---------------------------------------------------------------------------- generation
def _sequences(tokenizer, prompts=PROMPTS):
    return [tokenizer(format_prompt(p))["input_ids"] for p in prompts]


def test_greedy_loop_equals_hf_generate(tokenizer, mod_model, monkeypatch):
    enc = tokenizer([format_prompt(p) for p in PROMPTS], return_tensors="pt", padding=True)
    gen = mod_model.generate(**enc, generation_config=generation_config(mod_model, tokenizer, 12, 1))
    expected = gen[:, enc["input_ids"].shape[1]:].tolist()
    seqs = _sequences(tokenizer)
    assert greedy_generate(mod_model, seqs, 12, [tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id) == expected
    n = shared_prefix_length(tokenizer, seqs)
    assert n == len(tokenizer(format_prompt("x").split("x")[0])["input_ids"])  # the Alpaca header
    prefixed = greedy_generate(mod_model, seqs, 12, [tokenizer.eos_token_id], prefix_len=n,
                               pad_id=tokenizer.pad_token_id)
    assert prefixed == expected
    # models whose cache cannot be merged row by row prefill the padded batch instead
    import modetune.evaluation as ev

    monkeypatch.setattr(ev, "_plain_layers", lambda cache: None)
    for prefix_len in (0, n):
        assert greedy_generate(mod_model, seqs, 12, [tokenizer.eos_token_id], prefix_len=prefix_len,
                               pad_id=tokenizer.pad_token_id) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_loop_equals_hf_generate_across_architectures(arch):
    """Left padding, a shared prefix and row-wise prefill give ``generate``'s tokens on every
    architecture (absolute and rotary positions)."""
    model = tiny_model(arch, initializer_range=0.3)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, VOCAB, (4,), generator=g).tolist()
    seqs = [prefix + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 7, 1, 5)]
    width = max(map(len, seqs))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(s) for s in seqs])[:, None]).long()
    gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                         eos_token_id=None)
    expected = gen[:, width:].tolist()
    assert greedy_generate(model, seqs, 6, []) == expected
    assert greedy_generate(model, seqs, 6, [], prefix_len=4) == expected


def test_shared_prefix_length_depends_on_the_template_only(tokenizer):
    seqs = _sequences(tokenizer)
    n = shared_prefix_length(tokenizer, seqs)
    assert n > 10 and all(shared_prefix_length(tokenizer, [s]) == n for s in seqs)
    with_input = tokenizer(format_prompt("q", "some input"))["input_ids"]
    assert shared_prefix_length(tokenizer, [with_input]) > 10
    assert shared_prefix_length(tokenizer, [seqs[0], with_input]) == 0  # two templates: no sharing
    assert shared_prefix_length(tokenizer, [tokenizer("plain text")["input_ids"]]) == 0
    assert shared_prefix_length(tokenizer, [tokenizer(format_prompt("x", style="llm-adapters"))["input_ids"]]) > n
    with pytest.raises(ValueError, match="prefix_len"):
        greedy_generate(_tiny(tokenizer), [seqs[0], [1, 2]], 2, [], prefix_len=n)


def test_finished_rows_leave_the_batch_without_changing_the_others(tokenizer, mod_model):
    seqs = _sequences(tokenizer)
    n = shared_prefix_length(tokenizer, seqs)
    full = greedy_generate(mod_model, seqs, 10, [], prefix_len=n)
    stop_at = {0: 2, 3: 5}  # rows 0 and 3 stop early; the cache drops them
    cut = greedy_generate(mod_model, seqs, 10, [], prefix_len=n,
                          stop=lambda rows, toks: [len(t) >= stop_at.get(r, 99) for r, t in zip(rows, toks)])
    assert [len(t) for t in cut] == [2, 10, 10, 5, 10]
    assert all(c == f[: len(c)] for c, f in zip(cut, full))


@pytest.mark.parametrize("member", [None, 0, 2])
@pytest.mark.parametrize("dataset", ["gsm8k", "boolq"])
def test_batched_generation_equals_batch_size_one(tokenizer, mod_model, member, dataset):
    prompts = [format_prompt(p) for p in PROMPTS]
    with forced_member(mod_model, member):
        batched = generate_responses(mod_model, tokenizer, prompts, dataset, 16)
        single = [generate_responses(mod_model, tokenizer, [p], dataset, 16)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1  # the prompts lead to different outputs


def test_beam_search_batched_equals_single(tokenizer, mod_model):
    prompts = [format_prompt(p) for p in PROMPTS[:3]]
    batched = generate_responses(mod_model, tokenizer, prompts, "gsm8k", 8, num_beams=3)
    single = [generate_responses(mod_model, tokenizer, [p], "gsm8k", 8, num_beams=3)[0] for p in prompts]
    assert batched == single


def test_members_differ_and_router_is_restored(tokenizer, mod_model):
    prompts = [format_prompt(PROMPTS[2])]
    outs = {}
    for member in (None, 0, 1, 2):
        with forced_member(mod_model, member):
            outs[member] = generate_responses(mod_model, tokenizer, prompts, "gsm8k", 12)[0]
    assert len(set(outs.values())) >= 3
    assert mod_model.router.fixed is None
    with pytest.raises(ValueError, match="member must be in 0..2"):
        with forced_member(mod_model, 3):
            pass
    with pytest.raises(ValueError, match="needs a MoD model"):
        with forced_member(_tiny(tokenizer), 0):
            pass


def test_forced_member_logits_are_its_own_norm_and_the_shared_head(tokenizer, mod_model):
    ids = tokenizer([format_prompt(PROMPTS[1])], return_tensors="pt")["input_ids"]
    base = mod_model.base_model
    states = {}
    hooks = [base.model.layers[i].register_forward_hook(
        lambda m, a, out, i=i: states.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i in mod_model.member_layers]
    try:
        with torch.no_grad():
            for i, layer in enumerate(mod_model.member_layers):
                with forced_member(mod_model, i):
                    got = mod_model(input_ids=ids).logits
                # F.linear, not base.lm_head(...): the head carries MoD's own pre-hook
                expected = torch.nn.functional.linear(mod_model.member_norms()[i](states[layer]), base.lm_head.weight)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        for hook in hooks:
            hook.remove()


def test_parse_members(mod_model, tokenizer):
    assert parse_members(None, None, mod_model) is None
    assert parse_members(1, None, mod_model) == [1]
    assert parse_members(None, "all", mod_model) == [0, 1, 2, None]
    assert parse_members(None, "member0,ensemble", mod_model) == [0, None]
    with pytest.raises(ValueError, match="needs a MoD model"):
        parse_members(None, "all", _tiny(tokenizer))
    with pytest.raises(ValueError, match="not both"):
        parse_members(0, "all", mod_model)


# ---------------------------------------------------------------------------- runs
def test_evaluate_writes_rows_summary_and_resumes(tokenizer, mod_model, tmp_path, monkeypatch):
    import modetune.evaluation as ev

    files = {"gsm8k": _write(tmp_path / "d" / "gsm8k.json", _records(6)),
             "boolq": _write(tmp_path / "d" / "boolq.json", _records(5, "boolq"))}
    specs = [f"{name}={path}" for name, path in files.items()]
    config = EvalConfig(batch_size=4, max_new_tokens=6, progress=False)
    full = evaluate(mod_model, tokenizer, specs, config, tmp_path / "full", info={"model": "tiny"})
    rows = read_results(tmp_path / "full" / "gsm8k.jsonl")
    assert [r["index"] for r in rows] == list(range(6))
    assert set(rows[0]) >= {"prompt", "response", "extracted", "gold", "correct", "decoding", "variant", "id"}
    for row in rows:
        assert row["correct"] == is_correct("gsm8k", row["extracted"], row["gold"])
        assert row["decoding"] == "greedy" and row["variant"] == "ensemble"
    assert {(r["dataset"], r["n"]) for r in full["results"]} == {("gsm8k", 6), ("boolq", 5)}
    assert (tmp_path / "full" / "summary.md").read_text().count("GSM8K") == 1
    assert json.loads((tmp_path / "full" / "run.json").read_text())["settings"]["decoding"] == "greedy"

    # an interrupted run: 2 rows written, the third cut off mid-line
    part = tmp_path / "part"
    part.mkdir()
    (part / "run.json").write_text((tmp_path / "full" / "run.json").read_text())
    lines = (tmp_path / "full" / "gsm8k.jsonl").read_text().splitlines(keepends=True)
    (part / "gsm8k.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    generated = []
    original = ev.generate_responses
    monkeypatch.setattr(ev, "generate_responses", lambda m, t, prompts, *a, **k: generated.extend(prompts) or
                        original(m, t, prompts, *a, **k))
    evaluate(mod_model, tokenizer, [specs[0]], config, part, info={"model": "tiny"})
    assert len(generated) == 4  # only the missing items
    assert (part / "gsm8k.jsonl").read_text() == (tmp_path / "full" / "gsm8k.jsonl").read_text()

    with pytest.raises(ValueError, match="other settings"):
        evaluate(mod_model, tokenizer, [specs[0]], EvalConfig(num_beams=2, progress=False), part,
                 info={"model": "tiny"})


def test_a_smaller_limit_keeps_earlier_rows(tokenizer, mod_model, tmp_path):
    spec = [f"gsm8k={_write(tmp_path / 'g.json', _records(5))}"]
    evaluate(mod_model, tokenizer, spec, EvalConfig(max_new_tokens=3, progress=False), tmp_path / "r")
    summary = evaluate(mod_model, tokenizer, spec, EvalConfig(max_new_tokens=3, progress=False, limit=2),
                       tmp_path / "r")
    assert summary["timings"]["gsm8k"]["ensemble"]["n"] == 2  # this call's items
    assert len(read_results(tmp_path / "r" / "gsm8k.jsonl")) == 5  # nothing lost
    _write(tmp_path / "g.json", _records(5, "SVAMP")[::-1])
    with pytest.raises(ValueError, match="results for other items"):
        evaluate(mod_model, tokenizer, spec, EvalConfig(max_new_tokens=3, progress=False), tmp_path / "r")


def test_batch_size_does_not_change_results(tokenizer, mod_model, tmp_path):
    spec = [f"gsm8k={_write(tmp_path / 'g.json', _records(7))}"]
    for bs in (1, 3):
        evaluate(mod_model, tokenizer, spec, EvalConfig(batch_size=bs, max_new_tokens=5, progress=False),
                 tmp_path / f"bs{bs}")
    assert (tmp_path / "bs1" / "gsm8k.jsonl").read_text() == (tmp_path / "bs3" / "gsm8k.jsonl").read_text()


def test_members_all_in_one_pass(tokenizer, mod_model, tmp_path):
    spec = [f"boolq={_write(tmp_path / 'b.json', _records(4, 'boolq'))}"]
    config = EvalConfig(batch_size=4, max_new_tokens=4, progress=False, members=[0, 1, 2, None])
    summary = evaluate(mod_model, tokenizer, spec, config, tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run").glob("*.jsonl"))
    assert names == ["boolq.jsonl", "boolq.member0.jsonl", "boolq.member1.jsonl", "boolq.member2.jsonl"]
    assert [r["variant"] for r in summary["results"]] == ["ensemble", "member0", "member1", "member2"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["members"]["member2"] == "member2 = layer 5 of 5 (N)"
    single = tmp_path / "single"
    evaluate(mod_model, tokenizer, spec, EvalConfig(batch_size=2, max_new_tokens=4, progress=False, members=[1]),
             single)
    assert (single / "boolq.member1.jsonl").read_text() == (tmp_path / "run" / "boolq.member1.jsonl").read_text()


@pytest.mark.slow
def test_default_model_on_real_gsm8k(tokenizer, shared_data, default_model_dir, tmp_path):
    """The embedded model, real items: batch 4 equals batch 1 and the rows are scored."""
    from modetune.evaluation import load_for_eval

    model, tok, info = load_for_eval(str(default_model_dir))
    records = load_records("gsm8k", data_dir=shared_data / "math-split")[:4]
    outs = {}
    for bs in (1, 4):
        outs[bs] = evaluate(model, tok, [("gsm8k", records)], EvalConfig(batch_size=bs, max_new_tokens=24,
                                                                          progress=False), tmp_path / str(bs), info=info)
    assert (tmp_path / "1" / "gsm8k.jsonl").read_text() == (tmp_path / "4" / "gsm8k.jsonl").read_text()
    rows = read_results(tmp_path / "4" / "gsm8k.jsonl")
    assert all(r["response"] for r in rows) and all(r["variant"] == "model" for r in rows)


# ---------------------------------------------------------------------------- command line
def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str, pattern: str) -> None:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]


def test_cli_bad_input(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    _write(data / "gsm8k" / "test.json", _records(3))
    noanswer = [dict(r) for r in _records(3)]
    del noanswer[2]["answer"]
    _write(data / "SVAMP" / "test.json", noanswer)
    base = ["eval", "--model", tiny_model_dir, "--data-dir", data, "--output", tmp_path / "o", "--no-progress"]

    code, _, err = _cli(capsys, *base, "--datasets", "gsm8k,nonsense")
    assert code == 1
    _one_error_line(err, "Unknown dataset 'nonsense'")
    code, _, err = _cli(capsys, *base, "--datasets", "boolq")
    assert code == 1
    _one_error_line(err, r"Dataset boolq: .*boolq/test.json not found")
    code, _, err = _cli(capsys, *base, "--datasets", "svamp")
    assert code == 1
    _one_error_line(err, r"record 2 has no 'answer' field")
    code, _, err = _cli(capsys, *base, "--datasets", "gsm8k", "--adapter", tmp_path / "missing")
    assert code == 1
    _one_error_line(err, "Adapter folder .* does not exist")
    assert not (tmp_path / "o").exists()


def test_cli_adapter_on_the_wrong_base(capsys, tmp_path, tokenizer, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    data = _write(tmp_path / "data" / "gsm8k" / "test.json", _records(2)).parent.parent
    other = _tiny(tokenizer, seed=7)
    get_mod_model(other, MoDConfig(k=2)).save_pretrained(tmp_path / "mod")
    code, _, err = _cli(capsys, "eval", "--model", tiny_model_dir, "--adapter", tmp_path / "mod", "--datasets",
                        "gsm8k", "--data-dir", data, "--output", tmp_path / "o")
    assert code == 1
    _one_error_line(err, "trained on a different base model")

    wider = _tiny(tokenizer, seed=7, hidden_size=48, intermediate_size=96)
    lora = get_peft_model(wider, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(str(tmp_path / "lora"))
    code, _, err = _cli(capsys, "eval", "--model", tiny_model_dir, "--adapter", tmp_path / "lora", "--datasets",
                        "gsm8k", "--data-dir", data, "--output", tmp_path / "o")
    assert code == 1
    _one_error_line(err, "LoRA adapter in .* does not fit base model")

    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, "eval", "--model", tiny_model_dir, "--adapter", tmp_path / "empty", "--datasets",
                        "gsm8k", "--data-dir", data, "--output", tmp_path / "o")
    assert code == 1
    _one_error_line(err, "holds neither mod_config.json")


def test_cli_eval_mod_lora_base_report_and_solved(capsys, tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = _write(tmp_path / "data" / "gsm8k" / "test.json", _records(5)).parent.parent
    _write(tmp_path / "data" / "boolq" / "test.json", _records(4, "boolq"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    perturb(get_mod_model(base, MoDConfig(k=3)), router_std=2.0).save_pretrained(tmp_path / "mod")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                                           init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "lora"))

    common = ["--model", tiny_model_dir, "--datasets", "gsm8k,boolq", "--data-dir", data, "--max-new-tokens", 4,
              "--batch-size", 2, "--no-progress"]
    code, out, err = _cli(capsys, "eval", *common, "--adapter", tmp_path / "mod", "--members", "all")
    assert code == 0, err
    assert "| mod |" in out and "| mod [member0] |" in out and "GSM8K" in out and "BoolQ" in out
    assert (tmp_path / "mod" / "eval-greedy" / "gsm8k.member2.jsonl").exists()
    code, out, err = _cli(capsys, "eval", *common, "--adapter", tmp_path / "lora", "--output", tmp_path / "lora-run")
    assert code == 0, err
    code, out, err = _cli(capsys, "eval", *common, "--output", tmp_path / "base-run", "--label", "base")
    assert code == 0, err
    lora_rows = read_results(tmp_path / "lora-run" / "gsm8k.jsonl")
    base_rows = read_results(tmp_path / "base-run" / "gsm8k.jsonl")
    assert [r["response"] for r in lora_rows] != [r["response"] for r in base_rows]  # the adapter is applied

    runs = [tmp_path / "mod" / "eval-greedy", tmp_path / "lora-run", tmp_path / "base-run"]
    code, out, err = _cli(capsys, "report", *runs, "--output", tmp_path / "table")
    assert code == 0, err
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["columns"] == ["gsm8k", "boolq"]
    assert [r["name"] for r in table["rows"]] == ["mod", "mod [member0]", "mod [member1]", "mod [member2]",
                                                   "lora", "base"]
    assert "Arithmetic" in out and "Commonsense" in out

    code, out, err = _cli(capsys, "solved", *[r / "gsm8k.jsonl" for r in runs], "--output", tmp_path / "venn")
    assert code == 0, err
    assert (tmp_path / "venn" / "solved-gsm8k.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = _cli(capsys, "solved", *runs, "--dataset", "boolq", "--output", tmp_path / "venn",
                          "--labels", "a,b,c")
    assert code == 0, err
    assert "| a ∩ b ∩ c |" in out
    code, _, err = _cli(capsys, "solved", runs[0] / "gsm8k.jsonl", runs[1] / "boolq.jsonl")
    assert code == 1
    _one_error_line(err, "different datasets")
