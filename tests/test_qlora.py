"""QLoRA: a bitsandbytes 4-bit (NF4) base under LoRA + MoD, trained and evaluated on this CPU.

bitsandbytes lives in ``<venv>/qlora`` (scripts/setup.sh puts it there, off the venv's path:
imported beside peft it looks up a hub kernel on every command), so these runs are subprocesses
with that folder on ``PYTHONPATH``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import train_args

pytestmark = pytest.mark.slow
QLORA_PATH = Path(sys.prefix) / "qlora"


def _cli(*args, code: str | None = None):
    assert (QLORA_PATH / "bitsandbytes").is_dir(), f"bitsandbytes is not in {QLORA_PATH}: run scripts/setup.sh"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(QLORA_PATH), *sys.path])}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "modetune.cli", *args]
    return subprocess.run([str(a) for a in command], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, default_model_dir):
    """A small random Llama whose layers are wide enough for bitsandbytes' CPU kernels (under 64
    output features its 4-bit inference path fails), with the default model's tokenizer."""
    from transformers import AutoTokenizer

    from tiny import tiny_model

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir))
    model = tiny_model("llama", vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                       num_attention_heads=4, num_key_value_heads=4, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    folder = tmp_path_factory.mktemp("qlora-base")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


CHECK = r'''
import sys, torch, bitsandbytes as bnb
from modetune.loading import load_source
model, _, _ = load_source(None, sys.argv[1], quantization="4bit")
layer = model.base_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
assert isinstance(layer, bnb.nn.Linear4bit), type(layer)
with torch.no_grad():
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 17, 23, 50]])).logits).all()
print("quantized ok")
'''


def test_qlora_trains_lora_and_mod_on_a_4bit_base(model_dir, tmp_path):
    out = tmp_path / "run"
    done = _cli(*train_args(model_dir, out, "--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "4",
                            "--save-steps", "100", "--quantization", "4bit"))
    assert done.returncode == 0, done.stderr[-3000:]
    logs = [row for row in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in row]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(row["loss"])) for row in logs)
    assert logs[0]["grad_norm_lora"] > 0 and logs[0]["grad_norm_mod"] > 0  # both train on the quantized base
    lora = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") and tensor.abs().max() > 0 for name, tensor in lora.items())
    assert json.loads((out / "adapter" / "train_config.json").read_text())["quantization"] == "4bit"

    done = _cli(out / "adapter", code=CHECK)  # reloaded on the same quantized base: accepted
    assert done.returncode == 0 and "quantized ok" in done.stdout, done.stderr[-3000:]
    eval_args = ["eval", "--adapter", out / "adapter", "--datasets", "builtin", "--limit", "2", "--max-new-tokens", "8"]
    done = _cli(*eval_args)  # the full-precision base is another base, and the error says what to pass
    assert done.returncode == 1 and "--quantization 4bit" in done.stderr, done.stderr[-3000:]
    done = _cli(*eval_args, "--quantization", "4bit")
    assert done.returncode == 0, done.stderr[-3000:]


def test_quantization_is_qlora_only_and_named():
    from modetune.train.config import TrainConfig
    from modetune.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a preset with LoRA"):
        TrainConfig(preset="mod_only", quantization="4bit")
    with pytest.raises(ConfigError, match="Unknown quantization '3bit'"):
        TrainConfig(quantization="3bit")
    with pytest.raises(ConfigError, match="needs bitsandbytes"):  # not on the venv's own path
        from modetune.utils.models import quantization_config

        quantization_config("4bit", torch.float32)
