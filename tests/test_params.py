"""`modetune params` (modetune.train.params): parameter accounting from a model config alone."""

from __future__ import annotations

import json

import pytest

from modetune.cli import main
from modetune.train.params import count_parameters

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_paper_parameter_deltas(tmp_path, capsys):
    """LLaMA-7B shapes from a config alone: +10.3% (lora_all), +0.04% (lora_notk_mod)."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert count_parameters(str(tmp_path), "lora_notk")["trainable"] == 29 * 1_753_088
    assert round(count_parameters(str(tmp_path), "lora_all")["delta_pct"], 1) == 10.3
    assert round(count_parameters(str(tmp_path), "lora_all_mod")["delta_pct"], 1) == 10.4
    assert main(["params", "--model", str(tmp_path), "--preset", "lora_notk_mod", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trainable"] - result["lora_notk_trainable"] == 4096 * 3 + 2 * 4096
    assert round(result["delta_pct"], 2) == 0.04
