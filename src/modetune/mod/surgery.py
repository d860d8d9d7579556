"""Find the parts MoD needs in any Hugging Face causal LM, through transformers' own APIs.

No list of model classes: the decoder comes from ``get_decoder()``, the LM head from
``get_output_embeddings()``, the layer count from the config; the decoder layers are the
``nn.ModuleList`` of that length and the final norm is the decoder's one norm module
outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..utils.errors import ConfigError, UnsupportedModelError


@dataclass
class ModelParts:
    """What MoD hooks into: the decoder, its layers, the final norm ``N_p``, the LM head and sizes."""

    decoder: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module
    head: nn.Linear
    num_layers: int
    hidden_size: int
    softcap: float | None


def unwrap(model: nn.Module) -> nn.Module:
    """Return the transformers model inside a peft ``PeftModel`` (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no `config`: MoD needs a Hugging Face model.")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def find_parts(model: nn.Module) -> ModelParts:
    """Locate decoder layers, final norm and LM head of a (peft or plain) causal LM."""
    model = unwrap(model)
    name = type(model).__name__
    config = _text_config(model)
    num_layers = getattr(config, "num_hidden_layers", None)
    if num_layers is None:
        raise UnsupportedModelError(f"{name}'s config has no `num_hidden_layers`, so its decoder layers cannot be counted.")
    if not hasattr(model, "get_decoder") or not hasattr(model, "get_output_embeddings"):
        raise UnsupportedModelError(f"{name} is not a transformers causal LM (no `get_decoder`/`get_output_embeddings`).")
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        got = type(head).__name__
        raise UnsupportedModelError(f"{name} has no linear LM head (`get_output_embeddings()` returned {got}).")
    decoder = model.get_decoder()
    if decoder is model:  # e.g. GPT-2 keeps its decoder in `transformer`
        decoder = getattr(model, "base_model", model)
    if decoder is model:
        raise UnsupportedModelError(f"{name} has no decoder module reachable through `get_decoder()` or `base_model`.")

    layer_lists = [
        module for module in decoder.modules() if isinstance(module, nn.ModuleList) and len(module) == num_layers
    ]
    if len(layer_lists) != 1:
        raise UnsupportedModelError(
            f"{name}'s decoder has {len(layer_lists)} module lists of length num_hidden_layers={num_layers}, "
            "so its decoder layers cannot be identified."
        )
    layers = layer_lists[0]
    in_layers = {id(module) for module in layers.modules()}
    norms = [
        module
        for child_name, module in decoder.named_children()
        if id(module) not in in_layers and "norm" in type(module).__name__.lower() + child_name.lower()
    ]
    if len(norms) != 1:
        raise UnsupportedModelError(
            f"{name}'s decoder has {len(norms)} norm modules outside its layers, so its final norm cannot be identified."
        )
    hidden_size = getattr(config, "hidden_size", None) or head.in_features
    softcap = getattr(config, "final_logit_softcapping", None)
    for attribute in ("logit_scale", "logits_scaling"):
        if getattr(config, attribute, None) not in (None, 1, 1.0):
            raise UnsupportedModelError(f"{name} rescales its logits (`{attribute}`), which MoD does not model yet.")
    return ModelParts(decoder, layers, norms[0], head, num_layers, hidden_size, softcap)


def check_members(k: int, num_layers: int) -> None:
    """The ensemble's ``k`` members are the last ``k`` layers: ``k`` must lie in ``1 .. num_layers - 1``."""
    if not 1 <= k < num_layers:
        raise ConfigError(f"k={k} must be at least 1 and smaller than the model's number of layers ({num_layers}).")
