"""Issue 15: the router's own learning rate, the router warm-up, and the stand-alone router pre-fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modetune.cli import main
from train_helpers import fails, run_cli, train_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _tiny_mod():
    from modetune import MoDConfig, get_mod_model
    from tiny import lora, tiny_model

    return get_mod_model(lora(tiny_model("llama")), MoDConfig(k=3))


def test_router_and_member_norms_get_their_own_optimizer_groups():
    from modetune.train.router_opt import GROUP_KEY, ROUTER, optimizer_groups

    model = _tiny_mod()
    decay = {name for name, _ in model.named_parameters() if "norm" not in name}
    groups = optimizer_groups(model, 1e-3, 3e-2, 0.1, decay)
    expected = {id(p) for p in [*model.router.parameters(), *model.norms.parameters()]}
    router = [p for g in groups if g[GROUP_KEY] == ROUTER for p in g["params"]]
    body = [p for g in groups if g[GROUP_KEY] != ROUTER for p in g["params"]]
    assert {id(p) for p in router} == expected and len(router) == len(expected) == 3  # W_g + two norms
    assert {g["lr"] for g in groups if g[GROUP_KEY] == ROUTER} == {3e-2}
    assert {g["lr"] for g in groups if g[GROUP_KEY] != ROUTER} == {1e-3}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in body} == trainable - expected and all("lora_" in n for n, p in model.named_parameters()
                                                                   if id(p) in {id(q) for q in body})
    assert len(router) + len(body) == len(trainable)  # each trainable parameter in exactly one group
    # norms never decay; the router weight follows the Trainer's rule
    assert all(g["weight_decay"] == 0.0 for g in groups for p in g["params"] if any(p is q for q in
                                                                                   model.norms.parameters()))
    # no router_lr: the router groups run at learning_rate
    assert {g["lr"] for g in optimizer_groups(model, 1e-3, None, 0.0, decay)} == {1e-3}


def test_warmup_needs_a_router_and_positive_rates(capsys, tiny_model_dir, tmp_path):
    from modetune.train.config import TrainConfig
    from modetune.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="router_warmup_steps needs a preset with MoD"):
        TrainConfig(preset="lora_notk", router_warmup_steps=2)
    with pytest.raises(ConfigError, match="router_lr must be > 0"):
        TrainConfig(router_lr=0.0)
    fails(capsys, train_args(tiny_model_dir, tmp_path / "x", "--router-warmup-steps", "-1"), "router_warmup_steps")


def _optimizer_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return {f"{name}:{k}": v for name in ("adapter_model.safetensors", "mod_model.safetensors")
            for k, v in load_file(str(directory / name)).items()}


WARMUP = ["--max-steps", "6", "--batch-size", "4", "--micro-batch-size", "2", "--save-steps", "2", "--save-total-limit",
          "5", "--router-lr", "5e-2", "--router-warmup-steps", "3", "--router-init", "uniform", "--weight-decay", "0.1"]


@pytest.mark.slow
def test_router_lr_and_warmup_train_save_and_resume(tiny_model_dir, tmp_path, capsys):
    ref = tmp_path / "ref"
    assert main(train_args(tiny_model_dir, ref, *WARMUP)) == 0
    assert "router and member norms 0.05; router warm-up 3 step(s)" in capsys.readouterr().out
    saved = json.loads((ref / "adapter" / "train_config.json").read_text())
    assert saved["router_lr"] == 5e-2 and saved["router_warmup_steps"] == 3
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["router_lr"] == 5e-2 and summary["router_warmup_steps"] == 3
    logs = [row for row in map(json.loads, (ref / "log.jsonl").read_text().splitlines()) if "loss" in row]
    # the body's rate is 0 during the warm-up and its own schedule starts after; the router's never stops
    assert [row["learning_rate"] == 0.0 for row in logs] == [True] * 3 + [False] * 3
    assert all(row["router_learning_rate"] > 0 for row in logs[:-1])
    # within the warm-up (checkpoint-2) the body has not moved: LoRA B still zero, no AdamW state at all
    lora = load_file(str(ref / "checkpoint-2" / "adapter_model.safetensors"))
    assert all(not t.any() for name, t in lora.items() if "lora_B" in name)
    assert load_file(str(ref / "checkpoint-2" / "mod_model.safetensors"))["router.weight"].abs().sum() > 0
    state = _optimizer_state(ref / "checkpoint-2")
    groups = {g["modetune_group"]: g for g in state["param_groups"]}
    assert groups["router"]["initial_lr"] == 5e-2 and groups["body"]["initial_lr"] == 1e-2
    stepped = {i for i, s in state["state"].items() if "exp_avg" in s}
    router_ids = {i for g in state["param_groups"] if g["modetune_group"] == "router" for i in g["params"]}
    assert stepped == router_ids
    # after it, LoRA trains
    assert any(t.any() for name, t in load_file(str(ref / "adapter" / "adapter_model.safetensors")).items()
               if "lora_B" in name)
    # killed inside the warm-up, resumed from checkpoint-2: the same run, rates and weights
    run = tmp_path / "killed"
    killed = run_cli(*train_args(tiny_model_dir, run, *WARMUP), env_extra={"MODETUNE_TEST_FAULT": "kill:3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli(*train_args(tiny_model_dir, run, *WARMUP), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref_w, run_w = _weights(ref / "adapter"), _weights(run / "adapter")
    assert ref_w.keys() == run_w.keys()
    for key in ref_w:
        torch.testing.assert_close(run_w[key], ref_w[key], rtol=0, atol=0, msg=key)
    resumed_logs = [row for row in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in row]
    assert [r["learning_rate"] for r in resumed_logs[-4:]] == [r["learning_rate"] for r in logs[-4:]]
    assert [r["router_learning_rate"] for r in resumed_logs[-4:]] == [r["router_learning_rate"] for r in logs[-4:]]


def test_fit_router_moves_only_router_and_norms_and_lowers_training_ce(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from modetune import MoDConfig, MoDModel
    from modetune.train.fit_router import FitRouterConfig, fit_router
    from modetune.utils.models import load_model
    from tiny import lora

    lora_dir = tmp_path / "lora"
    lora(load_model(str(tiny_model_dir))[0]).save_pretrained(str(lora_dir))  # a LoRA-only adapter, B non-zero
    config = FitRouterConfig.from_dict(dict(model=str(tiny_model_dir), adapter=str(lora_dir), data="builtin:arithmetic:32",
                                            val_size=2, ce_records=8, steps=8, batch_size=4, learning_rate=3e-2,
                                            output=str(tmp_path / "fitted"), mod=MoDConfig(router_init="uniform")))
    model, result = fit_router(config, progress=False)
    assert result["kind"] == "lora"
    reference = MoDModel(PeftModel.from_pretrained(load_model(str(tiny_model_dir))[0], str(lora_dir)),
                         MoDConfig(router_init="uniform"))
    fitted, untouched = dict(model.named_parameters()), dict(reference.named_parameters())
    assert fitted.keys() == untouched.keys()
    moved = sorted(name for name in fitted if not torch.equal(fitted[name], untouched[name]))
    assert moved and all(name.startswith(("ensemble.router.", "ensemble.norms.")) for name in moved), moved
    assert "ensemble.router.weight" in moved
    # every other weight bit-identical, LoRA included, and the saved LoRA files unchanged
    lora_in, lora_out = load_file(str(lora_dir / "adapter_model.safetensors")), \
        load_file(str(tmp_path / "fitted" / "adapter_model.safetensors"))
    assert lora_in.keys() == lora_out.keys() and all(torch.equal(lora_in[k], lora_out[k]) for k in lora_in)
    before, after = result["train_ce_before"]["ensemble_ce"], result["train_ce_after"]["ensemble_ce"]
    assert after < before - 1e-3, (before, after)
    assert json.loads((tmp_path / "fitted" / "fit_router.json").read_text())["train_ce_after"]["ensemble_ce"] == after
    # the fitted adapter loads like any MoD adapter, with the fitted router
    loaded = MoDModel.from_pretrained(load_model(str(tiny_model_dir))[0], tmp_path / "fitted")
    assert torch.equal(loaded.router.weight, model.router.weight)


def test_fit_router_command_on_a_base_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit-router", "--model", str(tiny_model_dir), "--data", "builtin:arithmetic:24", "--steps", "2",
                 "--batch-size", "2", "--val-size", "2", "--ce-records", "2", "--objective", "task",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "val CE of the ensemble" in printed and "MoD adapter saved to" in printed
    assert {"mod_config.json", "mod_model.safetensors", "fit_router.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "adapter_model.safetensors").exists()  # a base model: no LoRA
    assert json.loads((out / "mod_config.json").read_text())["distill_lambda"] == 1.0  # the objective is not saved
    fails(capsys, ["fit-router", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "none")],
          "does not exist", command="fit-router")
