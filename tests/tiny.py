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


def batch(seed: int = 0, batch: int = 3, length: int = 9):
    """Random ``(input_ids, attention_mask, labels)``: row 0 left-padded, row 1 with an unlabelled prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding in row 0
    labels = ids.masked_fill(mask == 0, -100)
    if batch > 1:
        labels[1, :4] = -100  # a prompt that carries no label
    return ids, mask, labels


def lora(model, k: int = 3):
    """Wrap a tiny model with LoRA below the last ``k`` layers, B non-zero (so its gradient path is exercised)."""
    from peft import LoraConfig, get_peft_model

    n = model.config.num_hidden_layers
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                        layers_to_transform=list(range(n - k)), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # LoRA B starts at zero; give it a value so its gradient path is exercised
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=g)
    return peft_model
