"""`modetune train`'s trainer options, each on the tiny setting: --resume PATH, --push-to-hub (offline),
--optim, --warmup-ratio, --neftune-noise-alpha, --run-name, --val-data and --columns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from modetune.cli import main
from train_helpers import fails, snapshot, train_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TINY = ("--batch-size", "4", "--micro-batch-size", "4")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in _rows(out) if "loss" in row]


def test_resume_from_a_chosen_checkpoint(tiny_model_dir, tmp_path, capsys):
    """``--resume checkpoint-2`` continues from step 2 (the later checkpoint removed, the log trimmed) to
    the uninterrupted run's losses; a folder that is not a checkpoint of the run, or a damaged one, is
    refused in one line with nothing changed; ``--resume`` alone still means the newest."""
    from modetune.cli import build_parser
    from modetune.cli.flags import config_from_args
    from modetune.cli.train import TrainCommand

    parse = lambda *argv: config_from_args(build_parser().parse_args(["train", *argv]), TrainCommand).resume
    assert (parse(), parse("--resume"), parse("--resume", "run/checkpoint-2")) == (None, "latest", "run/checkpoint-2")
    assert TrainCommand.from_dict({"resume": True}).resume == "latest"  # a YAML `resume: true`

    out = tmp_path / "run"
    args = train_args(tiny_model_dir, out, *TINY, "--max-steps", "4", "--save-steps", "2")
    assert main(args) == 0
    first = _losses(out)
    fails(capsys, [*args, "--resume", "checkpoint-9"], "not a checkpoint folder of", unchanged=[out])
    fails(capsys, [*args, "--resume", str(tmp_path)], "its checkpoints: checkpoint-2, checkpoint-4", unchanged=[out])
    assert main([*args, "--resume", str(out / "checkpoint-2")]) == 0
    assert "removed the later checkpoint-4" in capsys.readouterr().out
    assert _losses(out) == first  # steps 3 and 4 again, bit for bit
    (out / "checkpoint-2" / "trainer_state.json").write_text("{")  # damaged: refused, never skipped
    fails(capsys, [*args, "--resume", "checkpoint-2"], "the checkpoint is damaged", unchanged=[out])
    assert main([*args, "--resume"]) == 0 and "holds a complete run" in capsys.readouterr().out


def test_push_to_hub_offline_fails_in_one_line_and_keeps_the_adapter(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, out, *TINY, "--max-steps", "1", "--push-to-hub", "--hub-model-id", "me/tiny")
    fails(capsys, args, "push_to_hub: the adapter could not be pushed to me/tiny (")
    assert (out / "adapter" / "README.md").is_file() and (out / "adapter" / "mod_model.safetensors").is_file()
    before = snapshot(out)
    fails(capsys, [*args, "--resume"], "it is kept in")  # a complete run: the push is tried again, nothing trains
    assert snapshot(out) == before
    fails(capsys, [*args, "--hub-model-id", "a/b/c"], "hub_model_id 'a/b/c' is not a hub repository name")


def test_optimizer_choices_reach_the_trainer_with_the_router_groups(tiny_model_dir, tmp_path, capsys):
    """``--optim`` names the HF Trainer's optimizer, built over modetune's own groups (``router_lr``); an
    optimizer needing the Trainer's own set-up is refused; unset, the Trainer's default is untouched.
    ``--warmup-ratio`` warms up over that share of the steps (rounded up), replacing warmup_steps."""
    from transformers import Trainer, TrainingArguments
    from transformers.optimization import Adafactor

    from modetune.train import arguments, trainer
    from modetune.train.config import OPTIMIZERS, TrainConfig

    plain = dict(report_to=["none"], output_dir=str(tmp_path / "x"))
    assert arguments.training_arguments(TrainConfig(**plain)).optim == TrainingArguments(output_dir="x").optim
    for name in OPTIMIZERS:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(arguments.training_arguments(TrainConfig(optim=name, **plain)))
        assert cls is (Adafactor if name == "adafactor" else torch.optim.AdamW), name
        assert kwargs.get("fused", False) is (name == "adamw_torch_fused"), name
    ratio = arguments.training_arguments(TrainConfig(warmup_steps=0, warmup_ratio=0.3, max_steps=8, **plain))
    assert ratio.get_warmup_steps(8) == 3  # ceil(0.3 * 8)
    fails(capsys, train_args(tiny_model_dir, tmp_path / "a", "--optim", "galore_adamw"), "needs the HF Trainer's own")
    fails(capsys, train_args(tiny_model_dir, tmp_path / "a", "--optim", "adamw_fast"), "'adamw_fast' is unknown")
    both = arguments.training_arguments(TrainConfig(warmup_steps=2, warmup_ratio=0.5, max_steps=8, **plain))
    assert both.get_warmup_steps(8) == 4  # the ratio replaces warmup_steps

    seen = {}

    class Capture(trainer.TrainerCallback):
        def install(self, run):
            seen["trainer"] = run

        def on_train_begin(self, args, state, control, **kwargs):
            optimizer = seen["trainer"].optimizer
            seen["optimizer"] = getattr(optimizer, "optimizer", optimizer)

    out = tmp_path / "adafactor"
    config = TrainConfig(model=str(tiny_model_dir), output_dir=str(out), data="builtin:arithmetic:48", val_size=0,
                         lora_r=4, report_to=["none"], batch_size=4, micro_batch_size=4, max_steps=4,
                         learning_rate=1e-2, router_lr=1e-3, optim="adafactor", warmup_steps=0, warmup_ratio=0.5)
    trainer.train(config, callbacks=[Capture()])
    assert isinstance(seen["optimizer"], Adafactor)
    assert {group["modetune_group"] for group in seen["optimizer"].param_groups} == {"body", "router"}
    rows = [row for row in _rows(out) if "loss" in row]
    # warm-up over ceil(0.5 * 4) = 2 steps, then linear decay; the router group at its own peak
    assert [row["learning_rate"] / 1e-2 for row in rows] == pytest.approx([0, 0.5, 1, 0.5])
    assert max(row["router_learning_rate"] for row in rows) == pytest.approx(1e-3)
    assert torch.isfinite(torch.tensor([row["loss"] for row in rows])).all()


def test_neftune_noises_training_steps_only_and_run_name_names_the_run(tiny_model_dir, tmp_path, monkeypatch):
    """NEFTune reaches the MoD wrapper's embedding lookup: the first training loss changes; the
    validation inside and after training does not (learning rate 0 in step 1: same weights both
    ways). ``--run-name`` is the Trainer's run_name and TensorBoard's run folder; ``--project`` W&B's project."""
    monkeypatch.delenv("WANDB_PROJECT", raising=False)  # restored after the test
    outs = {alpha: tmp_path / f"a{alpha}" for alpha in (None, 5.0)}
    for alpha, out in outs.items():
        extra = ["--neftune-noise-alpha", str(alpha)] if alpha else ["--report-to", "tensorboard", "--run-name", "my-run",
                                                                   "--project", "my-project"]
        assert main([*train_args(tiny_model_dir, out, *TINY, "--max-steps", "1", "--warmup-steps", "2",
                                 "--eval-steps", "1"), *extra]) == 0
    plain, noisy = (_rows(out) for out in outs.values())
    assert [r["loss"] for r in plain if "loss" in r] != [r["loss"] for r in noisy if "loss" in r]
    evals = [[r["eval_loss"] for r in rows if "eval_loss" in r] for rows in (plain, noisy)]
    assert len(evals[0]) == 2 and evals[0] == evals[1]  # in training (step 1) and after it: no noise
    assert json.loads((outs[5.0] / "adapter" / "train_config.json").read_text())["neftune_noise_alpha"] == 5.0
    events = list((outs[None] / "runs" / "my-run").glob("events.out.tfevents.*"))
    assert any(b'"run_name": "my-run"' in event.read_bytes() for event in events)  # the Trainer's arguments, logged
    assert os.environ["WANDB_PROJECT"] == "my-project"  # W&B's project (it reads no argument)


