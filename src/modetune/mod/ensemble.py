"""Mixture-of-Depths Ensemble (MoD / MoDE, Luo & Specia 2024, arXiv 2410.13077) on a Hugging Face causal LM.

The last ``k`` decoder layers are the members. Member ``i`` predicts ``l_i = phi(N_i(h_i))``: its
own norm ``N_i`` (a copy of the final norm ``N_p``; the final member uses ``N_p`` itself) and the
shared LM head ``phi``. A per-token router mixes their logits:

    G(x) = softmax(TopK(x W_g^T + prior)),    l = sum_i G_i(x) l_i,
    x = N_p(h_N) ("final") or h_{N-k}, the input of the ensemble block ("entry").

``phi`` is affine and ``sum_i G_i = 1``, so ``sum_i G_i phi(z_i) = phi(sum_i G_i z_i)``: a pre-hook
on the head replaces its input by ``sum_i G_i z_i`` and ONE head projection gives the ensemble's
logits. Where that is not exact (final-logit soft-capping, ``cap(l) = c tanh(l / c)``) a forward
hook on the head mixes the members' capped logits instead. Hooks only: the model's own
``forward`` and ``generate`` (KV cache, beams, ``logits_to_keep``) produce ensemble logits.

This file is the one implementation of the ensemble. It needs torch, transformers and
safetensors only (peft just for an export that keeps LoRA apart): ``modetune export`` copies it,
byte for byte, into the exported folder as ``modeling_mod.py``, whose ``MoDForCausalLM`` loads it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import types

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

MOD_WEIGHTS = "mod_model.safetensors"
LORA_FOLDER = "lora"
EXPORT_MODEL_TYPE = "modetune_mod"  # an exported folder's config.json model_type
# An exported folder's architecture: a name of its own, so that engines which pick their model class
# from ``architectures`` (llama.cpp's converter, vLLM, TGI) refuse the folder instead of serving the
# base architecture's final member alone.
EXPORT_ARCHITECTURE = "MoDForCausalLM"
MODELING_FILE = "modeling_mod.py"  # this file, in an exported folder
AUTO_MAP = {"AutoConfig": "modeling_mod.MoDEnsembleConfig", "AutoModelForCausalLM": "modeling_mod.MoDForCausalLM"}


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` casts matmuls to on ``device_type``, or ``None`` when it is off."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError):  # a device type autocast does not know (e.g. meta)
        return None
    return None


def without_autocast(device_type: str):
    """A context in which autocast is off on ``device_type`` (so float32 stays float32)."""
    if autocast_dtype(device_type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def route(logits: Tensor, top_k: int | None = None) -> Tensor:
    """Mixing weights from router logits: ``softmax(TopK(logits))`` over the last dim.

    Entries outside the ``top_k`` largest are set to ``-inf`` before the softmax, so their
    weight is exactly 0 and the kept ones are a softmax over themselves. ``top_k=None``
    (or ``>= k``) is dense routing.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        keep = logits.topk(top_k, dim=-1).indices
        mask = torch.full_like(logits, float("-inf")).scatter(-1, keep, 0.0)
        logits = logits + mask
    return logits.softmax(dim=-1)


def prior_logits(k: int, init: str, final_weight: float) -> Tensor:
    """Constant router logits at step 0.

    ``"uniform"``: zeros (weight ``1/k`` each). ``"final"``: ``a`` on the final member and 0
    elsewhere, with ``a = log(p (k-1) / (1-p))`` so that ``softmax`` gives it weight ``p``.
    """
    prior = torch.zeros(k)
    if init == "final" and k > 1:
        prior[-1] = math.log(final_weight * (k - 1) / (1.0 - final_weight))
    return prior


def head_logits(z: Tensor, weight: Tensor, bias: Tensor | None = None, softcap: float | None = None) -> Tensor:
    """``cap(z W^T + b)`` in float32 (the projection itself in the weight's dtype)."""
    out = F.linear(z.to(weight.dtype), weight, bias)
    out = out.to(torch.promote_types(out.dtype, torch.float32))
    if softcap is not None:
        out = torch.tanh(out / softcap) * softcap
    return out


def slice_like(hidden: Tensor, logits_to_keep, target: Tensor) -> Tensor:
    """A member's ``[B, T, d]`` states at the positions the head sees (``target``): those that
    ``logits_to_keep`` selects (an int: the last ones; a tensor: those indices)."""
    if isinstance(logits_to_keep, Tensor):
        from transformers.modeling_utils import slice_logits_to_keep

        return slice_logits_to_keep(hidden, logits_to_keep)
    if target.dim() == 3 and target.shape[1] != hidden.shape[1]:
        return hidden[:, -target.shape[1]:]
    return hidden


