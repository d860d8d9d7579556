"""``modetune eval`` under the one output policy (modetune.utils.outputs, docs/reliability.md).

- An output that is, holds or lies inside an input (the adapter, the model folder, a test set
  file, the --data-dir folder) is refused in one line, with --overwrite too, and nothing changes.
- An existing output resumes only when its run.json records the same settings, model and adapter
  (weights included); anything else is refused in one line, and replaced whole with --overwrite.
- The appended rows resume: a real SIGKILL (tests/fault_cli.py, tests/faults.py ``eval-*``) after
  a batch, mid-row, mid-rewrite or before the summary, then a rerun, gives the uninterrupted run's
  files byte for byte (no row lost or duplicated) and leaves no staging file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval_fixtures import make_records, write_json
from modetune.cli import main
from tiny import perturb
from train_helpers import fails, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest.py); the killed processes run on one thread too


def _save_adapter(model_dir: Path, folder: Path, seed: int = 1) -> None:
    """A k=3 MoD adapter on the tiny model, its router and norms moved off their init by ``seed``."""
    from transformers import AutoModelForCausalLM

    from modetune import MoDConfig, get_mod_model

    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    perturb(get_mod_model(base, MoDConfig(k=3)), seed=seed, router_std=2.0).save_pretrained(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A MoD adapter on the tiny model (``run/adapter``) and two test sets in --data-dir layout."""
    root = tmp_path_factory.mktemp("eval-outputs")
    _save_adapter(tiny_model_dir, root / "run" / "adapter")
    write_json(root / "data" / "gsm8k" / "test.json", make_records(5))
    write_json(root / "data" / "boolq" / "test.json", make_records(4, "boolq"))
    return {"root": root, "model": Path(tiny_model_dir), "adapter": root / "run" / "adapter", "data": root / "data"}


def _argv(w: dict, output, *extra, adapter=None) -> list[str]:
    data = w["data"]
    return [str(a) for a in ("eval", "--model", w["model"], "--adapter", adapter or w["adapter"], "--datasets",
                             f"gsm8k={data / 'gsm8k' / 'test.json'},boolq={data / 'boolq' / 'test.json'}",
                             "--members", "1,ensemble", "--batch-size", 2, "--max-new-tokens", 4, "--no-progress",
                             "--output", output, *extra)]


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".modetune-" in p.name]


