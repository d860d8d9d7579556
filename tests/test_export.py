"""`modetune export`: a folder that plain transformers loads (modetune not importable) with the
same logits and greedy generation as the MoDModel it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from modetune import MoDConfig, get_mod_model
from modetune.cli import main
from modetune.utils.models import record_base_model
from tiny import lora, perturb

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4  # max |logit difference|: merging LoRA into the weights only reorders float32 sums

LOADER = r'''
import importlib.util, json, sys
BLOCKED = ("peft", "modetune")
sys.modules.update(dict.fromkeys(BLOCKED))  # none can be imported: as in a Python without them
for name in BLOCKED:
    try:
        __import__(name)
        sys.exit(name + " is importable")
    except ImportError:
        assert importlib.util.find_spec(name) is None  # transformers sees it as not installed
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
folder, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
ids = torch.tensor(ids)
with torch.no_grad():
    logits = model(ids).logits
    generated = model.generate(ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8)
save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, out)
'''


def _adapter(tmp_path, tiny_model_dir, config: MoDConfig):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    mod = perturb(get_mod_model(lora(base, k=config.k), config))
    folder = tmp_path / "adapter"
    mod.save_pretrained(folder)
    record_base_model(folder, str(tiny_model_dir))
    return folder


@pytest.mark.parametrize("config, merge", [(MoDConfig(k=3), True),
                                           (MoDConfig(k=3, router_input="entry", top_k=2), False)])
def test_export_loads_without_modetune_and_matches(tmp_path, tiny_model_dir, config, merge, capsys):
    from modetune.eval.runner import load_for_eval

    adapter = _adapter(tmp_path, tiny_model_dir, config)
    out = tmp_path / "exported"
    assert main(["export", "--adapter", str(adapter), "--output", str(out), *([] if merge else ["--no-merge"])]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "mod_model.safetensors", "modeling_mod.py", "tokenizer.json"} <= files
    assert ("lora" in files) != merge
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["auto_map"] == {"AutoConfig": "modeling_mod.MoDEnsembleConfig",
                                       "AutoModelForCausalLM": "modeling_mod.MoDForCausalLM"}
    assert config_json["model_type"] == "modetune_mod" and config_json["mod_ensemble"]["model_type"] == "llama"
    source = (out / "modeling_mod.py").read_text()
    assert not any(line.lstrip().startswith(("import modetune", "from modetune", "from .")) for line in source.splitlines())

    mod, tokenizer, _ = load_for_eval(None, str(adapter))  # the MoDModel it came from (recorded base)
    ids = torch.tensor([[1, 17, 23, 99, 314, 2718, 5, 8], [1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        expected = mod(input_ids=ids).logits
        expected_gen = mod.generate(input_ids=ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "m")}
    result_file = tmp_path / "result.safetensors"
    done = subprocess.run([sys.executable, "-c", LOADER, str(out), json.dumps(ids.tolist()), str(result_file)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    if not merge:  # LoRA kept apart needs peft, and says so (in the folder's README too)
        assert done.returncode != 0 and "needs peft" in done.stderr, done.stderr[-3000:]
        assert "peft" in (out / "README.md").read_text()
        env.pop("PYTHONPATH", None)
        done = subprocess.run([sys.executable, "-c", LOADER.replace('("peft", "modetune")', '("modetune",)'), str(out),
                               json.dumps(ids.tolist()), str(result_file)],
                              capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = load_file(str(result_file))
    difference = (result["logits"] - expected).abs().max().item()
    assert difference < TOLERANCE, difference
    # the ensemble matters: the exported logits are not the base model's
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        assert (plain(ids).logits - expected).abs().max() > 100 * TOLERANCE
    assert torch.equal(result["generated"], expected_gen)


def test_export_needs_a_mod_adapter(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", "--adapter", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 1
    assert "holds no MoD adapter" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_the_export_runs_the_ensemble_module_itself_on_three_architectures(tmp_path, arch, tokenizer):
    """The folder's ``modeling_mod.py`` is ``mod/ensemble.py`` byte for byte, so the exported model has
    what MoDModel has: soft-capping (Gemma-2), a tensor ``logits_to_keep``, a float32 router under
    autocast; its logits equal the MoDModel's."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from modetune.export import export_model
    from modetune.mod import ensemble
    from tiny import tiny_model

    mod = perturb(get_mod_model(lora(tiny_model(arch), k=3), MoDConfig(k=3, router_input="entry")))
    assert (mod.softcap is not None) == (arch == "gemma2")
    out = export_model(mod, tokenizer, tmp_path / arch)
    assert (out / "modeling_mod.py").read_bytes() == Path(ensemble.__file__).read_bytes()
    loaded = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    assert json.loads((out / "config.json").read_text()).get("final_logit_softcapping") == mod.softcap
    ids = torch.tensor([[1, 17, 23, 50, 31, 27, 5, 8], [1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        expected = mod(input_ids=ids).logits
        got = loaded(ids).logits
        assert (got - expected).abs().max() < TOLERANCE
        if arch == "gemma2":  # capped: no logit beyond the cap, as in the ensemble
            assert got.abs().max() <= mod.softcap
        positions = torch.tensor([1, 5])
        torch.testing.assert_close(loaded(ids, logits_to_keep=positions).logits, got[:, positions], rtol=0, atol=1e-5)
        torch.testing.assert_close(mod(input_ids=ids, logits_to_keep=positions).logits, expected[:, positions],
                                   rtol=0, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = loaded(ids).logits
            reference = mod(input_ids=ids).logits
        assert loaded.mod_ensemble.stash == {} or set(loaded.mod_ensemble.stash) <= {"router_weights", "logits_to_keep"}
        assert loaded.mod_ensemble.stash["router_weights"].dtype == torch.float32  # the router stays float32
        assert (under_autocast.float() - reference.float()).abs().max() < 0.1


def test_without_trust_remote_code_the_export_refuses_to_load(tmp_path, tiny_model_dir):
    """Its model type is its own: plain transformers cannot mistake the folder for the base model
    (which would be the final member alone) and asks for trust_remote_code."""
    from transformers import AutoModelForCausalLM

    adapter = _adapter(tmp_path, tiny_model_dir, MoDConfig(k=3))
    out = tmp_path / "exported"
    assert main(["export", "--adapter", str(adapter), "--output", str(out)]) == 0
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=False)


def test_final_member_export_is_a_plain_model_equal_to_member_last(tmp_path, tiny_model_dir, capsys):
    """``--final-member``: a standard folder (no remote code, no ensemble) that
    ``AutoModelForCausalLM`` loads without flags, with the logits of ``--member -1``."""
    from transformers import AutoModelForCausalLM

    from modetune.eval.members import forced_member
    from modetune.eval.runner import load_for_eval

    adapter = _adapter(tmp_path, tiny_model_dir, MoDConfig(k=3))
    out = tmp_path / "plain"
    assert main(["export", "--adapter", str(adapter), "--output", str(out), "--final-member"]) == 0
    assert "final member alone" in capsys.readouterr().out
    files = {p.name for p in out.iterdir()}
    assert "modeling_mod.py" not in files and "mod_model.safetensors" not in files
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["model_type"] == "llama" and "auto_map" not in config_json
    assert "from_pretrained(folder)" in (out / "README.md").read_text()

    mod, _, _ = load_for_eval(None, str(adapter))
    ids = torch.tensor([[1, 17, 23, 99, 314, 2718, 5, 8]])
    with torch.no_grad(), forced_member(mod, -1):
        expected = mod(input_ids=ids).logits
    with torch.no_grad():
        ensemble = mod(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(out))(ids).logits
    assert (got - expected).abs().max() < TOLERANCE
    assert (got - ensemble).abs().max() > 100 * TOLERANCE  # it is not the ensemble
    assert main(["export", "--adapter", str(adapter), "--output", str(tmp_path / "x"), "--final-member",
                 "--no-merge"]) == 1
