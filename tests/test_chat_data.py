"""Chat data: conversation records, the tokenizer's chat template, loss on assistant turns only."""

from __future__ import annotations

import json

import pytest

from modetune.data import load_training_records, tokenize_record, tokenize_records
from modetune.data.chat import chat_prompt, normalise_conversation
from modetune.utils.errors import DataError

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_assistant_turns_alone_carry_labels_token_by_token(tokenizer):
    """The default model's ChatML template: labels are exactly the tokens of each assistant turn's
    content and its <|im_end|>; everything else (system, user, role headers, newlines) is -100."""
    tok = tokenize_record({"messages": CONVERSATION}, tokenizer, cutoff_len=512, train_on_inputs=False)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt1 = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    prompt2 = "\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    pieces = [(prompt1, False), ("Hello!", True), ("<|im_end|>", True), (prompt2, False), ("4", True),
              ("<|im_end|>", True), ("\n", False)]
    expected_ids, expected_labels = [], []
    for text, learned in pieces:
        ids = _ids(tokenizer, text)
        expected_ids += ids
        expected_labels += ids if learned else [-100] * len(ids)
    assert tok.input_ids == expected_ids
    assert tok.labels == expected_labels
    assert tok.labels.count(im_end) == 2
    assert tokenizer.decode([t for t in tok.labels if t != -100]) == "Hello!<|im_end|>4<|im_end|>"
    # train_on_inputs: every token learned
    everything = tokenize_record({"messages": CONVERSATION}, tokenizer, 512, train_on_inputs=True)
    assert everything.labels == everything.input_ids == expected_ids
    # truncation keeps the alignment
    short = tokenize_record({"messages": CONVERSATION}, tokenizer, cutoff_len=20, train_on_inputs=False)
    assert short.input_ids == expected_ids[:20] and short.labels == expected_labels[:20]


def test_template_default_system_prompt_is_not_learned(tokenizer):
    """Without a system turn the template inserts its own; it carries no label."""
    tok = tokenize_record({"messages": CONVERSATION[1:3]}, tokenizer, 512, False)
    learned = [t for t in tok.labels if t != -100]
    assert tokenizer.decode(learned) == "Hello!<|im_end|>"
    assert "SmolLM" in tokenizer.decode(tok.input_ids)


def test_alpaca_records_through_the_chat_template(tokenizer):
    record = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
    tok = tokenize_record(record, tokenizer, 512, False, style="chat")
    prompt = chat_prompt(tokenizer, "Add 2 and 3.")
    assert prompt.endswith("<|im_start|>assistant\n") and "Add 2 and 3." in prompt
    assert tok.input_ids == _ids(tokenizer, prompt + "5<|im_end|>\n")
    n_prompt = len(_ids(tokenizer, prompt))
    assert tok.labels[:n_prompt] == [-100] * n_prompt
    assert tokenizer.decode([t for t in tok.labels if t != -100]) == "5<|im_end|>"
    with_input = chat_prompt(tokenizer, "Add.", "2 and 3")
    assert "Add.\n\n2 and 3" in with_input


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_openai_and_sharegpt_files_load_alike(tmp_path, tokenizer, suffix):
    openai = {"messages": CONVERSATION}
    sharegpt = {"conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]),
                                   "value": m["content"]} for m in CONVERSATION]}
    path = tmp_path / f"chat{suffix}"
    rows = [openai, sharegpt, {"instruction": "Say hi.", "output": "hi"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) if suffix == ".jsonl" else json.dumps(rows))
    records = load_training_records(str(path))
    assert records[0]["messages"] == records[1]["messages"] == CONVERSATION
    tokenized = tokenize_records(records, tokenizer, 512, False)
    assert tokenized[0] == tokenized[1]
    assert len(tokenized) == 3


@pytest.mark.parametrize("record, match", [
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'robot'"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "unknown role 'bot'"),
    ({"messages": []}, "the conversation is empty"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
    ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "y"}]}, "lacks a text"),
])
def test_bad_conversations_name_the_record(tmp_path, record, match):
    path = tmp_path / "bad.jsonl"
    good = {"messages": CONVERSATION}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=match) as info:
        load_training_records(str(path))
    assert "record 1" in str(info.value) and str(path) in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_no_chat_template_is_a_data_error(tokenizer):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        tokenize_record({"messages": CONVERSATION}, bare, 512, False)
    assert normalise_conversation({"messages": CONVERSATION}, "x") == CONVERSATION


