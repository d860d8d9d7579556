"""`MoDModel`: a Hugging Face causal LM (plain or peft) whose head reads a Mixture-of-Depths Ensemble.

How it is wired, with hooks only (the wrapped model's own code is untouched):
- forward hooks on the last ``k`` decoder layers capture the members' pre-norm states;
- a forward pre-hook on the LM head replaces its input ``N_p(h_N)`` by the routed mix
  ``sum_i G_i N_i(h_i)``, so the model's own ``forward`` and ``generate`` (KV cache, greedy,
  sampling, beam search) produce ensemble logits with ONE head projection (the exact
  shortcut). Where the shortcut is not exact (final-logit soft-capping) a forward hook
  mixes the members' explicit logits instead;
- with ``labels``, :meth:`MoDModel.forward` computes ``L_task + lambda * L_distill`` with
  the fused, chunked loss of :mod:`modetune.mod.losses` on the labelled tokens only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..utils.errors import BaseModelMismatchError, DataError, first_line
from ..utils.integrity import check_adapter_base, check_files, load_safetensors
from ..utils.sharding import distribute_like, full_weight, gathered_key, hold_zero3_parameters
from ..utils.version import __version__
from .config import MoDConfig
from .ensemble import MoDEnsemble, Router
from .losses import HeadSpec, MoDLossOutput, fused_mod_loss, naive_mod_loss
from .surgery import ModelParts, check_members, find_parts, unwrap

WEIGHTS_NAME = "mod_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class MoDCausalLMOutput(CausalLMOutputWithPast):
    """The usual causal-LM output plus MoD diagnostics.

    ``task_loss``: ``L_task``; ``distill_losses``: ``KL`` per non-final member (shallow first);
    ``member_ce``: each member's own cross-entropy (when member logits were computed);
    ``router_weights``: ``G`` for the positions whose logits are returned, ``[B, T', k]``,
    or for the labelled tokens, ``[n, k]``, when logits are not returned (training).
    """

    task_loss: Tensor | None = None
    distill_losses: Tensor | None = None
    member_ce: Tensor | None = None
    router_weights: Tensor | None = None


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of any module, shared (tied) parameters counted once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def gathered_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` keyed by :func:`gathered_key` (torch's ``get_model_state_dict`` already strips these)."""
    return {gathered_key(key): tensor for key, tensor in state_dict.items()}


def base_fingerprint(model: nn.Module) -> str:
    """A short hash of a base model: its config shape, parameter names, shapes and a strided
    sample of every parameter (rounded to bfloat16, so fp32 and bf16 loads agree). LoRA
    weights injected by peft are ignored, so a base and its peft-wrapped self agree."""
    model = unwrap(model)
    digest = hashlib.sha256()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")
    digest.update(json.dumps({key: getattr(config, key, None) for key in keys}, sort_keys=True).encode())
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        if param.device.type == "meta":
            raise ValueError("Cannot fingerprint a model on the meta device.")
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1024)][:1024]
        digest.update(name.replace(".base_layer", "").encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(sample.to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class MoDModel(nn.Module):
    """A causal LM whose predictions are a routed ensemble of its last ``k`` layers.

    Build it with :func:`get_mod_model` or :meth:`from_pretrained`. It behaves like the
    wrapped model (``forward``, ``generate``, ``config``, ...); with ``labels``, the loss is
    the MoD objective. Its own parameters: ``norms`` (k-1 member norms) and ``router``.
    """

    accepts_loss_kwargs = True  # the HF Trainer passes `num_items_in_batch`

    def __init__(self, model: nn.Module, config: MoDConfig, explicit_mixing: bool = False) -> None:
        """``explicit_mixing=True`` mixes k explicit logit tensors even where the one-projection
        shortcut is exact (for tests and analysis; it is always used under soft-capping)."""
        super().__init__()
        parts = find_parts(model)
        check_members(config.k, parts.num_layers)
        self.base_model = model
        self.mod_config = config
        on_meta = parts.head.weight.device.type == "meta"  # parameter counting from a config alone
        self.base_fingerprint = None if on_meta else base_fingerprint(model)
        self._parts = parts
        k, n = config.k, parts.num_layers
        self.member_layers = list(range(n - k, n))  # 0-indexed decoder layers whose outputs are members

        is_peft = model is not unwrap(model)
        for param in unwrap(model).parameters():
            if not is_peft:  # `mod_only`: the base is frozen; a peft model has frozen it already
                param.requires_grad_(False)
        for param in parts.final_norm.parameters():
            param.requires_grad_(config.train_final_norm)
        if parts.head.weight.requires_grad:
            raise ValueError("MoD shares a frozen LM head, but the model's head is trainable.")

        fixed = None if config.loss_layer is None else k - 1 - config.loss_layer
        self.ensemble = MoDEnsemble(parts.layers, parts.final_norm, parts.head, k=k, hidden_size=parts.hidden_size,
                                    member_norms=config.member_norms, router_input=config.router_input,
                                    router_init=config.router_init, final_weight=config.router_init_final_weight,
                                    top_k=config.top_k, fixed=fixed, softcap=parts.softcap,
                                    explicit_mixing=explicit_mixing, full_weight=full_weight)
        self.ensemble.keep_states = True  # the loss reads every member's states after the forward pass
        self.ensemble.attach(unwrap(model))
        # Registered now, so it runs before the hooks DeepSpeed adds later (hooks run in registration order).
        self.register_forward_pre_hook(_hold_loss_parameters)

    # ------------------------------------------------------------------ parts
    @property
    def parts(self) -> ModelParts:
        """The wrapped model's parts MoD uses: decoder, layers, final norm, head, sizes, soft-capping."""
        return self._parts

    @property
    def router(self) -> Router:
        """The router ``G``."""
        return self.ensemble.router

    @property
    def norms(self) -> nn.ModuleList:
        """The k-1 new member norms (empty when ``member_norms`` is off)."""
        return self.ensemble.norms

    @property
    def head(self) -> nn.Linear:
        """The shared, frozen LM head ``phi``."""
        return self._parts.head

    @property
    def softcap(self) -> float | None:
        return self._parts.softcap

    def member_norms(self) -> list[nn.Module]:
        """The norm of each member, shallow to final (the final one is the model's ``N_p``)."""
        return self.ensemble.member_norms()

    def mod_parameters(self, trainable_only: bool = True) -> list[nn.Parameter]:
        """MoD's own parameters: the router's weight (unless the route is fixed), the member norms and,
        when ``train_final_norm``, the final norm ``N_p`` (each once). The one definition that gradient
        clipping (``clip_scope``), the router's optimizer groups (``router_lr``) and ``fit-router`` use."""
        router = list(self.router.parameters()) if self.router.fixed is None else []
        params = [*router, *self.norms.parameters()]
        if self.mod_config.train_final_norm:
            params += list(self.member_norms()[-1].parameters())
        unique = {id(p): p for p in params}.values()
        return [p for p in unique if p.requires_grad or not trainable_only]

    def loss_parameters(self) -> list[nn.Parameter]:
        """The parameters the loss reads outside their own modules' forward: the head's, each member
        norm's and the router's. Under DeepSpeed ZeRO-3 they are registered as external parameters
        of this model at each forward (:func:`~modetune.utils.sharding.hold_zero3_parameters`), so that
        ZeRO-3 keeps them gathered through its forward and backward; otherwise nothing is done."""
        params = {id(p): p for m in (self.head, *self.member_norms(), self.router) for p in m.parameters()}
        return list(params.values())

    def head_spec(self) -> HeadSpec:
        """The head as the loss reads it: whole, even where a sharding wrapper left it sharded."""
        return HeadSpec(*self.ensemble.head_weights(), self.softcap)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, logits_to_keep: int | Tensor = 0, return_logits: bool | None = None,
                num_items_in_batch: int | Tensor | None = None, **kwargs) -> MoDCausalLMOutput:
        """Run the wrapped model; with ``labels``, add the MoD loss.

        ``return_logits`` (default: not in a training step) controls whether ensemble logits
        are computed for every position; a training step skips them, since its loss comes
        from the fused chunked head. Other keyword arguments (``past_key_values``/``cache``,
        ``use_cache``, ``position_ids``, ...) go to the wrapped model.
        """
        if return_logits is None:
            return_logits = labels is None or not (self.training and torch.is_grad_enabled())
        keep = logits_to_keep if return_logits else 1
        stash = self.ensemble.stash
        stash.clear()
        stash["logits_to_keep"] = keep
        try:
            out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **kwargs)
            router_weights = stash.get("router_weights")
            mod_loss = self.compute_loss(labels, num_items_in_batch) if labels is not None else None
        finally:
            stash.clear()
        result = MoDCausalLMOutput(
            loss=None if mod_loss is None else mod_loss.loss,
            logits=out.logits if return_logits else None,
            cache=getattr(out, "cache", None),
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
            router_weights=router_weights,
        )
        if mod_loss is not None:
            result.task_loss, result.distill_losses, result.member_ce = mod_loss.task, mod_loss.distill, mod_loss.member_ce
            if not return_logits:
                result.router_weights = mod_loss.weights
        return result

    def compute_loss(self, labels: Tensor, num_items_in_batch: int | Tensor | None = None) -> MoDLossOutput:
        """The MoD loss from the states captured by the last forward, at the labelled tokens."""
        shift = labels[:, 1:].reshape(-1)
        rows = (shift != -100).nonzero().squeeze(-1)
        if rows.numel() == 0:
            raise DataError("No token carries a label (all labels are -100): nothing to train on.")
        d = self._parts.hidden_size

        def gather(states: Tensor) -> Tensor:
            return states[:, :-1].reshape(-1, d).index_select(0, rows)

        stash = self.ensemble.stash
        hs = [gather(stash[i]) for i in self.member_layers]
        entry = gather(stash["entry"]) if "entry" in stash else None
        targets = shift.index_select(0, rows)
        normaliser = float(num_items_in_batch) if num_items_in_batch is not None else None
        norms = self.member_norms()
        loss_fn = fused_mod_loss if self.mod_config.loss_impl == "chunked" else naive_mod_loss
        return loss_fn(hs, entry, targets, norms, self.router, self.head_spec(), self.mod_config, normaliser)

    # ------------------------------------------------------------------ HF-like surface
    def generate(self, *args, **kwargs):
        """``generate`` of the wrapped model, which now reads the ensemble logits."""
        return self.base_model.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        """Attributes of the wrapped model (``config``, ``generation_config``, ``device``, embeddings,
        ...), except the methods in :data:`REFUSED`, which would bypass or desynchronise the ensemble."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            if name in REFUSED:
                raise AttributeError(f"MoDModel.{name} is refused: {REFUSED[name]}") from None
            return getattr(self.base_model, name)

    @property
    def _hf_peft_config_loaded(self) -> bool:
        """Trainable adapters sit on the base (MoD's router and norms, and LoRA): what the HF Trainer
        asks before it trains a quantized (QLoRA) base."""
        return True

    # ------------------------------------------------------------------ PEFT-shaped methods, MoD-aware
    def print_trainable_parameters(self) -> None:
        """peft's one-line summary, counting the router and member norms too."""
        trainable, total = self.trainable_parameters()
        mod = sum(p.numel() for p in self.ensemble.parameters() if p.requires_grad)
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
              f" (of which MoD router and member norms: {mod:,})")

    @contextlib.contextmanager
    def disable_adapter(self, lora: bool = True, ensemble: bool = True) -> Iterator[None]:
        """Inside the block the model runs without LoRA (``lora``) and/or without the ensemble
        (``ensemble``: the base model's own head on ``N_p(h_N)``, soft-capping restored). The
        default switches off the whole adapter: the base model as it was loaded."""
        with contextlib.ExitStack() as stack:
            if lora and self.base_model is not unwrap(self.base_model):
                stack.enter_context(self.base_model.disable_adapter())
            if ensemble:
                self.ensemble.detach()
                stack.callback(self.ensemble.attach, unwrap(self.base_model))
            yield

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload MoD adapter", api=None) -> str:
        """Upload the complete adapter (LoRA and MoD files, config, model card) to the hub repo
        ``repo_id``, created if needed; returns the commit URL. ``api``: an ``HfApi``-like object."""
        import tempfile

        from huggingface_hub import HfApi

        api = api or HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="modetune-push-") as folder:
            self.save_pretrained(folder)
            return str(api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Gradient checkpointing of the wrapped model (non-reentrant by default)."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        unwrap(self.base_model).gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts, MoD modules included."""
        return parameter_counts(self)

    def remove_hooks(self) -> nn.Module:
        """Detach MoD from the wrapped model and return it (soft-capping restored)."""
        self.ensemble.detach()
        return self.base_model

    # ------------------------------------------------------------------ save / load
    def mod_state_dict(self, state_dict: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The MoD weights: member norms, router, and the final norm when it is trained.

        Read from this model's parameters, or from ``state_dict``: a full state dict of this
        model gathered by a sharding wrapper (:func:`gathered_state_dict` keys; see
        :meth:`save_pretrained`)."""
        source = self.state_dict() if state_dict is None else self._checked_state_dict(state_dict)
        return {entry: source[key].detach().contiguous().cpu() for entry, key in self._mod_entries().items()}

    def _mod_entries(self) -> dict[str, str]:
        """Each entry of ``mod_model.safetensors`` -> its key in this model's own ``state_dict``."""
        entries = {f"norms.{name}": f"ensemble.norms.{name}" for name in self.norms.state_dict()}
        entries["router.weight"] = "ensemble.router.weight"
        if self.mod_config.train_final_norm:
            final = self._parts.final_norm
            prefix = next(name for name, module in self.named_modules() if module is final)
            entries.update({f"final_norm.{name}": f"{prefix}.{name}" for name in final.state_dict()})
        return entries

    def _checked_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state_dict`` with wrapper prefixes removed, after checking that it holds every
        trainable parameter of this model as a whole tensor (not a shard)."""
        from torch.distributed.tensor import DTensor

        given = gathered_state_dict(state_dict)
        wanted = list(dict.fromkeys([*(gathered_key(name) for name, p in self.named_parameters() if p.requires_grad),
                                     *self._mod_entries().values()]))
        missing = [key for key in wanted if key not in given]
        if missing:
            raise DataError(f"The state dict to save lacks {len(missing)} of this model's trainable tensors "
                            f"(first: {missing[0]!r}); pass a full state dict of the whole MoD model.")
        sharded = [key for key in wanted if isinstance(given[key], DTensor)]
        if sharded:
            raise DataError(f"The state dict to save holds shards ({sharded[0]!r} is a DTensor): gather a full "
                            "state dict first (full_state_dict=True).")
        return given

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """Write ``mod_config.json`` and ``mod_model.safetensors`` (and peft's adapter files, if any).

        ``state_dict``: a full state dict of this model to take the weights from instead of its
        parameters, as the HF Trainer gathers under FSDP (``accelerator.get_state_dict``; the
        parameters are then ``DTensor`` shards). Its keys are this model's own, FSDP and
        ``torch.compile`` prefixes allowed; a missing trainable tensor raises ``DataError``.
        """
        directory = Path(directory)
        given = None if state_dict is None else self._checked_state_dict(state_dict)
        mod_weights = self.mod_state_dict(given)
        directory.mkdir(parents=True, exist_ok=True)
        if self.base_model is not unwrap(self.base_model):
            if given is None:
                self.base_model.save_pretrained(str(directory))
            else:  # peft selects its adapter's tensors from the wrapped model's own keys
                inner = {key.removeprefix("base_model."): t for key, t in given.items() if key.startswith("base_model.")}
                self.base_model.save_pretrained(str(directory), state_dict=inner)
        save_file(mod_weights, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        self.mod_config.save(directory, base_fingerprint=self.base_fingerprint, modetune_version=__version__)
        from ..utils.publish import make_portable  # peft records the base's local path: its hub name instead

        make_portable(directory, getattr(unwrap(self.base_model).config, "_name_or_path", None))

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, directory: str | Path, is_trainable: bool = False,
                        check_base: bool = True, ignore_base_mismatch: bool = False) -> MoDModel:
        """Load a saved MoD model onto ``base_model``; the base's fingerprint must match (with
        ``ignore_base_mismatch``, a mismatch is only warned about). The folder is checked against the
        base (hidden size, number of layers) and every MoD tensor's shape against the model's before any
        weight is copied: each problem is one line naming the file. (The commands check the folder as a
        whole first: :func:`modetune.loading.adapter.check_adapter`.)"""
        from safetensors import safe_open

        directory = Path(directory)
        if not (directory / WEIGHTS_NAME).exists():
            raise FileNotFoundError(f"{directory} holds no MoD adapter ({WEIGHTS_NAME} is missing).")
        config, _ = MoDConfig.load(directory)
        if check_base:  # no recorded fingerprint: a warning that the base cannot be checked
            check_adapter_base(directory, base_fingerprint(base_model), ignore_base_mismatch)
        check_files(directory, (WEIGHTS_NAME, ADAPTER_CONFIG, ADAPTER_WEIGHTS))
        parts = find_parts(base_model)
        check_members(config.k, parts.num_layers)
        with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as weights:  # the header only
            hidden = weights.get_slice("router.weight").get_shape()[1]
        if hidden != parts.hidden_size:
            raise BaseModelMismatchError(f"{directory / WEIGHTS_NAME} holds hidden size {hidden} but the base "
                                         f"model's is {parts.hidden_size}: it was trained on another base.")
        if (directory / ADAPTER_CONFIG).exists():
            from peft import PeftModel

            try:
                base_model = PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable)
            except (RuntimeError, ValueError, KeyError) as error:
                raise BaseModelMismatchError(f"The LoRA weights in {directory} do not fit this base model: "
                                             f"{first_line(error)}") from error
        model = cls(base_model, config)
        model.load_mod_weights(directory)
        if not is_trainable:
            for param in model.parameters():
                param.requires_grad_(False)
        return model

    def load_mod_weights(self, directory: str | Path) -> None:
        """Copy ``directory/mod_model.safetensors`` (member norms, router, trained final norm) into this model.

        The one loader of MoD weights: :meth:`from_pretrained` and checkpoint resumption both call it.
        """
        path = Path(directory) / WEIGHTS_NAME
        state = load_safetensors(path, device=str(self._parts.head.weight.device))
        targets = {name: self._named_mod_tensor(name) for name in state}
        missing = sorted(set(self._mod_entries()) - set(state))
        if missing:
            raise DataError(f"{path} lacks {missing[0]!r}, which this MoD model ({self.mod_config.k} members) needs.")
        for name, tensor in state.items():  # every shape checked before the first copy
            if tuple(tensor.shape) != tuple(targets[name].shape):
                raise DataError(f"{path} holds {name} of shape {list(tensor.shape)} but this model's is "
                                f"{list(targets[name].shape)}.")
        for name, tensor in state.items():
            with torch.no_grad():  # a DTensor shard (FSDP) takes its part of the whole tensor
                targets[name].copy_(distribute_like(tensor, targets[name]))

    def _named_mod_tensor(self, name: str) -> Tensor:
        group, _, rest = name.partition(".")
        module = {"norms": self.norms, "router": self.router, "final_norm": self._parts.final_norm}.get(group)
        tensors = dict(module.state_dict(keep_vars=True)) if module is not None else {}
        if rest not in tensors:
            raise DataError(f"Unexpected tensor {name!r} in {WEIGHTS_NAME}: it does not match this MoD config.")
        return tensors[rest]


_TO_EXPORT = "use modetune.export.export_model (or `modetune export`; --final-member for a plain model)"
# Methods of the wrapped (peft / transformers) model that would leave the ensemble out or out of step
REFUSED = {
    "merge_and_unload": "merging LoRA into the weights here would leave an adapter that no longer matches its base; "
                        + _TO_EXPORT + ".",
    "unload": "it removes LoRA under the ensemble, which was trained with it; " + _TO_EXPORT + ".",
    "enable_adapter_layers": "it toggles LoRA only; use MoDModel.disable_adapter(lora=..., ensemble=...).",
    "disable_adapter_layers": "it toggles LoRA only; use MoDModel.disable_adapter(lora=..., ensemble=...).",
    "add_adapter": "the ensemble was trained with one LoRA adapter; train a new MoD adapter instead.",
    "load_adapter": "the ensemble was trained with one LoRA adapter; load another with MoDModel.from_pretrained.",
    "set_adapter": "the ensemble was trained with one LoRA adapter; load another with MoDModel.from_pretrained.",
    "delete_adapter": "the ensemble was trained with its LoRA adapter; load the base model without the adapter.",
    "resize_token_embeddings": "it replaces the LM head the ensemble shares; resize before get_mod_model.",
}


def _hold_loss_parameters(model: MoDModel, args) -> None:
    """Forward pre-hook of every :class:`MoDModel` (see :meth:`MoDModel.loss_parameters`)."""
    hold_zero3_parameters(model, model.loss_parameters())


def find_mod(model: nn.Module) -> MoDModel | None:
    """The :class:`MoDModel` in ``model``: itself, or inside a DDP / accelerate wrapper (``.module``);
    ``None`` for a plain or peft model."""
    for module in (model, getattr(model, "module", None)):
        if isinstance(module, MoDModel):
            return module
    return None


def get_mod_model(model: nn.Module, config: MoDConfig | None = None) -> MoDModel:
    """Wrap a (peft or plain) transformers causal LM with a MoD ensemble.

    A plain model is frozen (only the MoD modules train: ``mod_only``); a peft model keeps
    its trainable adapters.
    """
    return MoDModel(model, config or MoDConfig())