class Router(nn.Module):
    """``G(x) = softmax(TopK(x W_g^T + prior))`` with ``W_g`` (k x d, no bias) zero-initialised.

    Kept and computed in float32 whatever the model's dtype, autocast included; ``fixed`` (a member
    index) bypasses the learned weights and puts all weight on that member (logit-lens runs).
    """

    def __init__(self, hidden_size: int, k: int, init: str = "uniform", final_weight: float = 0.9,
                 top_k: int | None = None, fixed: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, hidden_size, dtype=torch.float32))
        self.register_buffer("prior", prior_logits(k, init, final_weight), persistent=False)
        self.top_k = top_k
        self.fixed = fixed
        if fixed is not None:
            self.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """``G = softmax(TopK(x W_g^T + prior))`` over the last dim, ``[..., d] -> [..., k]`` in float32."""
        if self.fixed is not None:
            weights = torch.zeros(*x.shape[:-1], self.weight.shape[0], device=x.device)
            return weights.index_fill_(-1, torch.tensor([self.fixed], device=x.device), 1.0)
        with without_autocast(x.device.type):  # autocast would run the linear map in bf16/fp16
            return route(F.linear(x.to(self.weight.dtype), self.weight) + self.prior, self.top_k)


# the settings that rebuild an ensemble (MoDEnsemble.spec / from_spec; an export's config.json)
SETTINGS = ("k", "hidden_size", "member_norms", "router_input", "router_init", "final_weight", "top_k", "fixed",
            "softcap")


