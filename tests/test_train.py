"""`modetune train`: the Trainer integration, presets, checkpoints and resumption, DDP, fault injection."""

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
from train_helpers import fails, run_cli, snapshot, train_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


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
    assert main(train_args(tiny_model_dir, out, "--max-steps", "4", "--batch-size", "4", "--micro-batch-size", "2",
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
                "tokens_per_s", "router_entropy", "router_nonfinal_top"):
        assert key in steps[-1], key
    # per-step losses are whole-batch means: total = task + lambda * sum(distill)
    row = steps[-1]
    assert row["loss"] == pytest.approx(row["task_loss"] + row["distill_0"] + row["distill_1"], rel=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["router_weights"]) == 3 and abs(sum(summary["router_weights"]) - 1) < 1e-4
    assert 0 < summary["router_entropy"] <= 1.0987 and 0 <= summary["router_nonfinal_top"] <= 1  # entropy <= log 3
    card = (out / "adapter" / "README.md").read_text()  # the model card says what the adapter is
    assert str(tmp_path) not in card and "/tmp" not in card  # never a local path as the base
    assert "base model | a local model" in card and "| preset | lora_notk_mod |" in card
    assert f"| steps | {summary['steps']} |" in card and "| k (members) | 3 |" in card
    assert f"| validation CE (nats/answer token) | {summary['val_loss']:.4f} |" in card


def test_model_card_names_the_hub_model():
    from modetune.train.card import adapter_card
    from modetune.train.config import TrainConfig
    from modetune.utils.publish import hub_name

    assert hub_name("default") == "HuggingFaceTB/SmolLM2-135M-Instruct" == hub_name("smollm2-135m-instruct")
    assert hub_name("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert hub_name("/no/such/folder") is None
    card = adapter_card(TrainConfig(), steps=38, val_loss=0.123456)
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert "| validation CE (nats/answer token) | 0.1235 |" in card and "| steps | 38 |" in card
    assert "| distillation lambda | 1.0 |" in card


def test_gradient_accumulation_equals_full_batch(tiny_model_dir, tmp_path):
    runs = {}
    for name, micro in (("accumulated", "2"), ("full", "8")):
        out = tmp_path / name
        assert main(train_args(tiny_model_dir, out, "--max-steps", "3", "--batch-size", "8", "--micro-batch-size", micro,
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


RESUME_RUN = ["--max-steps", "6", "--batch-size", "4", "--micro-batch-size", "2", "--save-steps", "2",
              "--lora-dropout", "0.1"]
TIMINGS = {"tokens_per_s", "train_runtime", "train_samples_per_second", "train_steps_per_second", "eval_runtime",
           "eval_samples_per_second", "eval_steps_per_second"}


def _log_rows(run: Path) -> list[dict]:
    """Every row of ``log.jsonl`` without its wall-clock timings."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> Path:
    ref = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(train_args(tiny_model_dir, ref, *RESUME_RUN)) == 0
    return ref


@pytest.mark.parametrize("fault", ["kill:1", "kill:5", "kill-save:4", "kill-save:6", "kill-adapter:0",
                                   "kill-validation:0"])
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_run(tiny_model_dir, tmp_path, uninterrupted, fault):
    """A SIGKILL before the first checkpoint, between steps, inside a checkpoint save (once its
    weights are written), inside the final adapter write, or in the final validation: ``--resume``
    ends with the uninterrupted run's weights bit for bit, the same ``log.jsonl`` rows (every step
    once, the end-of-training row and the validation row; timings aside), the same summary, and no
    staging folder left. Dropout on: the resumed RNG state matters."""
    run = tmp_path / "killed"
    killed = run_cli(*train_args(tiny_model_dir, run, *RESUME_RUN), env_extra={"MODETUNE_TEST_FAULT": fault})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run / "summary.json").exists()
    assert main([*train_args(tiny_model_dir, run, *RESUME_RUN), "--resume"]) == 0
    _assert_same(_weights(run / "adapter"), _weights(uninterrupted / "adapter"))
    assert _log_rows(run) == _log_rows(uninterrupted)
    assert [row["step"] for row in _logged(run)] == [1, 2, 3, 4, 5, 6]
    ours, theirs = (json.loads((r / "summary.json").read_text()) for r in (run, uninterrupted))
    assert {k: v for k, v in ours.items() if k not in ("adapter", "seconds", "eval_command")} == \
        {k: v for k, v in theirs.items() if k not in ("adapter", "seconds", "eval_command")}
    assert not [p for p in run.rglob("*") if "staging" in p.name or p.name.endswith(".modetune-old")]


def test_ddp_two_processes_equals_single_process(tiny_model_dir, tmp_path):
    pytest.importorskip("torch.distributed")
    common = ["--max-steps", "3", "--batch-size", "4", "--save-steps", "100"]
    single = tmp_path / "single"
    assert main(train_args(tiny_model_dir, single, *common, "--micro-batch-size", "4")) == 0
    ddp = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "modetune.cli", *train_args(tiny_model_dir, ddp, *common, "--micro-batch-size", "2")]
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
def test_presets_train_what_they_name(tiny_model_dir, tmp_path, preset):
    """Each preset trains its own parameters: LoRA on layers 0..N-k-1 (notk) or all N layers, the
    router and member norms (MoD), a fixed route to layer N-1 (lora_layer_1); and they moved."""
    import re

    from safetensors.torch import load_file

    out = tmp_path / preset
    assert main(train_args(tiny_model_dir, out, "--preset", preset, "--max-steps", "2", "--batch-size", "2",
                      "--micro-batch-size", "2", "--save-steps", "100", "--val-size", "0")) == 0
    adapter = out / "adapter"
    lora_layers, n, k = {"lora_notk": {0, 1}, "lora_all": set(range(5)), "lora_layer_1": set(range(5))}, 5, 3
    if preset in lora_layers:
        weights = load_file(str(adapter / "adapter_model.safetensors"))
        assert {int(re.search(r"layers\.(\d+)\.", name).group(1)) for name in weights} == lora_layers[preset]
        assert any(t.abs().sum() > 0 for name, t in weights.items() if "lora_B" in name)  # B starts at 0: it trained
    else:
        assert not (adapter / "adapter_model.safetensors").exists()
    if preset in ("mod_only", "lora_layer_1"):
        config = json.loads((adapter / "mod_config.json").read_text())
        mod = load_file(str(adapter / "mod_model.safetensors"))
        if preset == "mod_only":
            assert config["k"] == k and mod["router.weight"].abs().sum() > 0  # zero at the start: it trained
        else:
            assert config["loss_layer"] == 1 and not mod["router.weight"].any()  # the route is fixed, not learned
    else:
        assert not (adapter / "mod_model.safetensors").exists()
    assert n == 5  # the tiny model's layer count the expectations above assume


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import functools

    from faults import FaultInjection
    from modetune.train import trainer

    monkeypatch.setattr(trainer, "train", functools.partial(trainer.train, callbacks=[FaultInjection("nan:3")]))
    out = tmp_path / "nan"
    fails(capsys, train_args(tiny_model_dir, out, "--max-steps", "4", "--batch-size", "2", "--micro-batch-size", "2",
                         "--save-steps", "2", "--val-size", "0"), "Non-finite loss at step 3")
    assert (out / "checkpoint-2" / "mod_model.safetensors").exists() and not (out / "adapter").exists()


def test_train_adds_the_callbacks_it_is_given_and_reads_no_fault_variable(tiny_model_dir, tmp_path, monkeypatch):
    """``train(config, callbacks=[...])`` adds each callback (one with ``install`` is given the
    trainer first); the library reads no fault-injection variable and ships no fault module."""
    import importlib.util

    from transformers import TrainerCallback

    from modetune.train import trainer
    from modetune.train.config import TrainConfig

    class Probe(TrainerCallback):
        installed = None

        def install(self, t):
            Probe.installed = t

    class Stop(Exception):
        pass

    seen = {}

    def fake_train(self, *args, **kwargs):
        seen["callbacks"] = [type(c).__name__ for c in self.callback_handler.callbacks]
        raise Stop

    monkeypatch.setattr(trainer.MoDTrainer, "train", fake_train)
    monkeypatch.setenv("MODETUNE_FAULT_AT_STEP", "kill:1")  # the old variable: ignored
    config = TrainConfig(model=str(tiny_model_dir), data="builtin:arithmetic:16", val_size=0, lora_r=4,
                         report_to=["none"], output_dir=str(tmp_path / "run"))
    with pytest.raises(Stop):
        trainer.train(config, callbacks=[Probe()])
    assert "Probe" in seen["callbacks"] and isinstance(Probe.installed, trainer.MoDTrainer)
    assert importlib.util.find_spec("modetune.train.faults") is None
    source = "".join(p.read_text() for p in Path(trainer.__file__).parent.parent.rglob("*.py"))
    assert "MODETUNE_FAULT" not in source and "MODETUNE_TEST_FAULT" not in source


def test_resume_of_a_finished_run_changes_nothing_and_a_larger_budget_extends_it(tiny_model_dir, tmp_path, capsys):
    """``--resume`` on a complete run says so and trains nothing; with a larger ``--max-steps`` it
    continues, and the learning rate follows the linear schedule planned for the new length."""

    out = tmp_path / "run"
    args = train_args(tiny_model_dir, out, "--batch-size", "4", "--micro-batch-size", "4", "--save-steps", "2")
    assert main([*args, "--max-steps", "4"]) == 0
    first = _logged(out)
    before = snapshot(out)
    capsys.readouterr()
    assert main([*args, "--max-steps", "4", "--resume"]) == 0
    assert "holds a complete run (4 steps): nothing to do" in capsys.readouterr().out
    assert snapshot(out) == before  # not one file changed
    assert main([*args, "--max-steps", "2", "--resume"]) == 1  # a shorter budget is another run
    assert "max_steps 4 -> 2" in capsys.readouterr().err

    assert main([*args, "--max-steps", "6", "--resume"]) == 0
    steps = _logged(out)
    assert [row["step"] for row in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[:4] == first
    # linear decay, warm-up 0, planned for 6 steps from step 5 on: lr_s = lr * (6 - (s - 1)) / 6
    assert steps[4]["learning_rate"] == pytest.approx(1e-2 * 2 / 6) and steps[5]["learning_rate"] == pytest.approx(
        1e-2 * 1 / 6)
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    assert (out / "checkpoint-6").is_dir()