# ---------------------------------------------------------------------------- outputs touching an input
INPUT_CASES = {  # case: (output, extra flags, the relation named)
    "the adapter": (lambda w: w["adapter"], [], "is the input"),
    "inside the adapter": (lambda w: w["adapter"] / "eval-greedy", [], "lies inside the input"),
    "the folder holding the adapter": (lambda w: w["adapter"].parent, [], "holds the input"),
    "inside the model folder": (lambda w: w["model"] / "eval", [], "lies inside the input"),
    "a test set file": (lambda w: w["data"] / "gsm8k" / "test.json", [], "is the input"),
    "the folder holding a test set": (lambda w: w["data"] / "boolq", [], "holds the input"),
    "inside --data-dir": (lambda w: w["data"] / "out", ["--data-dir", "DATA"], "lies inside the input"),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("case", INPUT_CASES)
def test_an_output_that_touches_an_input_is_refused_and_nothing_changes(world, capsys, case, overwrite):
    output, extra, relation = INPUT_CASES[case]
    output = output(world)
    argv = _argv(world, output, *[str(world["data"]) if e == "DATA" else e for e in extra])
    if extra:  # the --data-dir case reads its sets from the folder
        argv[argv.index("--datasets") + 1] = "gsm8k,boolq"
    existed = output.exists()
    fails(capsys, argv + ["--overwrite"] * overwrite, relation, "eval",
          unchanged=(world["root"], world["model"]))
    assert output.exists() == existed and not _leftovers(world["root"])


# ---------------------------------------------------------------------------- existing outputs
def test_an_existing_output_is_refused_unless_it_holds_the_same_run_and_replaced_whole_with_overwrite(
        world, capsys, tmp_path):
    folder, file, run = tmp_path / "folder", tmp_path / "file", tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's")
    file.write_text("the user's")
    assert main(_argv(world, run)) == 0
    (run / "notes.txt").write_text("from before")
    for output, argv, match in ((folder, _argv(world, folder), "holds no evaluation run (run.json is missing)"),
                                (file, _argv(world, file), "is a file"),
                                (run, _argv(world, run, "--max-new-tokens", 3),
                                 "holds a run with other settings (max_new_tokens: 4 vs 3)")):
        fails(capsys, argv, match, "eval", unchanged=(tmp_path,))
        assert main(argv + ["--overwrite"]) == 0, capsys.readouterr().err
        assert not (output / "notes.txt").exists() and (output / "summary.json").is_file()  # replaced whole
    assert json.loads((run / "run.json").read_text())["settings"]["max_new_tokens"] == 3
    assert main(_argv(world, run, "--max-new-tokens", 3)) == 0  # the same settings: resumed, nothing generated
    summary = json.loads((run / "summary.json").read_text())
    assert all(t["generated"] == 0 for timing in summary["timings"].values() for t in timing.values())
    assert not _leftovers(tmp_path)


def test_an_adapter_trained_again_in_the_same_folder_is_another_run(world, capsys, tmp_path):
    adapter, output = tmp_path / "run" / "adapter", tmp_path / "run" / "eval"
    shutil.copytree(world["adapter"], adapter)
    assert main(_argv(world, output, "--datasets", "gsm8k", "--data-dir", world["data"], adapter=adapter)) == 0
    _save_adapter(world["model"], adapter, seed=5)  # trained again: other weights, the same folder
    fails(capsys, _argv(world, output, "--datasets", "gsm8k", "--data-dir", world["data"], adapter=adapter),
          "holds a run with other adapter_weights", "eval", unchanged=(tmp_path,))


def test_the_default_output_lies_beside_the_adapter(tmp_path):
    from modetune.eval.runner import default_output

    assert default_output(tmp_path / "runs" / "x" / "adapter", "m", "greedy") == tmp_path / "runs" / "x" / "eval-greedy"
    assert default_output(tmp_path / "lora", "m", "beam4") == tmp_path / "lora-eval-beam4"
    assert default_output(None, "org/model", "greedy") == Path("eval") / "model-greedy"


# ---------------------------------------------------------------------------- a kill anywhere, then a rerun
@pytest.fixture(scope="module")
def uninterrupted(world):
    output = world["root"] / "uninterrupted"
    assert main(_argv(world, output)) == 0
    return output


def _files(folder: Path) -> dict[str, object]:
    """Every file of a run folder, summary.json without its timings and folder."""
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    summary = json.loads(files.pop("summary.json"))
    files["summary.json"] = {k: v for k, v in summary.items() if k not in ("timings", "run_dir")}
    return files


# 10 appends (5 gsm8k items and 4 boolq items in batches of 2, 2 routings each), 4 rewrites in item order
FAULTS = ["eval-kill-append:1", "eval-kill-append:7", "eval-kill-mid-append:1", "eval-kill-mid-append:4",
          "eval-kill-sort:2", "eval-kill-summary:0"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_killed_eval_resumes_to_the_uninterrupted_rows(world, uninterrupted, tmp_path, fault):
    output = tmp_path / "run"
    killed = run_cli(*_argv(world, output), env_extra={"MODETUNE_TEST_FAULT": fault, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr
    texts = [p.read_text() for p in output.glob("*.jsonl")]
    assert (output / "run.json").is_file() and not (output / "summary.json").exists()
    if "mid-append" in fault:
        assert any(not text.endswith("\n") for text in texts)  # a row cut off mid-line
    if "sort" in fault:
        assert _leftovers(tmp_path)
    kept = sum(text.count("\n") for text in texts)  # the complete rows on disk
    assert main(_argv(world, output)) == 0
    assert _files(output) == _files(uninterrupted)
    assert not _leftovers(tmp_path)
    timings = json.loads((output / "summary.json").read_text())["timings"]
    assert sum(next(iter(t.values()))["generated"] for t in timings.values()) == 2 * 9 - kept  # only the rest
