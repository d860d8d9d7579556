"""PEFT-shaped methods on MoDModel: MoD-aware where they can be, refused in one sentence where
they would leave the ensemble out (print_trainable_parameters, disable_adapter, push_to_hub, ...)."""

from __future__ import annotations

import pytest
import torch

from modetune import MoDConfig, get_mod_model
from modetune.eval.members import forced_member
from modetune.mod.model import REFUSED
from tiny import lora, perturb, tiny_model

IDS = torch.tensor([[1, 17, 23, 50, 31, 27, 5, 8]])


@pytest.fixture
def mod():
    return perturb(get_mod_model(lora(tiny_model("llama"), k=3), MoDConfig(k=3)))


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_print_trainable_parameters_counts_router_and_norms(mod, capsys):
    mod.print_trainable_parameters()
    out = capsys.readouterr().out
    lora_params = sum(p.numel() for n, p in mod.base_model.named_parameters() if "lora_" in n)
    mod_params = sum(p.numel() for p in mod.ensemble.parameters())
    assert mod_params > 0
    assert f"trainable params: {lora_params + mod_params:,} ||" in out
    assert f"MoD router and member norms: {mod_params:,}" in out
    plain = get_mod_model(tiny_model("llama"), MoDConfig(k=3))  # MoD only: no peft underneath
    plain.print_trainable_parameters()
    assert f"trainable params: {sum(p.numel() for p in plain.ensemble.parameters()):,} ||" in capsys.readouterr().out


def test_disable_adapter_switches_off_lora_the_ensemble_or_both(mod):
    ensemble = _logits(mod)
    with forced_member(mod, -1):
        final_member = _logits(mod)
    with mod.base_model.disable_adapter():  # peft's: LoRA off, ensemble still on
        ensemble_no_lora = _logits(mod)
    with mod.disable_adapter():
        both_off = _logits(mod)
    with mod.disable_adapter(lora=False):
        ensemble_off = _logits(mod)
    with mod.disable_adapter(ensemble=False):
        lora_off = _logits(mod)
    base = tiny_model("llama")  # same seed: the weights before LoRA and MoD
    torch.testing.assert_close(both_off, _logits(base), rtol=0, atol=1e-5)
    torch.testing.assert_close(ensemble_off, final_member, rtol=0, atol=1e-5)
    torch.testing.assert_close(lora_off, ensemble_no_lora, rtol=0, atol=1e-6)
    assert (ensemble_off - ensemble).abs().max() > 1e-3 and (both_off - ensemble_off).abs().max() > 1e-3
    torch.testing.assert_close(_logits(mod), ensemble, rtol=0, atol=0)  # everything back on afterwards


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_methods_that_would_leave_the_ensemble_out_are_refused(mod, name):
    assert hasattr(mod.base_model, name)  # the wrapped model has it: forwarding would have reached it
    with pytest.raises(AttributeError, match=f"MoDModel.{name} is refused: .+"):
        getattr(mod, name)


def test_push_to_hub_sends_the_complete_adapter(mod, tmp_path):
    """Against a local stand-in for the hub: the pushed folder is what save_pretrained writes."""
    import shutil

    class LocalHub:
        def create_repo(self, repo_id, private=None, exist_ok=False):
            (tmp_path / "hub" / repo_id).mkdir(parents=True, exist_ok=exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            shutil.copytree(folder_path, tmp_path / "hub" / repo_id, dirs_exist_ok=True)
            return f"local://{repo_id}"

    assert mod.push_to_hub("me/mod-adapter", api=LocalHub()) == "local://me/mod-adapter"
    mod.save_pretrained(tmp_path / "saved")
    pushed = tmp_path / "hub" / "me" / "mod-adapter"
    names = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert names == sorted(p.name for p in pushed.iterdir())
    assert {"mod_config.json", "mod_model.safetensors", "adapter_model.safetensors", "adapter_config.json"} <= set(names)
    for name in names:
        if name.endswith(".safetensors"):
            assert (pushed / name).read_bytes() == (tmp_path / "saved" / name).read_bytes(), name
