"""`modetune train`: presets, data, Trainer integration, checkpoints, DDP, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modetune.cli import main
from modetune.data import builtin_split, load_json_records, load_training_records, tokenize_record
from modetune.errors import DataError
from modetune.training import TrainConfig, count_parameters

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _args(model_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--output-dir", str(out), "--data", "builtin:arithmetic:48",
            "--val-size", "4", "--lora-r", "4", "--lora-dropout", "0", "--report-to", "none", "--warmup-steps", "0",
            "--learning-rate", "1e-2", *extra]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in ("adapter_model.safetensors", "mod_model.safetensors"):
        if (directory / name).exists():
            tensors.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    return tensors


def _logged(out: Path) -> list[dict]:
    return [row for row in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in row]


def _assert_same(a: dict, b: dict, rtol=0.0, atol=0.0):
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)


def test_train_end_to_end_writes_adapter_logs_and_plots(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_model_dir, out, "--max-steps", "4", "--batch-size", "4", "--micro-batch-size", "2",
                      "--save-steps", "2", "--report-to", "tensorboard")) == 0
    printed = capsys.readouterr().out
    assert "mean router weight per member" in printed and "adapter saved to" in printed
    for name in ("log.jsonl", "loss.png", "routing.png", "summary.json", "adapter/mod_config.json",
                 "adapter/mod_model.safetensors", "adapter/adapter_model.safetensors", "checkpoint-4"):
        assert (out / name).exists(), name
    assert list(out.glob("runs/*/events.out.tfevents.*")), "no TensorBoard events"
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [row for row in logs if "loss" in row]
    assert len(steps) == 4
    for key in ("task_loss", "distill_0", "distill_1", "router_0", "router_2", "sparsity", "learning_rate",
                "tokens_per_s"):
        assert key in steps[-1], key
    # per-step losses are whole-batch means: total = task + lambda * sum(distill)
    row = steps[-1]
    assert row["loss"] == pytest.approx(row["task_loss"] + row["distill_0"] + row["distill_1"], rel=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["router_weights"]) == 3 and abs(sum(summary["router_weights"]) - 1) < 1e-4


def test_gradient_accumulation_equals_full_batch(tiny_model_dir, tmp_path):
    runs = {}
    for name, micro in (("accumulated", "2"), ("full", "8")):
        out = tmp_path / name
        assert main(_args(tiny_model_dir, out, "--max-steps", "3", "--batch-size", "8", "--micro-batch-size", micro,
                          "--save-steps", "100")) == 0
        runs[name] = (_weights(out / "adapter"), _logged(out))
    (acc_w, acc_log), (full_w, full_log) = runs["accumulated"], runs["full"]
    # the loss and gradient norm of every optimizer step agree: the loss is normalised per global batch
    assert [round(r["loss"], 5) for r in acc_log] == [round(r["loss"], 5) for r in full_log]
    for a, b in zip(acc_log, full_log):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    # Adam turns float-rounding differences of near-zero gradients into weight differences far
    # below the learning rate (1e-2 per step); anything larger would be a real mismatch
    _assert_same(acc_w, full_w, rtol=1e-3, atol=2e-4)


def _cli(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "modetune.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_resume_after_kill_equals_uninterrupted_run(tiny_model_dir, tmp_path):
    common = ["--max-steps", "6", "--batch-size", "4", "--micro-batch-size", "2", "--save-steps", "2",
              "--lora-dropout", "0.1"]
    ref = tmp_path / "ref"
    assert main(_args(tiny_model_dir, ref, *common)) == 0

    run = tmp_path / "killed"
    killed = _cli(*_args(tiny_model_dir, run, *common), env_extra={"MODETUNE_FAULT_AT_STEP": "kill:5"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "checkpoint-4").is_dir() and not (run / "adapter").exists()
    resumed = _cli(*_args(tiny_model_dir, run, *common), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same(_weights(run / "adapter"), _weights(ref / "adapter"))


def test_ddp_two_processes_equals_single_process(tiny_model_dir, tmp_path):
    pytest.importorskip("torch.distributed")
    common = ["--max-steps", "3", "--batch-size", "4", "--save-steps", "100"]
    single = tmp_path / "single"
    assert main(_args(tiny_model_dir, single, *common, "--micro-batch-size", "4")) == 0
    ddp = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "modetune.cli", *_args(tiny_model_dir, ddp, *common, "--micro-batch-size", "2")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 4" in result.stdout
    # Adam turns float-rounding differences of near-zero gradients into differences far below
    # the learning rate (1e-2 per step); anything larger would be a real mismatch
    _assert_same(_weights(ddp / "adapter"), _weights(single / "adapter"), rtol=1e-3, atol=2e-4)
    ddp_log, single_log = _logged(ddp), _logged(single)
    assert len(ddp_log) == len(single_log) == 3
    for a, b in zip(ddp_log, single_log):
        for key in ("loss", "grad_norm", "task_loss", "distill_0"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


@pytest.mark.parametrize("preset", ["lora_notk", "lora_all", "mod_only", "lora_layer_1"])
def test_presets_train(tiny_model_dir, tmp_path, preset):
    out = tmp_path / preset
    assert main(_args(tiny_model_dir, out, "--preset", preset, "--max-steps", "2", "--batch-size", "2",
                      "--micro-batch-size", "2", "--save-steps", "100", "--val-size", "0")) == 0
    files = {p.name for p in (out / "adapter").iterdir()}
    assert ("mod_model.safetensors" in files) == (preset in ("mod_only", "lora_layer_1"))
    assert ("adapter_model.safetensors" in files) == (preset != "mod_only")


def test_paper_parameter_deltas(tmp_path, capsys):
    """LLaMA-7B shapes from a config alone: +10.3% (lora_all), +0.04% (lora_notk_mod)."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert count_parameters(str(tmp_path), "lora_notk")["trainable"] == 29 * 1_753_088
    assert round(count_parameters(str(tmp_path), "lora_all")["delta_pct"], 1) == 10.3
    assert round(count_parameters(str(tmp_path), "lora_all_mod")["delta_pct"], 1) == 10.4
    assert main(["params", "--model", str(tmp_path), "--preset", "lora_notk_mod", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trainable"] - result["lora_notk_trainable"] == 4096 * 3 + 2 * 4096
    assert round(result["delta_pct"], 2) == 0.04


def test_builtin_split_never_overlaps():
    from modetune import evaluation

    train, test = builtin_split(2000, 200, seed=3)
    assert len(train) == 2000 and len(test) == 200
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}
    assert evaluation.load_records("builtin") == test  # what `modetune eval --datasets builtin` reads
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


def test_real_math_split_records_load(shared_data):
    records = load_json_records(shared_data / "math-split" / "train.json")
    assert len(records) == 1573
    with pytest.warns(UserWarning, match="skipped 3 record"):
        usable = load_training_records(str(shared_data / "math-split" / "train.json"))
    assert len(usable) == 1573 - 3 and all(r["output"].strip() for r in usable)


# ---------------------------------------------------------------- bad input: one line, non-zero exit
def _fails(capsys, argv, match):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # (progress bars of model loading may come before it)
    assert "modetune train: error: " in last and match in last.split("error: ", 1)[1], err


def test_bad_inputs(tiny_model_dir, tmp_path, capsys):
    base = ["--max-steps", "1", "--batch-size", "2", "--micro-batch-size", "2", "--val-size", "0"]

    def train(*extra):
        argv = _args(tiny_model_dir, tmp_path / "bad", *base, *extra)
        return argv

    _fails(capsys, train("--data", str(tmp_path / "missing.json")), "Data file not found")
    (tmp_path / "broken.json").write_text('[{"instruction": "x", "output": "y"},')
    _fails(capsys, train("--data", str(tmp_path / "broken.json")), "Malformed JSON")
    (tmp_path / "fields.json").write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x"}]))
    _fails(capsys, train("--data", str(tmp_path / "fields.json")), "record 1 lacks the field(s) output")
    (tmp_path / "long.json").write_text(json.dumps([{"instruction": "word " * 300, "output": "y"}] * 3))
    _fails(capsys, train("--data", str(tmp_path / "long.json")), "empty after truncation")
    _fails(capsys, train("--k", "5"), "smaller than the model's number of layers")
    _fails(capsys, train("--top-k", "4"), "top_k must be between 1 and k=3")
    _fails(capsys, train("--preset", "lora_everything"), "Unknown preset")
    (tmp_path / "cfg.yaml").write_text("learning_rat: 0.1\n")
    _fails(capsys, ["train", "--config", str(tmp_path / "cfg.yaml")], "Unknown config field(s): learning_rat")
    _fails(capsys, ["train", "--config", str(tmp_path / "nope.yaml")], "Config file not found")


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MODETUNE_FAULT_AT_STEP", "nan:3")
    out = tmp_path / "nan"
    _fails(capsys, _args(tiny_model_dir, out, "--max-steps", "4", "--batch-size", "2", "--micro-batch-size", "2",
                         "--save-steps", "2", "--val-size", "0"), "Non-finite loss at step 3")
    assert (out / "checkpoint-2" / "mod_model.safetensors").exists() and not (out / "adapter").exists()


def test_yaml_config_and_flag_override(tmp_path):
    from modetune.cli import build_parser
    from modetune.training import config_from_args

    (tmp_path / "c.yaml").write_text("preset: lora_all_mod\ndistill_lambda: 0.1\nlora_r: 8\nlora_targets: [q_proj]\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--lora-r", "16",
                                      "--distill-through-body", "--top-k", "none"])
    config = config_from_args(args)
    assert isinstance(config, TrainConfig)
    literal = config_from_args(build_parser().parse_args(["train", "--router-init", "uniform", "--distill-direction",
                                                         "forward", "--router-input", "entry", "--loss-impl", "naive"]))
    assert (literal.mod.router_init, literal.mod.distill_direction, literal.mod.router_input,
            literal.mod.loss_impl) == ("uniform", "forward", "entry", "naive")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--router-init", "sideways"])
    assert (config.preset, config.lora_r, config.lora_targets) == ("lora_all_mod", 16, ["q_proj"])
    assert config.mod.distill_lambda == 0.1 and config.mod.distill_through_body is True and config.mod.top_k is None


def test_shipped_configs_parse():
    from modetune.training import load_yaml_config

    root = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"default.yaml", "paper_llama7b.yaml", "smollm_math_split.yaml"} <= set(names)
    for path in root.glob("*.yaml"):
        TrainConfig.from_dict(load_yaml_config(path))
    # `modetune train` with no arguments runs exactly configs/default.yaml
    assert TrainConfig.from_dict(load_yaml_config(root / "default.yaml")) == TrainConfig()
    assert "math_data.json" not in "".join(p.read_text() for p in root.glob("*.yaml"))


def test_source_options_split_by_hash_and_sample(tmp_path):
    from modetune.data import hash_half, parse_source
    from modetune.evaluation import load_datasets

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
