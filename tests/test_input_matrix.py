"""A generated matrix: every command that reads a user file x every class of bad file.

Each case exits 1 with one stderr line ``modetune COMMAND: error: ...`` that names the file (and,
by class, says "UTF-8" or the bad line's number), no traceback, and leaves the folder holding the
file unchanged byte for byte. docs/reliability.md lists the classes.
"""

from __future__ import annotations

import json

import pytest

from modetune.cli import main
from train_helpers import snapshot

GOOD = {"instruction": "What is 1 + 1?", "input": "", "output": "2", "answer": "2"}
# class -> (file suffix, bytes, phrase the one line must hold besides the file's name)
DATA_CLASSES = {
    "missing": (".jsonl", None, ""),
    "empty": (".jsonl", b"", "empty"),
    "non_utf8": (".jsonl", b"\xff\xfe\x00bad\n", "UTF-8"),
    "malformed_line_3": (".jsonl", (json.dumps(GOOD) + "\n") .encode() * 2 + b'{"instruction": oops}\n', "line 3"),
    "wrong_type": (".json", json.dumps({"instruction": "not a list"}).encode(), "list"),
    "record_without_field": (".json", json.dumps([GOOD, {"instruction": "no output"}]).encode(), "record 1"),
}
TEST_SET_CLASSES = {  # eval --datasets gsm8k=FILE
    "missing": (".json", None, ""),
    "empty": (".json", b"", ""),
    "non_utf8": (".json", b"\xff\xfe[]", "UTF-8"),
    "malformed_line_3": (".json", b'[\n{"instruction": "a", "answer": "1"},\n{"instruction": oops}\n]', "line 3"),
    "wrong_type": (".json", json.dumps({"instruction": "not a list"}).encode(), "list"),
    "record_without_field": (".json", json.dumps([{"answer": "1"}]).encode(), "instruction"),
}
CONFIG_CLASSES = {
    "missing": (".yaml", None, ""),
    "non_utf8": (".yaml", b"\xff\xfe: 1\n", "UTF-8"),
    "malformed": (".yaml", b"lora_r: [1,\n", "Malformed YAML"),
    "wrong_type": (".yaml", b"- 1\n- 2\n", "mapping"),
    "unknown_field": (".yaml", b"lora_rank: 8\n", "lora_rank"),
}
PROMPT_CLASSES = {
    "missing": (".txt", None, ""),
    "empty": (".txt", b"\n\n", "No prompt"),
    "non_utf8": (".txt", b"\xff\xfe\n", "UTF-8"),
}


def _data_commands(model: str) -> dict:
    return {
        "train": lambda f, o: ["train", "--model", model, "--data", f, "--output-dir", o, "--max-steps", "1"],
        "fit-router": lambda f, o: ["fit-router", "--model", model, "--data", f, "--output", o, "--steps", "1"],
        "probe": lambda f, o: ["probe", "--model", model, "--data", f, "--output", o, "--records", "4"],
    }


def _config_commands(model: str) -> dict:
    return {command: (lambda f, o, c=command, e=extra: [c, "--config", f, "--model", model, e, o])
            for command, extra in (("train", "--output-dir"), ("fit-router", "--output"), ("probe", "--output"))}


def _cases():
    for table, kinds, commands in (("data", DATA_CLASSES, ("train", "fit-router", "probe")),
                                   ("test_set", TEST_SET_CLASSES, ("eval",)),
                                   ("config", CONFIG_CLASSES, ("train", "fit-router", "probe")),
                                   ("prompts", PROMPT_CLASSES, ("generate",))):
        for command in commands:
            for kind in kinds:
                yield pytest.param(table, command, kind, id=f"{command}-{table}-{kind}")


@pytest.mark.parametrize(("table", "command", "kind"), list(_cases()))
def test_a_bad_file_is_one_line_naming_it_and_changes_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch,
                                                              table, command, kind):
    monkeypatch.chdir(tmp_path)
    classes = {"data": DATA_CLASSES, "test_set": TEST_SET_CLASSES, "config": CONFIG_CLASSES,
               "prompts": PROMPT_CLASSES}[table]
    suffix, content, phrase = classes[kind]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = inputs / f"user-file{suffix}"
    if content is not None:
        path.write_bytes(content)
    out = str(tmp_path / "out")
    model = str(tiny_model_dir)
    if table == "data":
        argv = _data_commands(model)[command](str(path), out)
    elif table == "test_set":
        argv = ["eval", "--model", model, "--datasets", f"gsm8k={path}", "--output", out, "--max-new-tokens", "1"]
    elif table == "config":
        argv = _config_commands(model)[command](str(path), out)
    else:
        argv = ["generate", "--model", model, "--prompts-file", str(path), "--max-new-tokens", "1"]
    before = snapshot(inputs)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith(f"modetune {command}: error: "), err
    assert "user-file" in line or kind == "empty" and table == "prompts", line
    assert phrase in line, line
    assert snapshot(inputs) == before
    assert not (tmp_path / "out").exists()
