"""Bad inputs and damaged files across the whole command line (issue 12): every case exits 1
with ONE stderr line and no traceback, and leaves the disk as it found it; and the recoveries
(resume from the newest complete checkpoint, --overwrite, --ignore-base-mismatch, remote code
only when asked) do what they say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from modetune.cli import main
from train_helpers import run_cli, snapshot, train_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SMALL = ["--batch-size", "2", "--micro-batch-size", "2", "--val-size", "0", "--save-steps", "2"]


def _train(model_dir, out, *extra) -> Path:
    assert main(train_args(model_dir, out, "--max-steps", "4", *SMALL, *extra)) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A finished MoD run and a finished LoRA-only run (checkpoints 2 and 4 each), and a second
    base model of the same shape (other weights)."""
    from transformers import AutoTokenizer

    from tiny import tiny_model

    root = tmp_path_factory.mktemp("runs")
    mod = _train(tiny_model_dir, root / "mod")
    lora = _train(tiny_model_dir, root / "lora", "--preset", "lora_notk")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    other = root / "other-base"
    tiny_model("llama", seed=7, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
               eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id).save_pretrained(str(other))
    tokenizer.save_pretrained(str(other))
    evaluated = root / "evaluated"
    assert main(["eval", "--model", str(tiny_model_dir), "--adapter", str(mod / "adapter"), "--datasets", "builtin",
                 "--limit", "2", "--max-new-tokens", "4", "--no-progress", "--output", str(evaluated)]) == 0
    return {"mod": mod, "lora": lora, "other": other, "tiny": tiny_model_dir, "eval": evaluated}


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def one_line_error(capsys, argv: list[str], match: str) -> str:
    """``main(argv)`` exits 1 with exactly one stderr line, ``modetune CMD: error: ...match...``."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"modetune {argv[0]}: error: ") and match in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- the cases
def _copy(runs, name, tmp):
    return Path(shutil.copytree(runs[name], tmp / name))


def _yaml(tmp, text):
    (tmp / "c.yaml").write_text(text)
    return str(tmp / "c.yaml")


def _eval(runs, *extra):
    return ["eval", "--model", str(runs["tiny"]), "--datasets", "builtin", "--limit", "2", "--max-new-tokens", "4",
            "--no-progress", *extra]


def _text(tmp, name, text):
    (tmp / name).write_text(text)
    return str(tmp / name)


def _train_case(runs, tmp, *extra):
    return train_args(runs["tiny"], tmp / "fresh", "--max-steps", "2", *SMALL, *extra)


def _damage_all_checkpoints(run: Path, name: str) -> None:
    for checkpoint in run.glob("checkpoint-*"):
        truncate(checkpoint / name)


CASES = {
    # train: nothing overwritten by accident
    # train: bad data, bad fields, bad values
    "train data file missing": (lambda r, t: (_train_case(r, t, "--data", str(t / "missing.json")), t),
                                "Data file not found"),
    "train data not JSON": (lambda r, t: (_train_case(r, t, "--data", _text(t, "broken.json", '[{"instruction": "x",')),
                                          t), "Malformed JSON"),
    "train record lacks output": (lambda r, t: (_train_case(r, t, "--data", _text(t, "fields.json", json.dumps(
        [{"instruction": "x", "output": "y"}, {"instruction": "x"}]))), t), "record 1 lacks the field(s) output"),
    "train records empty after truncation": (lambda r, t: (_train_case(r, t, "--data", _text(t, "long.json", json.dumps(
        [{"instruction": "word " * 300, "output": "y"}] * 3))), t), "empty after truncation"),
    "train k not below the layer count": (lambda r, t: (_train_case(r, t, "--k", "5"), t),
                                          "smaller than the model's number of layers"),
    "train top_k above k": (lambda r, t: (_train_case(r, t, "--top-k", "4"), t), "top_k must be between 1 and k=3"),
    "yaml unknown field": (lambda r, t: (["train", "--config", _yaml(t, "learning_rat: 0.1\n")], t),
                           "Unknown config field(s): learning_rat"),
    "yaml file missing": (lambda r, t: (["train", "--config", str(t / "nope.yaml")], t), "Config file not found"),
    "train into a finished run": (lambda r, t: (train_args(r["tiny"], _copy(r, "mod", t), "--max-steps", "4", *SMALL),
                                                t / "mod"), "already holds a run; pass --resume"),
    "train --resume --overwrite": (lambda r, t: (train_args(r["tiny"], _copy(r, "mod", t), "--resume", "--overwrite"),
                                                 t / "mod"), "Choose one of --resume"),
    "train --output-dir is a file": (lambda r, t: ((t / "f").write_text("x") and
                                                   train_args(r["tiny"], t / "f", *SMALL), t), "is a file"),
    "train --resume without a checkpoint": (lambda r, t: (_train_case(r, t, "--resume"), t), "no checkpoint found"),
    # train: config values validated before any model loads
    "yaml learning_rate is text": (lambda r, t: (["train", "--config", _yaml(t, "learning_rate: fast\n")], t),
                                   "learning_rate must be a number, got 'fast'"),
    "yaml is a list": (lambda r, t: (["train", "--config", _yaml(t, "- 1\n- 2\n")], t), "must hold a mapping"),
    "yaml lora_r not whole": (lambda r, t: (["train", "--config", _yaml(t, "lora_r: 2.5\n")], t),
                              "lora_r must be a whole number"),
    "yaml bool is text": (lambda r, t: (["train", "--config", _yaml(t, "bf16: maybe\n")], t),
                          "bf16 must be true or false"),
    "micro batch larger than batch": (lambda r, t: (_train_case(r, t, "--batch-size", "4", "--micro-batch-size", "8"),
                                                    t), "must be a multiple of micro_batch_size 8"),
    "batch not a multiple of micro": (lambda r, t: (_train_case(r, t, "--batch-size", "6", "--micro-batch-size", "4"),
                                                    t), "must be a multiple of micro_batch_size 4"),
    "unknown scheduler": (lambda r, t: (_train_case(r, t, "--lr-scheduler", "zigzag"), t), "Unknown lr_scheduler"),
    "dropout out of range": (lambda r, t: (_train_case(r, t, "--lora-dropout", "1.5"), t),
                             "lora_dropout must be >= 0 and < 1"),
    "negative learning rate": (lambda r, t: (_train_case(r, t, "--learning-rate", "-1"), t), "learning_rate must be > 0"),
    "max_steps zero": (lambda r, t: (_train_case(r, t, "--max-steps", "0"), t), "max_steps must be -1"),
    "missing model folder": (lambda r, t: (train_args(t / "no" / "such-model", t / "o", *SMALL), t),
                             "Model folder"),
    "builtin count not a number": (lambda r, t: (_train_case(r, t, "--data", "builtin:arithmetic:abc"), t),
                                   "must be a positive whole number, not 'abc'"),
    "csv training data": (lambda r, t: ((t / "d.csv").write_text("a,b\n") and
                                        _train_case(r, t, "--data", str(t / "d.csv")), t), "not a .json or .jsonl file"),
    # train --resume: damaged checkpoints and other settings
    "resume, every optimizer.pt truncated": (
        lambda r, t: (_damage_all_checkpoints(_copy(r, "mod", t), "optimizer.pt") or
                      train_args(r["tiny"], t / "mod", "--max-steps", "4", *SMALL, "--resume"), t / "mod"),
        "optimizer.pt is damaged"),
    "resume, every adapter_model.safetensors truncated": (
        lambda r, t: (_damage_all_checkpoints(_copy(r, "mod", t), "adapter_model.safetensors") or
                      train_args(r["tiny"], t / "mod", "--max-steps", "4", *SMALL, "--resume"), t / "mod"),
        "adapter_model.safetensors is damaged"),
    "resume, every trainer_state.json corrupt": (
        lambda r, t: (_damage_all_checkpoints(_copy(r, "mod", t), "trainer_state.json") or
                      train_args(r["tiny"], t / "mod", "--max-steps", "4", *SMALL, "--resume"), t / "mod"),
        "trainer_state.json is damaged"),
    "resume with other settings": (
        lambda r, t: (train_args(r["tiny"], _copy(r, "mod", t), "--max-steps", "4", *SMALL, "--resume",
                                 "--learning-rate", "5e-3", "--k", "2"), t / "mod"),
        "settings differ"),
    # eval
    "eval --dtype unknown": (lambda r, t: (_eval(r, "--dtype", "float8", "--output", str(t / "o")), t),
                             "Unknown dtype 'float8'"),
    "eval --device nonsense": (lambda r, t: (_eval(r, "--device", "toaster", "--output", str(t / "o")), t),
                               "Unknown device"),
    "eval --output is a file": (lambda r, t: ((t / "f").write_text("x") and _eval(r, "--output", str(t / "f")), t),
                                "is a file"),
    "eval missing model folder": (lambda r, t: (["eval", "--model", str(t / "nowhere" / "m"), "--datasets", "builtin",
                                                 "--output", str(t / "o")], t), "does not exist"),
    "eval truncated mod_model.safetensors": (
        lambda r, t: (truncate(_copy(r, "mod", t) / "adapter" / "mod_model.safetensors") or
                      _eval(r, "--adapter", str(t / "mod" / "adapter"), "--output", str(t / "o")), t),
        "mod_model.safetensors is damaged"),
    "eval truncated LoRA adapter_model.safetensors": (
        lambda r, t: (truncate(_copy(r, "lora", t) / "adapter" / "adapter_model.safetensors") or
                      _eval(r, "--adapter", str(t / "lora" / "adapter"), "--output", str(t / "o")), t),
        "adapter_model.safetensors is damaged"),
    "eval malformed mod_config.json": (
        lambda r, t: ((_copy(r, "mod", t) / "adapter" / "mod_config.json").write_text('{"k": 3, "router_init": }') and
                      _eval(r, "--adapter", str(t / "mod" / "adapter"), "--output", str(t / "o")), t),
        "mod_config.json is damaged"),
    "eval MoD adapter on another base": (
        lambda r, t: (["eval", "--model", str(r["other"]), "--adapter", str(r["mod"] / "adapter"), "--datasets",
                       "builtin", "--limit", "2", "--output", str(t / "o")], t),
        "trained on a different base model"),
    "eval LoRA-only adapter on another base": (
        lambda r, t: (["eval", "--model", str(r["other"]), "--adapter", str(r["lora"] / "adapter"), "--datasets",
                       "builtin", "--limit", "2", "--output", str(t / "o")], t), "trained on a different base model"),
    "eval folder holding other settings": (
        lambda r, t: (_eval(r, "--adapter", str(r["mod"] / "adapter"), "--num-beams", "2",
                            "--output", str(_copy(r, "eval", t))), t / "eval"), "holds a run with other settings"),
    "eval damaged run.json": (
        lambda r, t: ((_copy(r, "eval", t) / "run.json").write_text("{") and
                      _eval(r, "--adapter", str(r["mod"] / "adapter"), "--output", str(t / "eval")), t / "eval"),
        "run.json is damaged"),
    "eval CSV test file": (lambda r, t: ((t / "t.csv").write_text("q,a\n") and
                                         ["eval", "--datasets", f"gsm8k={t / 't.csv'}", "--output", str(t / "o")], t),
                           "is not a .json file"),
    # report and solved
    "report missing folder": (lambda r, t: (["report", str(t / "nope")], t), "does not exist"),
    "report damaged run.json": (lambda r, t: ((_copy(r, "eval", t) / "run.json").write_text("[1,") and
                                              ["report", str(t / "eval")], t / "eval"), "run.json is damaged"),
    "solved missing folder": (lambda r, t: (["solved", str(t / "gone"), str(r["eval"]), "--dataset", "builtin",
                                             "--output", str(t / "o")], t), "gone does not exist"),
    "solved one result": (lambda r, t: (["solved", str(r["eval"]), "--dataset", "builtin", "--output", str(t / "o")],
                                        t), "at least two"),
    "solved a CSV file": (lambda r, t: ((t / "x.csv").write_text("a\n") and
                                        ["solved", str(t / "x.csv"), str(r["eval"]), "--dataset", "builtin"], t),
                          "is not a results file"),
    # params
    "params missing model folder": (lambda r, t: (["params", "--model", str(t / "no" / "model")], t), "does not exist"),
    "params k zero": (lambda r, t: (["params", "--model", str(r["tiny"]), "--k", "0"], t), "k must be >= 1"),
    "params unknown preset": (lambda r, t: (["params", "--model", str(r["tiny"]), "--preset", "lora_x"], t),
                              "Unknown preset"),
    # experiment
    "experiment eval_limit zero": (lambda r, t: (["experiment", "variants", "--smoke", "--eval-limit", "0",
                                                  "--output-dir", str(t / "s")], t), "eval_limit must be >= 1"),
    "experiment yaml text number": (lambda r, t: (["experiment", "variants", "--config", _yaml(t, "num_beams: two\n"),
                                                   "--output-dir", str(t / "s")], t), "num_beams must be a number"),
    "experiment unknown run": (lambda r, t: (["experiment", "ablations", "--smoke", "--only", "nope", "--model",
                                              str(r["tiny"]), "--output-dir", str(t / "s")], t), "No run named nope"),
    # lm-eval
    "lm-eval --dtype unknown": (lambda r, t: (["lm-eval", "--model", str(r["tiny"]), "--tasks", "modetune_gsm8k_gen",
                                               "--dtype", "int3"], t), "Unknown dtype"),
    "lm-eval --output is a folder": (lambda r, t: (["lm-eval", "--model", str(r["tiny"]), "--tasks",
                                                    "modetune_builtin_gen", "--output", str(t)], t), "is a folder"),
    "lm-eval adapter on another base": (
        lambda r, t: (["lm-eval", "--model", str(r["other"]), "--adapter", str(r["lora"] / "adapter"), "--tasks",
                       "modetune_builtin_gen", "--limit", "1"], t), "trained on a different base model"),
    "lm-eval --limit -1": (lambda r, t: (["lm-eval", "--model", str(r["tiny"]), "--tasks", "modetune_builtin_gen",
                                         "--limit", "-1"], t), "limit must be > 0"),
    "lm-eval --num-fewshot -1": (lambda r, t: (["lm-eval", "--model", str(r["tiny"]), "--tasks",
                                                "modetune_builtin_gen", "--num-fewshot", "-1"], t),
                                 "num_fewshot must be >= 0"),
    # probe and fit-router: every field checked when the config is built, YAML text coerced or refused
    "probe --candidates 0": (lambda r, t: (["probe", "--model", str(r["tiny"]), "--candidates", "0",
                                            "--output", str(t / "p")], t), "candidates must be >= 1"),
    "probe --oracle-steps -1": (lambda r, t: (["probe", "--model", str(r["tiny"]), "--oracle-steps", "-1",
                                               "--output", str(t / "p")], t), "oracle_steps must be >= 1"),
    "probe yaml text": (lambda r, t: (["probe", "--config", _yaml(t, "records: many\n"), "--output", str(t / "p")], t),
                        "records must be"),
    "fit-router --ce-records 0": (lambda r, t: (["fit-router", "--model", str(r["tiny"]), "--ce-records", "0",
                                                 "--output", str(t / "f")], t), "ce_records must be >= 1"),
    "fit-router --val-size -1": (lambda r, t: (["fit-router", "--model", str(r["tiny"]), "--val-size", "-1",
                                                "--output", str(t / "f")], t), "val_size must be >= 0"),
    "fit-router yaml text": (lambda r, t: (["fit-router", "--config", _yaml(t, "steps: ten\n"),
                                            "--output", str(t / "f")], t), "steps must be"),
    "train hf folder with a loading script": (
        lambda r, t: ((t / "ds").mkdir() or (t / "ds" / "ds.py").write_text("import datasets\n") and
                      train_args(r["tiny"], t / "fresh", "--data", f"hf:{t / 'ds'}"), t), "cannot load it"),
    "probe data of 3 records": (
        lambda r, t: ((t / "three.json").write_text(json.dumps([{"instruction": f"{i}+1?", "output": str(i + 1)}
                                                                for i in range(3)])) and
                      ["probe", "--model", str(r["tiny"]), "--data", str(t / "three.json"), "--output", str(t / "p")],
                      t), "at least 4 records"),
    "lm-eval unknown task": (lambda r, t: (["lm-eval", "--model", str(r["tiny"]), "--tasks", "no_such_task",
                                            "--limit", "1"], t), "Unknown lm-eval task(s): no_such_task"),
    "experiment --seeds -1": (lambda r, t: (["experiment", "variants", "--smoke", "--seeds", "-1", "--model",
                                             str(r["tiny"]), "--output-dir", str(t / "s")], t), "seeds must be >= 0"),
    "train --seed -1": (lambda r, t: (_train_case(r, t, "--seed", "-1"), t), "seed must be >= 0"),
    "experiment tuned --lr-grid 1,1": (lambda r, t: (["experiment", "tuned", "--lr-grid", "1,1", "--output-dir",
                                                      str(t / "s")], t), "lr_grid lists a value twice"),
    "experiment tuned arm grid 1/1": (lambda r, t: (["experiment", "tuned", "--arms", "a=lora_notk+lr_grid=1/1",
                                                     "--output-dir", str(t / "s")], t), "distinct positive numbers"),
    "experiment --seeds 42,42": (lambda r, t: (["experiment", "variants", "--seeds", "42,42", "--output-dir",
                                                str(t / "s")], t), "seeds lists a value twice"),
    "experiment --equivalence-margin 2": (lambda r, t: (["experiment", "tuned", "--equivalence-margin", "2",
                                                         "--output-dir", str(t / "s")], t),
                                          "equivalence_margin must be > 0 and <= 1"),
    "experiment --smoke tuned seeds overlap": (lambda r, t: (["experiment", "tuned", "--smoke", "--tune-seeds", "42",
                                                              "--model", str(r["tiny"]), "--output-dir", str(t / "s")],
                                                             t), "tune_seeds and seeds must be disjoint"),
}
if not torch.cuda.is_available():  # a device this torch cannot use
    CASES["eval --device cuda on CPU torch"] = (lambda r, t: (_eval(r, "--device", "cuda", "--output", str(t / "o")),
                                                              t), "cannot use CUDA")
    CASES["lm-eval --device cuda on CPU torch"] = (
        lambda r, t: (["lm-eval", "--model", str(r["tiny"]), "--tasks", "modetune_builtin_gen", "--device", "cuda"], t),
        "cannot use CUDA")
    CASES["train --fp16 on CPU torch"] = (lambda r, t: (_train_case(r, t, "--fp16"), t), "needs a CUDA GPU")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup, match = CASES[case]
    argv, watched = setup(runs, tmp_path)
    before = snapshot(watched)
    capsys.readouterr()
    one_line_error(capsys, argv, match)
    assert snapshot(watched) == before  # nothing lost, nothing half-written


# ---------------------------------------------------------------------------- what must still work
def _log_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "loss" in row]


def test_yaml_numbers_written_as_text_are_coerced(tmp_path):
    from modetune.cli import build_parser
    from modetune.cli.flags import config_from_args
    from modetune.cli.train import TrainCommand

    path = _yaml(tmp_path, "learning_rate: 3e-4\nlora_r: '8'\nreport_to: none\ndistill_lambda: 1e-1\n")
    config = config_from_args(build_parser().parse_args(["train", "--config", path]), TrainCommand).train
    assert config.learning_rate == 3e-4 and isinstance(config.learning_rate, float)
    assert config.lora_r == 8 and config.report_to == ["none"] and config.mod.distill_lambda == 0.1


def test_overwrite_removes_the_old_run_completely(runs, tmp_path):
    run = _copy(runs, "mod", tmp_path)
    (run / "checkpoint-99").mkdir()  # an old run's later checkpoint must not survive into the new run
    (run / "notes.txt").write_text("mine")
    assert main(train_args(runs["tiny"], run, "--max-steps", "2", *SMALL, "--overwrite")) == 0
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    assert _log_steps(run) == [1, 2] and (run / "adapter" / "mod_config.json").is_file()
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_resume_falls_back_to_the_newest_complete_checkpoint(runs, tmp_path, capsys):
    run = _copy(runs, "mod", tmp_path)
    shutil.rmtree(run / "adapter")
    truncate(run / "checkpoint-4" / "optimizer.pt")
    capsys.readouterr()
    assert main(train_args(runs["tiny"], run, "--max-steps", "4", *SMALL, "--resume")) == 0
    out, err = capsys.readouterr()
    assert "checkpoint-4" in err and "optimizer.pt is damaged" in err
    assert "resuming from checkpoint-2" in out
    assert _log_steps(run) == [1, 2, 3, 4]  # steps 3 and 4 were logged twice before the fix
    assert (run / "adapter" / "mod_model.safetensors").is_file()


def test_lora_only_adapter_records_its_base_and_the_override_is_loud(runs, tmp_path, capsys):
    record = json.loads((runs["lora"] / "adapter" / "modetune_adapter.json").read_text())
    assert len(record["base_fingerprint"]) == 16
    assert (runs["lora"] / "checkpoint-2" / "modetune_adapter.json").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", str(runs["other"]), "--adapter", str(runs["lora"] / "adapter"), "--datasets",
                 "builtin", "--limit", "1", "--max-new-tokens", "2", "--no-progress", "--output", str(tmp_path / "o"),
                 "--ignore-base-mismatch"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "different base model" in err and "--ignore-base-mismatch" in err


def test_report_warns_about_every_row_it_could_not_read(runs, tmp_path, capsys):
    run = _copy(runs, "eval", tmp_path)
    path = run / "builtin.jsonl"
    path.write_text(path.read_text() + '{"index": 9, "id": "x", "cor')
    capsys.readouterr()
    assert main(["report", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "builtin.jsonl: line 3 is not a readable result row (cut off mid-write)" in err
    assert json.loads(out)["rows"][0]["n"]["builtin"] == 2


# ---------------------------------------------------------------------------- remote code only when asked
CUSTOM_CODE = '''from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM

Path({marker!r}).write_text("the model folder's own code ran")


class MarkedConfig(LlamaConfig):
    model_type = "marked_llama"


class MarkedForCausalLM(LlamaForCausalLM):
    config_class = MarkedConfig
'''


@pytest.fixture()
def remote_code_model(tiny_model_dir, tmp_path):
    """A local model folder whose config maps to its own code, which leaves a marker file when run."""
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "custom"))
    marker = tmp_path / "MARKER"
    (folder / "custom_model.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="marked_llama", architectures=["MarkedForCausalLM"],
                  auto_map={"AutoConfig": "custom_model.MarkedConfig",
                            "AutoModelForCausalLM": "custom_model.MarkedForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker, {"HF_MODULES_CACHE": str(tmp_path / "modules")}


REMOTE_COMMANDS = {
    "params": lambda m, t: ["params", "--model", str(m)],
    "train": lambda m, t: train_args(m, t / "run", "--max-steps", "1", *SMALL),
    "eval": lambda m, t: ["eval", "--model", str(m), "--datasets", "builtin", "--limit", "1", "--output", str(t / "e")],
    "lm-eval": lambda m, t: ["lm-eval", "--model", str(m), "--tasks", "modetune_builtin_gen", "--limit", "1"],
    "experiment": lambda m, t: ["experiment", "ablations", "--smoke", "--only", "lora_notk-s42", "--model", str(m),
                                "--output-dir", str(t / "s")],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(REMOTE_COMMANDS))
def test_remote_code_does_not_run_without_the_flag(command, remote_code_model, tmp_path):
    model, marker, env = remote_code_model
    result = run_cli(*REMOTE_COMMANDS[command](model, tmp_path), env_extra=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and "--trust-remote-code" in lines[0], result.stderr[-2000:]
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["params", "eval"])
def test_remote_code_runs_with_the_flag(command, remote_code_model, tmp_path):
    model, marker, env = remote_code_model
    result = run_cli(*REMOTE_COMMANDS[command](model, tmp_path), "--trust-remote-code", env_extra=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert marker.read_text() == "the model folder's own code ran"


def test_batch_that_the_launched_processes_cannot_make_up_is_refused(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun with 2 processes: 2 records cannot feed 2 x 2
    one_line_error(capsys, _train_case(runs, tmp_path), "micro_batch_size 2 x 2 process(es)")
    assert not (tmp_path / "fresh").exists()


def test_eval_overwrite_replaces_another_run(runs, tmp_path):
    run = _copy(runs, "eval", tmp_path)
    assert main(_eval(runs, "--adapter", str(runs["mod"] / "adapter"), "--limit", "1", "--num-beams", "2",
                      "--output", str(run), "--overwrite")) == 0
    assert json.loads((run / "run.json").read_text())["settings"]["decoding"] == "beam2"
    rows = [json.loads(line) for line in (run / "builtin.jsonl").read_text().splitlines()]
    assert [row["decoding"] for row in rows] == ["beam2"]  # the greedy rows of the old run are gone
