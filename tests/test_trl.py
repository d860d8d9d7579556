"""TRL: a MoDModel with LoRA trains under trl's SFTTrainer (MoDSFTTrainer) with the MoD loss."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_sft_trainer_optimises_the_mod_loss(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from modetune import MoDConfig, MoDModel, get_mod_model
    from modetune.train.trl import MoDSFTTrainer
    from tiny import lora

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_mod_model(lora(base, k=3), MoDConfig(k=3, distill_lambda=1.0))
    rows = [{"prompt": f"What is {a} + {b}?", "completion": f" {a + b}."} for a in range(4) for b in range(4)]
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                     logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, max_length=64,
                     bf16=False)  # float32: the saved model must reproduce the trained one exactly
    trainer = MoDSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    assert "forward" not in vars(model)  # TRL's fused-head patch of `forward` is undone
    norms_before = [p.detach().clone() for p in model.norms.parameters()]
    router_before = model.router.weight.detach().clone()

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["labels"] == -100).any()  # completion-only labels from TRL
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    expected = model(**batch, num_items_in_batch=None)  # MoDModel's own loss on the same batch
    assert torch.allclose(loss, expected.loss, atol=1e-5)
    assert not torch.allclose(expected.loss, expected.task_loss)  # the distillation term is in it
    loss.backward()
    assert model.router.weight.grad is not None and model.router.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.norms.parameters())
    model.zero_grad()
    trainer._metrics["train"].clear()  # the check above is not a training step
    trainer._total_train_tokens = 0

    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:  # TRL's metrics computed from the ensemble, beside MoD's own
        assert {"entropy", "mean_token_accuracy", "num_tokens", "task_loss", "distill_0", "distill_1"} <= set(entry)
        # the logged loss is MoD's: L_task + lambda * sum_i KL_i (lambda = 1), up to the Trainer's rounding
        assert entry["loss"] == pytest.approx(entry["task_loss"] + entry["distill_0"] + entry["distill_1"], abs=2e-3)
    assert not torch.equal(model.router.weight.detach(), router_before)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(norms_before, model.norms.parameters()))

    model.save_pretrained(tmp_path / "adapter")
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    loaded = MoDModel.from_pretrained(fresh, tmp_path / "adapter")
    model.eval()
    ids = batch["input_ids"][:2]
    with torch.no_grad():
        a, b = loaded(input_ids=ids).logits, model(input_ids=ids).logits
        assert torch.allclose(a, b, atol=1e-5)
