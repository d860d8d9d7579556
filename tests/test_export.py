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
from modetune.models import record_base_model
from tiny import lora, perturb

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4  # max |logit difference|: merging LoRA into the weights only reorders float32 sums

LOADER = r'''
import json, sys
import torch
from safetensors.torch import save_file
try:
    import modetune  # noqa: F401
    sys.exit("modetune is importable")
except ImportError:
    pass
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
    assert config_json["auto_map"] == {"AutoModelForCausalLM": "modeling_mod.MoDForCausalLM"}
    assert "modetune" not in (out / "modeling_mod.py").read_text().split('"""', 2)[2].replace("modetune export", "")

    mod, tokenizer, _ = load_for_eval(None, str(adapter))  # the MoDModel it came from (recorded base)
    ids = torch.tensor([[1, 17, 23, 99, 314, 2718, 5, 8], [1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        expected = mod(input_ids=ids).logits
        expected_gen = mod.generate(input_ids=ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8)

    stub = tmp_path / "stub" / "modetune"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('modetune is not importable here')\n")
    env = {**os.environ, "PYTHONPATH": str(stub.parent), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "m")}
    result_file = tmp_path / "result.safetensors"
    done = subprocess.run([sys.executable, "-c", LOADER, str(out), json.dumps(ids.tolist()), str(result_file)],
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
