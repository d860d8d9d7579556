"""Tiny random-config causal LMs for tests (no download)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 97

TINY = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                    num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                  num_key_value_heads=2),
    "gpt2": dict(n_embd=32, n_layer=5, n_head=4),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4),
    "gemma2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, final_logit_softcapping=3.0),
}
ARCHS = ["llama", "mistral", "qwen2", "gpt2", "gpt_neox"]


def tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    kwargs = {**TINY[arch], **overrides}
    kwargs = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kwargs}
    config = AutoConfig.for_model(arch, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()
