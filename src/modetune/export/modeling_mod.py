"""Mixture-of-Depths Ensemble (MoD, Luo & Specia 2024, arXiv 2410.13077) for a Hugging Face causal LM.

A self-contained modelling file shipped inside a folder written by ``modetune export``: it needs
torch, transformers and safetensors (and peft only for a ``--no-merge`` export), never modetune.
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads the base architecture
(``config.mod_ensemble["architecture"]``, LoRA already merged into its weights) and attaches the
ensemble with hooks, so the returned model's own ``forward`` and ``generate`` give ensemble logits:

    l = sum_i G_i(x) phi(N_i(h_i))  over the last k decoder layers (the final member uses the model's norm N_p)
    G(x) = softmax(TopK(x W_g^T + prior)),  x = N_p(h_N) ("final") or h_{N-k} ("entry")

Since the LM head phi is linear and the weights sum to 1, ``sum_i G_i phi(z_i) = phi(sum_i G_i z_i)``:
a pre-hook on the head replaces its input by ``sum_i G_i z_i`` (one head projection).
The member norms and the router weights are in ``mod_model.safetensors``.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

MOD_WEIGHTS = "mod_model.safetensors"
LORA_FOLDER = "lora"


def route(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """``softmax(TopK(logits))`` over the last dim: entries outside the top_k largest get weight 0."""
    if top_k is not None and top_k < logits.shape[-1]:
        keep = logits.topk(top_k, dim=-1).indices
        logits = logits + torch.full_like(logits, float("-inf")).scatter(-1, keep, 0.0)
    return logits.softmax(dim=-1)


class MoDRouter(nn.Module):
    """``G(x) = softmax(TopK(x W_g^T + prior))`` in float32; ``fixed``: all weight on one member."""

    def __init__(self, hidden_size: int, k: int, prior: list, top_k: int | None, fixed: int | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, hidden_size, dtype=torch.float32), requires_grad=False)
        self.register_buffer("prior", torch.tensor(prior, dtype=torch.float32), persistent=False)
        self.top_k, self.fixed = top_k, fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            weights = torch.zeros(*x.shape[:-1], self.weight.shape[0], device=x.device)
            return weights.index_fill_(-1, torch.tensor([self.fixed], device=x.device), 1.0)
        return route(F.linear(x.to(self.weight.dtype), self.weight) + self.prior, self.top_k)


class MoDEnsemble(nn.Module):
    """The member norms and the router, attached to a causal LM by hooks (:meth:`attach`)."""

    def __init__(self, model: nn.Module, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        for name in ("layers", "final_norm", "head"):  # the model's own parts: referenced, not registered twice
            object.__setattr__(self, name, model.get_submodule(spec[name]))
        k = spec["k"]
        self.member_layers = list(range(len(self.layers) - k, len(self.layers)))
        self.norms = nn.ModuleList(copy.deepcopy(self.final_norm) for _ in range(k - 1 if spec["member_norms"] else 0))
        self.router = MoDRouter(spec["hidden_size"], k, spec["prior"], spec["top_k"], spec["fixed"])
        self.stash: dict = {}

    def attach(self, model: nn.Module) -> None:
        """Hooks: capture member states (and the entry state), remember ``logits_to_keep``, mix at the head."""
        for index in self.member_layers:
            self.layers[index].register_forward_hook(self._capture(index))
        if self.spec["router_input"] == "entry":
            self.layers[self.member_layers[0]].register_forward_pre_hook(self._capture_entry, with_kwargs=True)
        self.head.register_forward_pre_hook(self._mix)

    def _capture(self, index: int):
        def hook(module, args, output):
            self.stash[index] = output[0] if isinstance(output, tuple) else output

        return hook

    def _capture_entry(self, module, args, kwargs):
        self.stash["entry"] = args[0] if args else kwargs["hidden_states"]

    @staticmethod
    def _like(hidden: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The member states at the positions the head sees (the last ``x.shape[1]``)."""
        return hidden[:, -x.shape[1]:] if x.dim() == 3 and x.shape[1] != hidden.shape[1] else hidden

    def _mix(self, module, args):
        """``sum_i G_i z_i`` with ``z_i = N_i(h_i)`` (``z_k = x = N_p(h_N)``): the head's new input."""
        x = args[0]
        norms = list(self.norms) if self.spec["member_norms"] else [self.final_norm] * (len(self.member_layers) - 1)
        zs = [norm(self._like(self.stash[i], x)) for norm, i in zip(norms, self.member_layers[:-1])] + [x]
        entry = self.stash.get("entry")
        weights = self.router(x if entry is None else self._like(entry, x))
        self.stash.clear()
        return (sum(weights[..., i : i + 1].to(z.dtype) * z for i, z in enumerate(zs)),)


class MoDForCausalLM(PreTrainedModel):
    """Entry point of ``auto_map``: loads the base architecture and attaches the MoD ensemble.

    The returned object is the base architecture's own class (``LlamaForCausalLM``, ...) with the
    ensemble as its ``mod_ensemble`` submodule; ``generate``, caching and beams work as usual.
    """

    config_class = PretrainedConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        import transformers
        from transformers import AutoConfig
        from transformers.utils import cached_file

        path = str(pretrained_model_name_or_path)
        kwargs.pop("trust_remote_code", None)
        config = config or AutoConfig.from_pretrained(path, trust_remote_code=True)
        spec = config.mod_ensemble
        arch = getattr(transformers, spec["architecture"])
        model = arch.from_pretrained(path, *model_args, config=config, **kwargs)
        inner = model
        if os.path.isdir(os.path.join(path, LORA_FOLDER)):  # a --no-merge export: LoRA kept separate
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, os.path.join(path, LORA_FOLDER))
        ensemble = MoDEnsemble(inner, spec)
        state = load_file(cached_file(path, MOD_WEIGHTS))
        ensemble.load_state_dict(state, strict=False)
        missing = {name for name, _ in ensemble.named_parameters(remove_duplicate=False)
                   if name.startswith(("norms.", "router."))} - set(state)
        if missing:
            raise ValueError(f"{MOD_WEIGHTS} lacks {sorted(missing)}")
        device = next(inner.parameters()).device
        dtype = next(inner.parameters()).dtype
        ensemble.norms.to(device=device, dtype=dtype)
        ensemble.router.to(device)
        inner.mod_ensemble = ensemble
        ensemble.attach(inner)
        return model.eval()
