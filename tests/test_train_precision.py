"""The Trainer path under mixed precision, gradient checkpointing and torch.compile (tiny models).

- ``--bf16`` (CPU autocast): the per-step loss of a 20-step run stays within a stated
  tolerance of the float32 run, and the adapter loads and evaluates.
- ``--fp16`` on a machine without CUDA is refused with one line before any model loads
  (the Trainer would silently train in float32 there: no CPU fp16 autocast, no scaler).
- Gradient checkpointing through the Trainer gives the same gradients as without it.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from modetune.train.config import TrainConfig
from modetune.utils.errors import ConfigError
from train_helpers import fails, train_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

# bf16 vs float32, per-step loss over 20 steps of a tiny model: relative difference (seen: 1.8e-3)
BF16_LOSS_RTOL = 2e-2


def _losses(out):
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


@pytest.mark.slow
def test_bf16_training_tracks_float32_and_gives_a_usable_adapter(tiny_model_dir, tmp_path):
    from modetune.cli import main

    runs = {}
    for name in ("bf16", "no-bf16"):
        out = tmp_path / name
        assert main(train_args(tiny_model_dir, out, f"--{name}", "--max-steps", "20", "--batch-size", "4",
                               "--micro-batch-size", "4", "--save-steps", "100", "--cutoff-len", "64")) == 0
        runs[name] = _losses(out)
    low, full = runs["bf16"], runs["no-bf16"]
    assert len(low) == len(full) == 20
    assert low != full  # autocast did run (bf16 rounding changes the numbers)
    for step, (a, b) in enumerate(zip(low, full)):
        assert a == pytest.approx(b, rel=BF16_LOSS_RTOL), step
    assert full[-1] < full[0] - 0.1  # the run learns: the comparison is over a moving curve
    # the adapter loads onto the base and evaluates
    assert main(["eval", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "bf16" / "adapter"),
                 "--datasets", "builtin", "--limit", "4",
                 "--max-new-tokens", "8", "--output", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [result["n"] for result in summary["results"]] == [4]


def test_fp16_on_cpu_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # a model path that does not exist: had it tried to load, the error would name the model instead
    fails(capsys, train_args(tmp_path / "no-such-model", tmp_path / "run", "--fp16"), "fp16 needs a CUDA GPU")
    assert not (tmp_path / "run").exists()
    TrainConfig(fp16=True).check_device(cuda_available=True)  # on a GPU it is accepted
    with pytest.raises(ConfigError):
        TrainConfig(fp16=True).check_device(cuda_available=False)


class _GradsAtFirstStep(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _trainer_grads(model_dir, tmp_path, **overrides):
    from transformers import DataCollatorForSeq2Seq

    from modetune.data import load_training_records, tokenize_records
    from modetune.train.trainer import MoDTrainer, build_model, training_arguments

    config = TrainConfig(model=str(model_dir), data="builtin:arithmetic:8", val_size=0, lora_r=4, lora_dropout=0.0,
                         max_steps=1, batch_size=4, micro_batch_size=4, report_to=["none"], save_steps=100,
                         output_dir=str(tmp_path / "run"), **overrides)
    torch.manual_seed(0)
    model, tokenizer = build_model(config)
    tokenizer.padding_side = "right"
    with torch.no_grad():  # LoRA B starts at zero: give it values so the LoRA A gradients are not all zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(hash(name) % 1000))
    rows = tokenize_records(load_training_records(config.data, None, 0), tokenizer, 64, False, "alpaca")
    grabber = _GradsAtFirstStep()
    trainer = MoDTrainer(model=model, args=training_arguments(config), train_dataset=rows,
                         data_collator=DataCollatorForSeq2Seq(tokenizer, return_tensors="pt", padding=True),
                         callbacks=[grabber])
    trainer.train()
    return grabber.grads, model


def test_gradient_checkpointing_through_the_trainer_gives_the_same_gradients(tiny_model_dir, tmp_path):
    plain, _ = _trainer_grads(tiny_model_dir, tmp_path / "plain")
    checkpointed, model = _trainer_grads(tiny_model_dir, tmp_path / "ckpt", gradient_checkpointing=True)
    from modetune.mod.surgery import unwrap

    assert unwrap(model.base_model).is_gradient_checkpointing  # the Trainer did switch it on
    assert plain.keys() == checkpointed.keys()
    kinds = {kind: sum(kind in name for name in plain) for kind in ("router", "norms.", "lora_A", "lora_B")}
    assert all(kinds.values()), kinds
    for name in plain:
        assert plain[name].abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
