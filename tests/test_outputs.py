"""The one output policy (modetune.utils.outputs), over every command that writes a new output.

A generated matrix: for each command (export, fit-router, probe, data split-arithmetic, report,
solved, lm-eval) and each output class (the output is an input, lies inside one, holds one; it
exists; it exists with --overwrite; a killed run's staging folder lies beside it), the command
either exits 1 with one line naming the problem, or succeeds as documented; every input, and an
existing output that was not to be replaced, is unchanged byte for byte (hashed before and after).
The fixtures (a tiny MoD adapter, two eval runs, a split source) are built once per module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modetune.cli import main
from modetune.utils.errors import ConfigError
from modetune.utils.outputs import STAGING, check_output, stage_path, staged, write_text
from train_helpers import fails, snapshot, train_args

SETS = ("AddSub", "AQuA", "gsm8k", "mawps", "MultiArith", "SingleEq", "SVAMP")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Inputs for every command: a MoD adapter on the tiny model, two eval runs of it, a split source."""
    root = tmp_path_factory.mktemp("outputs")
    assert main(train_args(tiny_model_dir, root / "run", "--max-steps", "1", "--batch-size", "4",
                           "--save-steps", "100")) == 0
    adapter = root / "run" / "adapter"
    for name in ("eval-a", "eval-b"):
        assert main(["eval", "--adapter", str(adapter), "--datasets", "builtin", "--limit", "2", "--max-new-tokens", "2",
                     "--output", str(root / "evals" / name), "--no-progress"]) == 0
    source = root / "source"
    for name in SETS:
        (source / name).mkdir(parents=True)
        (source / name / "test.json").write_text(json.dumps(
            [{"instruction": f"{name} question {j}?", "input": "", "output": "", "answer": str(j)} for j in range(4)]))
    (source / "math_data.json").write_text(json.dumps(
        [{"instruction": f"train question {j}?", "input": "", "output": "1", "answer": "1"} for j in range(6)]))
    return {"root": root, "model": tiny_model_dir, "adapter": adapter, "evals": root / "evals", "source": source}


def _argv(command: str, w: dict, output: Path) -> list[str]:
    a, m, e = str(w["adapter"]), str(w["model"]), w["evals"]
    return {
        "export": ["export", "--adapter", a, "--output", str(output)],
        "fit-router": ["fit-router", "--model", m, "--adapter", a, "--data", "builtin:arithmetic:16", "--val-size", "2",
                       "--ce-records", "2", "--steps", "1", "--batch-size", "2", "--output", str(output)],
        "probe": ["probe", "--model", m, "--adapter", a, "--data", "builtin:arithmetic:16", "--records", "8",
                  "--candidates", "16", "--fit-max-epochs", "1", "--output", str(output)],
        "split-arithmetic": ["data", "split-arithmetic", "--source", str(w["source"]), "--output", str(output)],
        "report": ["report", str(e / "eval-a"), str(e / "eval-b"), "--output", str(output)],
        "solved": ["solved", str(e / "eval-a"), str(e / "eval-b"), "--dataset", "builtin", "--output", str(output)],
        "lm-eval": ["lm-eval", "--adapter", a, "--tasks", "modetune_gsm8k_gen", "--limit", "1",
                    "--output", str(output)],
    }[command]


def _input(command: str, w: dict) -> Path:
    """The command's main input folder."""
    return {"split-arithmetic": w["source"], "report": w["evals"] / "eval-a",
            "solved": w["evals"] / "eval-a"}.get(command, w["adapter"])


def _written(command: str, output: Path) -> list[Path]:
    """What a successful run writes for ``output``."""
    if command == "report":
        return [output.with_name(output.name + ".md"), output.with_name(output.name + ".json")]
    if command == "solved":
        return [output / "solved-builtin.md", output / "solved-builtin.json", output / "solved-builtin.png"]
    return [output]


def _refused(capsys, argv: list[str], match: str, command: str) -> None:
    fails(capsys, argv, match, "data" if command == "split-arithmetic" else command)


COMMANDS = ("export", "fit-router", "probe", "split-arithmetic", "report", "solved", "lm-eval")
FOLDER_OUTPUTS = ("export", "fit-router", "probe", "split-arithmetic")
INPUT_CASES = [(command, case) for command in COMMANDS for case in ("is_input", "inside_input", "holds_input")
               if case != "holds_input" or command in FOLDER_OUTPUTS]  # a file output cannot hold a folder


