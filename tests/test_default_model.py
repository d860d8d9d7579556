"""The embedded default model (SmolLM2-135M-Instruct) with MoD, on real records."""

from __future__ import annotations

import pytest
import torch

from modetune import MoDConfig, get_mod_model
from modetune.data import load_training_records, tokenize_records
from modetune.mod.variants import build_variant
from modetune.utils.models import DEFAULT_MODEL, load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_default_model_is_cached_as_safetensors(default_model_dir):
    assert default_model_dir.name == DEFAULT_MODEL
    assert (default_model_dir / "model.safetensors").exists()
    model, tokenizer = load_model("default")
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert not hasattr(model.config, "quantization_config")
    assert tokenizer.pad_token is not None


def test_default_model_k1_equals_base_and_generates():
    model, tokenizer = load_model("default")
    ids = tokenizer("The answer is", return_tensors="pt")
    with torch.no_grad():
        expected = model(**ids).logits
    mod = get_mod_model(model, MoDConfig(k=1, member_norms=False))
    with torch.no_grad():
        torch.testing.assert_close(mod(**ids).logits, expected, rtol=0, atol=1e-5)
    mod.remove_hooks()
    mod = get_mod_model(model, MoDConfig(k=3))
    out = mod.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5


def test_short_training_lowers_loss_on_real_records(packaged_data):
    torch.manual_seed(0)
    model, tokenizer = load_model("default")
    model = build_variant(model, "lora_notk_mod", MoDConfig(k=3), lora_r=8, lora_alpha=16, lora_dropout=0.0)
    records = load_training_records(str(packaged_data / "math-split" / "train.json"), limit=4)
    rows = tokenize_records(records, tokenizer, cutoff_len=128, train_on_inputs=False)
    width = max(len(r["input_ids"]) for r in rows)
    pad = lambda seq, value: seq + [value] * (width - len(seq))
    batch = {
        "input_ids": torch.tensor([pad(r["input_ids"], tokenizer.pad_token_id) for r in rows]),
        "attention_mask": torch.tensor([pad(r["attention_mask"], 0) for r in rows]),
        "labels": torch.tensor([pad(r["labels"], -100) for r in rows]),
    }
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        out = model(**batch)
        losses.append(out.loss.item())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0] - 0.1, losses