def test_val_data_and_columns(tiny_model_dir, tmp_path, capsys):
    """``--val-data`` validates on its own file (no val_size carve-out), with the same record checks as --data;
    ``--columns`` renames a file's fields before those checks, an unknown source column named with its file."""
    from modetune.data import load_training_records

    records = load_training_records("builtin:arithmetic:40", seed=1)
    renamed = [{"question": r["instruction"], "rationale": r["output"], "label": r["answer"]} for r in records]
    train_file, val_file = tmp_path / "train.jsonl", tmp_path / "val.json"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in renamed[:32]))
    val_file.write_text(json.dumps(renamed[32:]))
    out = tmp_path / "run"
    columns = ("--columns", "question=instruction,rationale=output,label=answer")
    base = [*train_args(tiny_model_dir, out, *TINY, "--max-steps", "2"), "--data", str(train_file)]
    fails(capsys, [*base, "--val-size", "0", "--columns", "query=instruction"],
          f"{train_file}: no record has the column(s) query that columns renames")
    fails(capsys, [*base, "--columns", "question"], "'question' is not SOURCE=FIELD")
    fails(capsys, [*base, *columns, "--val-size", "0", "--val-data", str(train_file.with_name("none.json"))],
          "Data file not found")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([renamed[0], {"question": "q", "label": "1"}]))
    fails(capsys, [*base, *columns, "--val-size", "0", "--val-data", str(bad)], f"{bad}: record 1 lacks the field(s) output")
    assert main([*base, *columns, "--val-data", str(val_file)]) == 0  # replaces the default val_size carve-out
    assert "32 training records, 8 validation" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] is not None and summary["steps"] == 2