class MoDEnsemble(nn.Module):
    """The member norms and the router, and the hooks that make a causal LM's head read the ensemble.

    ``layers``, ``final_norm`` and ``head`` are the model's own modules: referenced, not registered
    (their parameters stay the model's). ``explicit_mixing`` mixes k explicit logit tensors even where
    the one-projection shortcut is exact (for tests and analysis; soft-capping always uses it).
    ``full_weight`` maps a head parameter to the whole tensor (the identity, unless a sharding
    wrapper splits it). ``keep_states``: keep the captured member states after the head has read
    them (a loss needs them); otherwise they are dropped at once.
    """

    def __init__(self, layers: nn.ModuleList, final_norm: nn.Module, head: nn.Linear, *, k: int, hidden_size: int,
                 member_norms: bool = True, router_input: str = "final", router_init: str = "uniform",
                 final_weight: float = 0.9, top_k: int | None = None, fixed: int | None = None,
                 softcap: float | None = None, explicit_mixing: bool = False, full_weight=None) -> None:
        super().__init__()
        self.__dict__.update(layers=layers, final_norm=final_norm, head=head)  # not submodules
        self.settings = dict(k=k, hidden_size=hidden_size, member_norms=member_norms, router_input=router_input,
                             router_init=router_init, final_weight=final_weight, top_k=top_k, fixed=fixed,
                             softcap=softcap)
        self.k, self.softcap, self.explicit_mixing = k, softcap, explicit_mixing or softcap is not None
        self.member_layers = list(range(len(layers) - k, len(layers)))  # 0-indexed decoder layers
        self.norms = nn.ModuleList()
        if member_norms:
            for _ in range(k - 1):
                norm = copy.deepcopy(final_norm)
                for param in norm.parameters():
                    param.requires_grad_(True)
                self.norms.append(norm)
        self.router = Router(hidden_size, k, router_init, final_weight, top_k, fixed).to(head.weight.device)
        self.full_weight = full_weight or (lambda tensor: tensor)
        self.keep_states = False
        self.stash: dict = {}
        self._handles: list = []
        self.__dict__["_capped_model"] = None

    def spec(self, model: nn.Module) -> dict:
        """The settings and the parts' module names in ``model``: what :meth:`from_spec` rebuilds."""
        names = {id(module): name for name, module in model.named_modules()}
        return {**self.settings, "layers": names[id(self.layers)], "final_norm": names[id(self.final_norm)],
                "head": names[id(self.head)]}

    @classmethod
    def from_spec(cls, model: nn.Module, spec: dict) -> MoDEnsemble:
        parts = {name: model.get_submodule(spec[name]) for name in ("layers", "final_norm", "head")}
        return cls(**parts, **{key: spec[key] for key in SETTINGS})

    def member_norms(self) -> list[nn.Module]:
        """The norm of each member, shallow to final (the final one is the model's ``N_p``)."""
        return [*self.norms, self.final_norm] if self.settings["member_norms"] else [self.final_norm] * self.k

    def head_weights(self) -> tuple[Tensor, Tensor | None]:
        """The shared head's weight and bias, whole."""
        bias = self.head.bias
        return self.full_weight(self.head.weight), None if bias is None else self.full_weight(bias)

    def member_logits(self, z: Tensor) -> Tensor:
        """``cap(phi(z))`` in float32."""
        return head_logits(z, *self.head_weights(), self.softcap)

    # ------------------------------------------------------------------ hooks
    def attach(self, model: nn.Module) -> None:
        """Hook the ensemble into ``model`` (the transformers model whose parts these are): capture
        the member states (and the entry state), remember ``logits_to_keep``, mix at the head."""
        hooks = [self.layers[i].register_forward_hook(self._capture_member(i)) for i in self.member_layers]
        if self.settings["router_input"] == "entry":
            hooks.append(self.layers[self.member_layers[0]].register_forward_pre_hook(self._capture_entry,
                                                                                       with_kwargs=True))
        hooks.append(model.register_forward_pre_hook(self._capture_kwargs, with_kwargs=True))
        if self.explicit_mixing:
            if self.softcap is not None:  # the model must not cap the mixture again
                model.config.get_text_config().final_logit_softcapping = None
                self.__dict__["_capped_model"] = model  # a reference, not a submodule
            hooks.append(self.head.register_forward_hook(self._mix_logits))
        else:
            hooks.append(self.head.register_forward_pre_hook(self._mix_states))
        self._handles = hooks

    def detach(self) -> None:
        """Remove the hooks (and give the model its soft-capping back)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._capped_model is not None:
            self._capped_model.config.get_text_config().final_logit_softcapping = self.softcap
            self.__dict__["_capped_model"] = None

    def _capture_member(self, index: int):
        def hook(module, args, output):
            self.stash[index] = output[0] if isinstance(output, tuple) else output

        return hook

    def _capture_entry(self, module, args, kwargs):
        self.stash["entry"] = args[0] if args else kwargs["hidden_states"]

    def _capture_kwargs(self, module, args, kwargs):
        self.stash["logits_to_keep"] = kwargs.get("logits_to_keep", 0)

    def members_at_head(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Normed member states ``z_i = N_i(h_i)`` (``z_k = x``) and router weights at the positions of
        the head input ``x``."""
        keep = self.stash.get("logits_to_keep", 0)
        norms = self.member_norms()
        zs = [norm(slice_like(self.stash[i], keep, x)) for norm, i in zip(norms[:-1], self.member_layers[:-1])]
        zs.append(x)
        entry = self.stash.get("entry")
        weights = self.router(x if entry is None else slice_like(entry, keep, x))
        if not self.keep_states:
            self.stash.clear()
        self.stash["router_weights"] = weights.detach()
        return zs, weights

    def _mix_states(self, module, args):
        """Head pre-hook: the head input becomes ``sum_i G_i z_i`` (then one projection gives ``sum_i G_i l_i``)."""
        zs, weights = self.members_at_head(args[0])
        return (sum(weights[..., i : i + 1].to(z.dtype) * z for i, z in enumerate(zs)),)

    def _mix_logits(self, module, args, output):
        """Head hook, explicit form: ``sum_i G_i cap(phi(z_i))``, the final member's logits from the head's own output."""
        zs, weights = self.members_at_head(args[0])
        final = output.float() if self.softcap is None else torch.tanh(output.float() / self.softcap) * self.softcap
        logits = [self.member_logits(z) for z in zs[:-1]] + [final]
        return sum(weights[..., i : i + 1] * lg for i, lg in enumerate(logits)).to(output.dtype)


class MoDEnsembleConfig(PretrainedConfig):
    """An exported folder's ``config.json``: the base model's whole config under a model type of its own.

    The type ``modetune_mod`` is unknown to transformers, so loading the folder without
    ``trust_remote_code=True`` stops with transformers' own error instead of silently giving the
    base architecture (the final member alone). ``mod_ensemble`` holds the ensemble's spec,
    with the base's ``model_type`` and class name.
    """

    model_type = EXPORT_MODEL_TYPE

    def base_config(self) -> PretrainedConfig:
        """The base architecture's own config (every field as saved)."""
        from transformers import AutoConfig

        data = {key: value for key, value in self.to_dict().items() if key not in ("model_type", "auto_map")}
        data["architectures"] = [self.mod_ensemble["architecture"]]
        return AutoConfig.for_model(self.mod_ensemble["model_type"], **data)