@pytest.mark.slow
def test_train_on_conversations_and_evaluate_in_chat_style(tmp_path, tiny_model_dir, capsys):
    """End to end on the tiny model: a JSONL of conversations trains; eval, by default in the adapter's own
    style (chat), renders the test questions with the chat template; a bad record stops training with one line."""
    from modetune.cli import main
    from train_helpers import fails, train_args

    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"The answer is {i + 1}."}]} for i in range(12)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = train_args(tiny_model_dir, tmp_path / "run", "--max-steps", "1", "--batch-size", "4", "--val-size", "2",
                      "--save-steps", "100")
    args[args.index("--data") + 1] = str(data)
    assert main(args) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "run" / "adapter" / "prompt.json").read_text()) == {"prompt_style": "chat"}
    assert main(["eval", "--adapter", str(tmp_path / "run" / "adapter"), "--datasets", "builtin", "--limit", "2",
                 "--max-new-tokens", "4", "--output", str(tmp_path / "eval"),  # the adapter's style: chat
                 "--no-progress"]) == 0
    run = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert run["settings"]["prompt_style"] == "chat"
    results = [json.loads(line) for line in (tmp_path / "eval").glob("*.jsonl").__next__().read_text().splitlines()]
    assert len(results) == 2
    for row in results:
        assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"messages": [{"role": "user", "content": "?"}]}) + "\n")
    args[args.index("--data") + 1] = str(bad)
    args[args.index("--output-dir") + 1] = str(tmp_path / "run-bad")  # a fresh folder: "run" holds a run now
    fails(capsys, args, "record 1: the conversation has no assistant turn")
    assert not (tmp_path / "run-bad").exists()


def test_pack_rows_keeps_every_token_and_never_targets_a_record_start():
    """Packing: the concatenation of the blocks is the concatenation of the rows; every block but the
    last is full; each row's first token is no target; other labels are kept."""
    from modetune.data import pack_rows

    rows = [{"input_ids": list(range(10 * i, 10 * i + n)), "labels": [-100, -100, *range(10 * i + 2, 10 * i + n)]}
            for i, n in enumerate([5, 7, 3, 9])]
    blocks = pack_rows(rows, 6)
    assert [len(b["input_ids"]) for b in blocks] == [6, 6, 6, 6]
    assert [t for b in blocks for t in b["input_ids"]] == [t for r in rows for t in r["input_ids"]]
    labels = [t for b in blocks for t in b["labels"]]
    assert labels == [t for r in rows for t in [-100, *r["labels"][1:]]]
    assert all(b["attention_mask"] == [1] * len(b["input_ids"]) for b in blocks)
    starts = [0, 5, 12, 15]
    assert all(labels[s] == -100 for s in starts)
    # with train_on_inputs every token but each record's first is learned
    full = [{"input_ids": r["input_ids"], "labels": list(r["input_ids"])} for r in rows]
    learned = [t for b in pack_rows(full, 8) for t in b["labels"] if t != -100]
    assert learned == [t for r in rows for t in r["input_ids"][1:]]
    # a block with no target is dropped
    assert pack_rows([{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}], 2) == []


TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant] {% endif %}")


@pytest.mark.slow
def test_chat_template_override_and_packing_train_and_follow_the_adapter(tmp_path, tiny_model_dir, capsys):
    """`train --chat-template FILE --packing`: the records render with that template, are packed into
    blocks of cutoff_len, the adapter records the template (prompt.json), and eval uses it by default;
    eval's own --chat-template replaces it; a missing template file is one line."""
    from modetune.cli import main
    from train_helpers import fails, train_args

    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    args = train_args(tiny_model_dir, tmp_path / "run", "--max-steps", "1", "--batch-size", "4", "--val-size", "2",
                      "--save-steps", "100", "--prompt-style", "chat", "--chat-template", str(template), "--packing",
                      "--cutoff-len", "64")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "training blocks of 64 tokens (packed)" in out
    prompt = json.loads((tmp_path / "run" / "adapter" / "prompt.json").read_text())
    assert prompt == {"prompt_style": "chat", "chat_template": TEMPLATE}
    evaluate = ["eval", "--adapter", str(tmp_path / "run" / "adapter"), "--datasets", "builtin", "--limit", "1",
                "--max-new-tokens", "2", "--no-progress"]
    assert main([*evaluate, "--output", str(tmp_path / "eval")]) == 0
    row = json.loads(next((tmp_path / "eval").glob("*.jsonl")).read_text().splitlines()[0])
    assert row["prompt"].startswith("[user] ") and row["prompt"].endswith("\n[assistant] ")
    other = tmp_path / "other.jinja"
    other.write_text(TEMPLATE.replace("[{{ m['role'] }}]", "<{{ m['role'] }}>").replace("[assistant]", "<assistant>"))
    assert main([*evaluate, "--output", str(tmp_path / "eval2"), "--chat-template", str(other)]) == 0
    row = json.loads(next((tmp_path / "eval2").glob("*.jsonl")).read_text().splitlines()[0])
    assert row["prompt"].startswith("<user> ") and row["prompt"].endswith("\n<assistant> ")
    capsys.readouterr()
    fails(capsys, [*evaluate, "--chat-template", str(tmp_path / "missing.jinja")],
          "is neither a file nor a Jinja template", command="eval")
    fails(capsys, [*evaluate, "--chat-template", "{% for m in messages %}"], "chat_template does not parse",
          command="eval")
