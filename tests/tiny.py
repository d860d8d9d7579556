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


def perturb(model, seed: int = 1, router_std: float = 0.5, norm_std: float = 0.5):
    """Move a MoD model's router and member norms away from their (symmetric) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.router.weight.normal_(0, router_std, generator=g)
        for norm in model.norms:
            for p in norm.parameters():
                p.add_(torch.randn(p.shape, generator=g) * norm_std)
    return model