def save_ensemble_folder(model: nn.Module, ensemble: MoDEnsemble, directory: str, **kwargs) -> None:
    """Write ``model`` (the base architecture, LoRA merged) and ``ensemble`` as a folder that loads
    back as the same ensemble: the base weights without the ensemble's, a ``config.json`` of model
    type ``modetune_mod`` and architecture ``MoDForCausalLM`` holding the base's whole config and the
    ensemble's spec, ``mod_model.safetensors`` and this file as ``modeling_mod.py``. ``kwargs`` go
    to the base's ``save_pretrained`` (``safe_serialization``, ``max_shard_size``, ...). The model's
    own soft-capping, which the ensemble turns off in memory, is what the config keeps."""
    spec = {"architecture": type(model).__name__, "model_type": model.config.model_type, **ensemble.spec(model)}
    held = model._modules.pop("mod_ensemble", None)  # its parameters are saved apart
    text_config = model.config.get_text_config()
    if ensemble.softcap is not None:
        text_config.final_logit_softcapping = ensemble.softcap
    try:
        type(model).save_pretrained(model, directory, **kwargs)
    finally:
        if held is not None:
            model._modules["mod_ensemble"] = held
        if ensemble.softcap is not None and ensemble._capped_model is not None:
            text_config.final_logit_softcapping = None
    path = os.path.join(directory, "config.json")
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    config.update(model_type=EXPORT_MODEL_TYPE, architectures=[EXPORT_ARCHITECTURE], mod_ensemble=spec,
                  auto_map=AUTO_MAP)
    with open(path, "w", encoding="utf-8") as file:
        file.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in ensemble.state_dict().items()}
    save_file(state, os.path.join(directory, MOD_WEIGHTS), metadata={"format": "pt"})
    shutil.copyfile(__file__, os.path.join(directory, MODELING_FILE))


def _save_loaded_ensemble(self, save_directory, *args, **kwargs) -> None:
    """``save_pretrained`` of a loaded ensemble: the same folder format it was loaded from."""
    if args:
        raise TypeError("save_pretrained of a MoD ensemble takes the folder and keyword arguments only.")
    save_ensemble_folder(self, self.mod_ensemble, str(save_directory), **kwargs)


def _refuse_save(self, *args, **kwargs) -> None:
    raise NotImplementedError(
        "This MoD ensemble keeps its LoRA adapter apart (exported with --no-merge): save_pretrained would write "
        "the adapter alone and lose the ensemble. Copy the exported folder instead, or export it again without "
        "--no-merge to get a folder that save_pretrained can write back.")


class MoDForCausalLM(PreTrainedModel):
    """Entry point of an exported folder's ``auto_map``: loads the base architecture
    (``config.mod_ensemble["architecture"]``) and attaches the ensemble saved beside it.

    The returned object is the base architecture's own class (``LlamaForCausalLM``, ...) with the
    ensemble as its ``mod_ensemble`` submodule; ``generate``, caching and beams work as usual.
    """

    config_class = MoDEnsembleConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        import transformers
        from transformers import AutoConfig
        from transformers.utils import cached_file

        path = str(pretrained_model_name_or_path)
        kwargs.pop("trust_remote_code", None)
        config = config or AutoConfig.from_pretrained(path, trust_remote_code=True)
        spec = config.mod_ensemble
        base_config = config.base_config() if isinstance(config, MoDEnsembleConfig) else config
        model = getattr(transformers, spec["architecture"]).from_pretrained(path, *model_args, config=base_config,
                                                                          **kwargs)
        inner = model
        if os.path.isdir(os.path.join(path, LORA_FOLDER)):  # exported with --no-merge: LoRA kept apart
            try:
                from peft import PeftModel
            except ImportError:
                raise ImportError("This folder keeps its LoRA adapter apart (exported with --no-merge): loading it "
                                  "needs peft (pip install peft), or export again without --no-merge.") from None
            model = PeftModel.from_pretrained(model, os.path.join(path, LORA_FOLDER))
        ensemble = MoDEnsemble.from_spec(inner, spec)
        state = load_file(cached_file(path, MOD_WEIGHTS))
        expected = set(ensemble.state_dict())
        if set(state) != expected:
            raise ValueError(f"{MOD_WEIGHTS} holds {sorted(state)}, but this ensemble needs {sorted(expected)}.")
        ensemble.load_state_dict(state)
        weight = next(inner.parameters())
        ensemble.norms.to(device=weight.device, dtype=weight.dtype)
        ensemble.router.to(weight.device)
        inner.mod_ensemble = ensemble
        ensemble.attach(inner)
        # save_pretrained (and push_to_hub) write this same format back, or refuse where they cannot
        inner.save_pretrained = types.MethodType(_save_loaded_ensemble, inner)
        if model is not inner:
            model.save_pretrained = types.MethodType(_refuse_save, model)
        return model.eval()