@pytest.mark.parametrize(("command", "case"), INPUT_CASES)
def test_an_output_that_touches_an_input_is_refused_and_nothing_changes(world, capsys, command, case):
    source = _input(command, world)
    output = {"is_input": source, "inside_input": source / "out", "holds_input": source.parent}[case]
    if command in ("report", "lm-eval") and case == "is_input":
        output = source / "results"  # a file output: the nearest case, a file inside the input
    before = snapshot(world["adapter"], world["evals"], world["source"])
    argv = _argv(command, world, output)
    if command == "report" or command == "solved":
        argv = argv + ["--overwrite"]  # refused even with --overwrite: inputs are never written
    _refused(capsys, argv, "the input", command)
    assert snapshot(world["adapter"], world["evals"], world["source"]) == before
    assert not any(p.name.endswith(STAGING) for p in world["root"].rglob("*"))


def _make_existing(command: str, target: Path, text: str) -> None:
    """An earlier output at ``target``: a folder holding one file, or a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if command in FOLDER_OUTPUTS:
        target.mkdir()
        (target / "earlier.txt").write_text(text)
    else:
        target.write_text(text)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_existing_output_is_refused_without_overwrite(world, capsys, command, tmp_path):
    output = tmp_path / "out"
    _make_existing(command, _written(command, output)[0], "the user's")
    before = snapshot(tmp_path)
    _refused(capsys, _argv(command, world, output), "already exists; pass --overwrite", command)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "lm-eval"])
def test_overwrite_replaces_whole_and_a_leftover_staging_is_named_and_removed(world, capsys, command, tmp_path):
    """--overwrite: the old output goes (no stale file stays beside the new one); a staging path
    left by a killed run is removed and named on stderr; inputs unchanged."""
    output = tmp_path / "out"
    targets = _written(command, output)
    for target in targets:
        _make_existing(command, target, "from before")
    leftover = stage_path(targets[0], folder=command in FOLDER_OUTPUTS)
    leftover.mkdir() if command in FOLDER_OUTPUTS else leftover.write_text("half")
    before = snapshot(world["adapter"], world["evals"], world["source"])
    assert main([*_argv(command, world, output), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert f"removed {leftover}" in err
    assert not leftover.exists()
    for target in targets:
        assert target.exists()
        if command in FOLDER_OUTPUTS:
            assert not (target / "earlier.txt").exists() and any(target.iterdir())
        else:
            assert target.read_bytes() != b"from before"
    assert snapshot(world["adapter"], world["evals"], world["source"]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({t.relative_to(tmp_path).parts[0] for t in targets})


def test_a_kill_inside_staged_leaves_the_old_output_and_no_staging(tmp_path):
    """An exception (an interrupt too) while writing: the old folder is untouched, the staging
    folder is gone; a file output likewise; on success the new one replaces it whole."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    for error in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with staged(target) as stage:
                (stage / "new.txt").write_text("half")
                raise error
        assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "old.txt").read_text() == "old"
    with staged(target) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    file = tmp_path / "table.md"
    write_text(file, "one")
    with pytest.raises(KeyboardInterrupt):
        with staged(file, folder=False) as stage:
            stage.write_text("two")
            raise KeyboardInterrupt
    assert file.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "table.md"]


def test_killed_between_the_two_renames_the_old_output_comes_back(tmp_path, capsys):
    """The one window with no target: the old folder retired, the new one not yet renamed in. The next
    run restores the old one (and drops the staged new one) before it does anything."""
    target = tmp_path / "out"
    retired = tmp_path / ".out.modetune-old"
    retired.mkdir()
    (retired / "old.txt").write_text("old")
    stage_path(target).mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        with staged(target):
            check_output(target)
    assert (target / "old.txt").read_text() == "old" and not retired.exists() and not stage_path(target).exists()
    assert "restored" in capsys.readouterr().err


def test_check_output_relations(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for output, word in ((tmp_path / "in", "is"), (tmp_path / "in" / "sub" / "x", "lies inside"),
                         (tmp_path, "holds")):
        with pytest.raises(ConfigError, match=f"{word} the input"):
            check_output(output, [tmp_path / "in"], overwrite=True)
    assert check_output(tmp_path / "new", [tmp_path / "in", None, "hub/name"]) == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", [])  # an empty folder is no output to lose
    os.symlink(tmp_path / "in", tmp_path / "link")
    with pytest.raises(ConfigError, match="is the input"):
        check_output(tmp_path / "link", [tmp_path / "in"])
