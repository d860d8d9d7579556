"""Gradient clipping's scope: ``per_group`` never lets MoD's gradients scale LoRA's, and
``global`` is exactly the Hugging Face Trainer's own clip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import Trainer

from modetune.cli import main
from modetune.train.clipping import clip_groups, clip_per_group, group_norms
from modetune.train.trainer import MoDTrainer
from train_helpers import train_args


def _mod_lora_with_grads(mod_scale: float):
    """A tiny LoRA + MoD model after one backward pass, the MoD gradients multiplied by ``mod_scale``."""
    from modetune import MoDConfig, MoDModel
    from tiny import batch, lora, perturb, tiny_model

    model = perturb(MoDModel(lora(tiny_model("llama")), MoDConfig(k=3, distill_lambda=1.0)))
    ids, mask, labels = batch()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    with torch.no_grad():
        for p in clip_groups(model)["mod"]:
            p.grad.mul_(mod_scale)
    return model


@pytest.mark.parametrize("mod_scale", [1.0, 1e3, 1e6])
def test_per_group_leaves_lora_untouched_however_large_the_mod_gradients(mod_scale):
    model = _mod_lora_with_grads(mod_scale)
    groups = clip_groups(model)
    assert groups["lora"] and groups["mod"]
    assert all("lora_" in n for n, p in model.named_parameters() if any(p is q for q in groups["lora"]))
    before = {id(p): p.grad.clone() for ps in groups.values() for p in ps}
    norms = group_norms(groups)
    bound = 2 * float(norms["lora"])  # LoRA within the bound; MoD above it once scaled
    total, pre = clip_per_group(groups, bound)
    assert all(torch.equal(p.grad, before[id(p)]) for p in groups["lora"])  # bit for bit
    assert float(total) == pytest.approx(math.hypot(float(pre["lora"]), float(pre["mod"])), rel=1e-6)
    mod_after = float(group_norms({"mod": groups["mod"]})["mod"])
    if float(pre["mod"]) > bound:
        assert mod_after == pytest.approx(bound, rel=1e-4)  # clipped on its own norm
    else:
        assert all(torch.equal(p.grad, before[id(p)]) for p in groups["mod"])


def test_per_group_clips_lora_on_its_own_norm_only():
    model = _mod_lora_with_grads(1e-6)  # MoD gradients far below the bound: left alone
    groups = clip_groups(model)
    mod_before = [p.grad.clone() for p in groups["mod"]]
    lora_norm = float(group_norms(groups)["lora"])
    clip_per_group(groups, lora_norm / 4)
    assert float(group_norms({"lora": groups["lora"]})["lora"]) == pytest.approx(lora_norm / 4, rel=1e-4)
    assert all(torch.equal(p.grad, b) for p, b in zip(groups["mod"], mod_before))


def _spy_grads(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Every optimizer step's gradients as the optimizer sees them (after any clipping)."""
    seen: list[dict[str, torch.Tensor]] = []
    original = MoDTrainer._get_grad_norm

    def spy(self, model, grad_norm=None):
        seen.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        return original(self, model, grad_norm=grad_norm)

    monkeypatch.setattr(MoDTrainer, "_get_grad_norm", spy)
    return seen


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]


# a large distillation weight: MoD's gradient norm far above LoRA's, as the member norms' is in the study
CLIP = ["--max-steps", "1", "--batch-size", "4", "--micro-batch-size", "4", "--save-steps", "100",
        "--distill-lambda", "100000", "--max-grad-norm", "1.0"]


def test_trainer_per_group_gives_lora_its_unclipped_gradient(tiny_model_dir, tmp_path, monkeypatch):
    grads = {}
    for scope in ("per_group", "global", "none"):
        seen = _spy_grads(monkeypatch)
        flags = ["--max-grad-norm", "0"] if scope == "none" else ["--clip-scope", scope]
        out = tmp_path / scope
        assert main(train_args(tiny_model_dir, out, *CLIP, *flags)) == 0
        grads[scope] = seen[0]
        row = _log(out)[0]
        assert row["grad_norm"] == pytest.approx(math.hypot(row["grad_norm_lora"], row["grad_norm_mod"]), rel=1e-5)
    row = _log(tmp_path / "per_group")[0]
    assert row["grad_norm_lora"] < 1.0 < row["grad_norm_mod"]  # the case the scope is for
    lora = [n for n in grads["none"] if "lora_" in n and grads["none"][n].any()]  # (lora_A's is 0 at B = 0)
    mod = [n for n in grads["none"] if n.startswith(("ensemble.router", "ensemble.norms"))]
    assert lora and mod
    assert all(torch.equal(grads["per_group"][n], grads["none"][n]) for n in lora)  # LoRA untouched
    assert not any(torch.equal(grads["global"][n], grads["none"][n]) for n in lora)  # global scaled it down
    scale = 1.0 / row["grad_norm"]
    for n in lora[:3]:
        torch.testing.assert_close(grads["global"][n], grads["none"][n] * scale, rtol=1e-4, atol=1e-9)


def test_global_scope_is_the_trainers_own_clip_bit_for_bit(tiny_model_dir, tmp_path, monkeypatch):
    """Today's behaviour: the same logged losses, gradient norms and weights as the Trainer's
    unmodified clip (``Trainer._clip_grad_norm`` over all parameters)."""
    from safetensors.torch import load_file

    common = ["--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--save-steps", "100",
              "--distill-lambda", "5000"]
    ours = tmp_path / "ours"
    assert main(train_args(tiny_model_dir, ours, *common)) == 0
    monkeypatch.setattr(MoDTrainer, "_clip_grad_norm", Trainer._clip_grad_norm)
    monkeypatch.setattr(MoDTrainer, "_get_grad_norm", Trainer._get_grad_norm)
    plain = tmp_path / "plain"
    assert main(train_args(tiny_model_dir, plain, *common)) == 0
    keys = ("loss", "grad_norm", "task_loss", "distill_0", "distill_1")
    assert [[r[k] for k in keys] for r in _log(ours)] == [[r[k] for k in keys] for r in _log(plain)]
    assert _log(ours)[0]["grad_norm"] > 1.0  # the clip acted
    for name in ("adapter_model.safetensors", "mod_model.safetensors"):
        a, b = load_file(ours / "adapter" / name), load_file(plain / "adapter" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_clip_settings_are_refused_when_wrong(capsys, tiny_model_dir, tmp_path):
    from train_helpers import fails

    fails(capsys, train_args(tiny_model_dir, tmp_path / "a", "--clip-scope", "layers"), "clip_scope")
    fails(capsys, train_args(tiny_model_dir, tmp_path / "b", "--max-grad-norm", "-1"), "max_grad_norm")
