"""Generated matrices: every command that reads a user file x every class of bad file, and every
file of an adapter x every class of fault x every command that loads an adapter.

Each case exits 1 with one stderr line ``modetune COMMAND: error: ...`` that names the file (and,
by class, says "UTF-8" or the bad line's number), no traceback, and leaves the folder holding the
file unchanged byte for byte. docs/reliability.md lists the classes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modetune.cli import main
from train_helpers import fails, snapshot, train_args

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


# ---------------------------------------------------------------------------- adapter file x fault x command
# An adapter folder is checked as a whole before any weight is copied (modetune.loading.adapter). The faults:
# missing (for the files an adapter cannot lack), empty, non-UTF-8, malformed (JSON, safetensors, Jinja),
# a required key missing, a key of the wrong type, and a value the weights or another file contradict.
def _set(**changes):
    return lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _drop(key):
    return lambda path: path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != key}))


def _tensors(change):
    """An edit of a safetensors file: ``change`` maps its tensors to the ones written back."""
    from safetensors.torch import load_file, save_file

    return lambda path: save_file(change(load_file(str(path))), str(path), metadata={"format": "pt"})


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


SAFE = "not a complete safetensors file"
SYNTAX = {  # kind of file -> fault -> (its bytes or an edit, the phrase of the one line besides the file's name)
    "json": {"empty": (b"", "empty"), "non_utf8": (b'\xff\xfe{"k": 3}', "UTF-8"),
             "malformed": (b'{"k": 3,', "not valid JSON")},
    "safetensors": {"empty": (b"", SAFE), "non_utf8": (b"\xff\xfe\x00\x01 not safetensors", SAFE),
                    "malformed": (_truncate, SAFE)},
    "jinja": {"empty": (b" \n", "empty"), "non_utf8": (b"\xff{{ messages }}", "UTF-8"),
              "malformed": (b"{% for m in messages %}", "Jinja")},
}
ADAPTER_FILES = {  # file -> (kind, required, folder (a MoD or a LoRA-only run), its own faults)
    "mod_config.json": ("json", True, "mod", {
        "missing_key": (_drop("k"), "'k'"), "wrong_type": (_set(k="three"), "k must be a number"),
        "contradicts": (_set(k=5), "mod_config.json says k=5 but mod_model.safetensors holds 3 members")}),
    "mod_model.safetensors": ("safetensors", True, "mod", {
        "contradicts": (_tensors(lambda t: {"router.weight": t["router.weight"][:2], "norms.0.weight": t["norms.0.weight"]}),
                        "mod_config.json says k=3 but mod_model.safetensors holds 2 members")}),
    "adapter_config.json": ("json", True, "mod", {
        "missing_key": (_drop("r"), "'r'"), "wrong_type": (_set(r="four"), "'r' must be a whole number"),
        "contradicts": (_set(r=8), "says r=8 but adapter_model.safetensors holds rank 4")}),
    "adapter_model.safetensors": ("safetensors", True, "mod", {
        "contradicts": (_tensors(lambda t: {k: v for k, v in t.items() if ".v_proj." not in k}),
                        "name 'v_proj' but adapter_model.safetensors holds no LoRA weights")}),
    "base_model.json": ("json", False, "mod", {
        "missing_key": (_drop("model"), "'model'"), "wrong_type": (_set(model=3), "'model' must be text")}),
    "train_config.json": ("json", False, "mod", {
        "missing_key": (_drop("preset"), "'preset'"), "wrong_type": (_set(lora_r="four"), "'lora_r' must be a whole number"),
        "contradicts": (_set(lora_r=8), "train_config.json says lora_r=8 but adapter_config.json says r=4")}),
    "prompt.json": ("json", False, "mod", {
        "missing_key": (_drop("prompt_style"), "'prompt_style'"),
        "wrong_type": (_set(prompt_style=3), "'prompt_style' must be text")}),
    "chat_template.jinja": ("jinja", False, "mod", {}),
    "modetune_adapter.json": ("json", False, "lora", {  # a LoRA-only adapter's base fingerprint
        "missing_key": (_drop("base_fingerprint"), "'base_fingerprint'"),
        "wrong_type": (_set(base_fingerprint=7), "must be text or null"),
        "contradicts": (_set(base_fingerprint="0123456789abcdef"), "trained on a different base model")}),
}
FAULTS = ("missing", "empty", "non_utf8", "malformed", "missing_key", "wrong_type", "contradicts")


def _faults(name: str) -> dict:
    """Every fault of adapter file ``name``: ``{fault: (its bytes, an edit, or None: deleted; the phrase)}``."""
    kind, required, _, own = ADAPTER_FILES[name]
    found = {"missing": (None, f"{name} is missing")} if required else {}
    return {**found, **SYNTAX[kind], **own}


def _adapter_argv(command: str, adapter: Path, out: Path) -> list[str]:
    """``command`` on ``adapter`` with no --model: the base is the one the adapter records."""
    a, o = str(adapter), str(out)
    return {"eval": ["eval", "--adapter", a, "--datasets", "builtin", "--limit", "1", "--max-new-tokens", "1",
                     "--no-progress", "--output", o],
            "generate": ["generate", "--adapter", a, "--max-new-tokens", "1", "1 + 1 ="],
            "chat": ["chat", "--adapter", a, "--max-new-tokens", "1"],
            "probe": ["probe", "--adapter", a, "--records", "4", "--output", o],
            "fit-router": ["fit-router", "--adapter", a, "--steps", "1", "--output", o],
            "export": ["export", "--adapter", a, "--output", o],
            "lm-eval": ["lm-eval", "--adapter", a, "--tasks", "modetune_builtin_gen", "--limit", "1", "--output",
                        o + ".json"]}[command]


RUN_SMALL = ["--max-steps", "2", "--batch-size", "2", "--micro-batch-size", "2", "--val-size", "0", "--save-steps", "2"]
STUDY_RUN = {"mod": "lora_notk_mod-s42", "lora": "lora_notk-s42"}  # `experiment variants` names its runs so
# every file x fault through one command of each route to the loader: ModelSource (eval, generate, chat, probe,
# fit-router, export, lm-eval) and a checkpoint before `train --resume` picks it; every other command (and
# `experiment`, whose runs' adapters are checked before it reuses them) once for each fault, the files rotating
FULL = ("generate", "train --resume")
ROTATED = ("eval", "chat", "probe", "fit-router", "export", "lm-eval", "experiment")


def _adapter_cases():
    for command in FULL:
        for name in ADAPTER_FILES:
            for fault in _faults(name):
                yield pytest.param(command, name, fault, id=f"{command.replace(' ', '')}-{name}-{fault}")
    for i, command in enumerate(ROTATED):
        for j, fault in enumerate(FAULTS):
            names = [n for n in ADAPTER_FILES if fault in _faults(n) and ADAPTER_FILES[n][2] == "mod"]
            name = names[(i + j) % len(names)]
            yield pytest.param(command, name, fault, id=f"{command}-{name}-{fault}")


@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory, tiny_model_dir):
    """A finished 2-step MoD run and LoRA-only run (checkpoint-2 and adapter each), written by `train`."""
    root = tmp_path_factory.mktemp("adapter-runs")
    for kind, preset in (("mod", "lora_notk_mod"), ("lora", "lora_notk")):
        assert main(train_args(tiny_model_dir, root / kind, *RUN_SMALL, "--preset", preset)) == 0
    return root


def test_a_sound_adapter_and_its_checkpoints_pass_the_check(adapter_runs):
    from modetune.loading.adapter import check_adapter
    from modetune.utils.integrity import damage

    for folder in [*adapter_runs.glob("*/adapter"), *adapter_runs.glob("*/checkpoint-*")]:
        assert check_adapter(folder) == folder
        assert [damage(path) for path in folder.iterdir()] == [None] * len(list(folder.iterdir()))


@pytest.mark.parametrize(("command", "name", "fault"), list(_adapter_cases()))
def test_a_bad_adapter_file_is_one_line_naming_it_and_changes_nothing(adapter_runs, tiny_model_dir, tmp_path, capsys,
                                                                      monkeypatch, command, name, fault):
    monkeypatch.chdir(tmp_path)
    kind = ADAPTER_FILES[name][2]
    study = tmp_path / "study"
    run = tmp_path / "run" if command != "experiment" else study / STUDY_RUN[kind]
    shutil.copytree(adapter_runs / kind, run, ignore=shutil.ignore_patterns("tokenizer.json"))  # 3.5 MB, unread
    content, phrase = _faults(name)[fault]
    for folder in run.glob("checkpoint-*") if command == "train --resume" else [run / "adapter"]:
        path = folder / name
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
    if command == "train --resume":  # the same settings, a longer budget: it must resume from checkpoint-2
        preset = "lora_notk_mod" if kind == "mod" else "lora_notk"
        argv = train_args(tiny_model_dir, run, *RUN_SMALL, "--preset", preset, "--max-steps", "4", "--resume")
    elif command == "experiment":
        argv = ["experiment", "variants", "--smoke", "--only", STUDY_RUN[kind], "--model", str(tiny_model_dir),
                "--output-dir", str(study)]
    else:
        argv = _adapter_argv(command, run / "adapter", tmp_path / "out")
    line = fails(capsys, argv, phrase, command=command.split()[0], unchanged=[run])
    assert name in line, line
    assert {p.name for p in tmp_path.iterdir()} == {run.relative_to(tmp_path).parts[0]}  # no output begun
