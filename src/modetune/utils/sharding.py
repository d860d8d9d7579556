"""Sharded training of a :class:`~modetune.mod.model.MoDModel` with FSDP2 (``torch.distributed.fsdp.fully_shard``).

The HF Trainer shards through accelerate (``accelerate launch --config_file
configs/accelerate_fsdp.yaml``), which accelerate only does on GPUs; for a custom training loop,
or on CPU processes (gloo), :func:`shard_mod_model` applies a layout like accelerate's
(which puts embeddings, final norm and head in a unit of their own, also kept gathered):

- one FSDP unit per decoder layer (LoRA weights included), resharded after forward by default;
- the root unit (the ``MoDModel``) holds the rest: embeddings, final norm, LM head (one tensor
  when tied), member norms and router. FSDP2 keeps the root gathered from its forward to the
  end of its backward, so the fused loss, which runs inside ``MoDModel.forward`` and reads the
  head's weight outside the head's own forward, sees the full ``[V, d]`` weight.

Should a different wrapping leave the head sharded when the loss reads it (the head in a unit of
its own that reshards after forward), ``MoDModel`` gathers it (``DTensor.full_tensor``) instead.

DeepSpeed ZeRO-3 partitions every parameter and gathers a module's parameters only inside that
module's forward. The loss reads the head, the member norms and the router outside their own
forward, so ``MoDModel`` registers them as external parameters of itself
(:func:`hold_zero3_parameters`): ZeRO-3 then gathers them when ``MoDModel.forward`` starts (and for
its backward) and releases them when it ends. Without ZeRO-3 (no parameter carries a ``ds_id``)
nothing is done and DeepSpeed is not imported.

Checkpoints of a sharded loop hold whole tensors (:func:`save_sharded_checkpoint`,
:func:`load_sharded_checkpoint`: safetensors files, no pickles), so a run resumes on another number
of processes, or unsharded. :func:`distribute_like` and :func:`loading_whole_tensors` let loaders
written for whole tensors (``MoDTrainer._load_from_checkpoint``, peft's ``set_peft_model_state_dict``)
fill ``DTensor`` shards.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

MODEL_FILE = "model.safetensors"  # the trainable tensors, whole, keyed by the model's parameter names
OPTIMIZER_FILE = "optimizer.safetensors"  # the optimizer state, whole: "state.<parameter>.<entry>"
STATE_FILE = "checkpoint.json"  # the caller's own record (step, ...)
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def gathered_key(name: str) -> str:
    """A parameter's name without the parts FSDP, activation checkpointing and ``torch.compile``
    insert (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``, ``_orig_mod.``)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def full_weight(weight: Tensor) -> Tensor:
    """The whole tensor of a possibly sharded parameter: a ``DTensor`` is all-gathered
    (``full_tensor``), anything else is returned as it is."""
    from torch.distributed.tensor import DTensor

    return weight.full_tensor() if isinstance(weight, DTensor) else weight


def hold_zero3_parameters(module: nn.Module, params) -> int:
    """Register each ZeRO-3 partitioned parameter of ``params`` (one with a ``ds_id``) as an external
    parameter of ``module`` (``deepspeed.zero.register_external_parameter``), so that ZeRO-3 gathers
    it for the whole forward and backward of ``module``; returns how many there were. Anything else
    (no DeepSpeed, ZeRO stage 1/2, FSDP) is left alone, and DeepSpeed is then not imported."""
    zero3 = [p for p in params if hasattr(p, "ds_id")]
    if zero3:
        import deepspeed

        for param in zero3:
            deepspeed.zero.register_external_parameter(module, param)
    return len(zero3)


def shard_mod_model(model: nn.Module, mesh=None, reshard_after_forward: bool = True, mp_policy=None,
                    offload_policy=None) -> nn.Module:
    """Apply ``fully_shard`` to each decoder layer of a ``MoDModel``, then to the whole ``model``
    (in place; returned).

    Call it in every process after ``torch.distributed.init_process_group`` and before building
    the optimizer (whose parameters must be the sharded ones). ``mesh``, ``mp_policy`` and
    ``offload_policy`` go to ``fully_shard`` unchanged (defaults: all processes, no mixed
    precision, no offloading). Gradients are averaged over processes: to normalise the loss by
    the global number of labelled tokens (``num_items_in_batch``), multiply each process's loss
    by the number of processes, as the Trainer does.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy(),
              "offload_policy": offload_policy or OffloadPolicy()}
    for layer in model.parts.layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model


def check_launcher_sharding(cuda_available: bool, environ: dict | None = None) -> None:
    """Refuse an FSDP or DeepSpeed launch (``accelerate launch`` with such a config sets
    ``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``) on a machine without CUDA: accelerate
    (1.15) enables FSDP only for GPU-like devices and DeepSpeed only when not on CPU, so on CPU
    processes the Trainer would silently train unsharded (plain data parallel)."""
    from .errors import ConfigError

    environ = os.environ if environ is None else environ
    for name, key in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if environ.get(key, "false").lower() == "true" and not cuda_available:
            raise ConfigError(f"{name} through accelerate needs GPUs: on CPU accelerate ignores the {name} config and "
                              "the Trainer would train unsharded (data parallel) without saying so. Launch without "
                              "it, or shard a custom loop: FSDP2 with modetune.utils.sharding.shard_mod_model, "
                              "ZeRO-2/3 with deepspeed.initialize (docs/scaling.md).")


def distribute_like(tensor: Tensor, like: Tensor) -> Tensor:
    """``tensor`` (a whole tensor) laid out as ``like``: when ``like`` is a ``DTensor``, a ``DTensor``
    on its mesh with its placements, each process keeping its own part of its own copy (no
    communication: every process must pass the same values); otherwise ``tensor`` unchanged."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or isinstance(tensor, DTensor):
        return tensor
    tensor = tensor.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(tensor, like.device_mesh, like.placements, src_data_rank=None)


@contextmanager
def loading_whole_tensors(model: nn.Module):
    """Within this context, ``load_state_dict`` on ``model`` or any of its modules (and what calls
    it, e.g. peft's ``set_peft_model_state_dict``) takes whole tensors for parameters that are
    ``DTensor`` shards, as :func:`distribute_like` lays them out. Every process loads the same values."""
    from torch.distributed.tensor import DTensor

    def whole_to_shard(module, state_dict, prefix, *args):
        for name, param in module.named_parameters(recurse=False):
            if prefix + name in state_dict:
                state_dict[prefix + name] = distribute_like(state_dict[prefix + name], param)

    handles = [module.register_load_state_dict_pre_hook(whole_to_shard) for module in model.modules()
               if any(isinstance(p, DTensor) for p in module.parameters(recurse=False))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _trainable(model: nn.Module) -> list[str]:
    return list(dict.fromkeys(gathered_key(name) for name, p in model.named_parameters() if p.requires_grad))


def save_sharded_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | Path,
                            state: dict | None = None) -> None:
    """Write a checkpoint of ``model``'s trainable tensors and ``optimizer``'s state as whole tensors.

    For a model sharded by :func:`shard_mod_model` (or any FSDP2 wrapping) every process must call
    it: torch's ``get_model_state_dict`` / ``get_optimizer_state_dict`` (``full_state_dict=True``)
    gather the shards to process 0, which writes ``directory``: ``model.safetensors``,
    ``optimizer.safetensors`` (its param groups as JSON in the file's metadata) and ``checkpoint.json``
    (``state``: the step, ...). The folder appears complete or not at all (written beside it, then
    renamed). An unsharded model in one process is saved the same way.
    """
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    if not _distributed() or torch.distributed.get_rank() == 0:
        directory = Path(directory)
        tensors = {name: model_state[name].detach().contiguous() for name in _trainable(model)}
        flat, extra = {}, {}
        for name, entries in optim_state["state"].items():
            for entry, value in entries.items():
                if torch.is_tensor(value):
                    flat[f"state.{name}.{entry}"] = value.detach().contiguous()
                else:
                    extra[f"{name}.{entry}"] = value
        groups = json.dumps(optim_state["param_groups"])
        staging = directory.with_name(f".{directory.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_file(tensors, str(staging / MODEL_FILE), metadata={"format": "pt"})
        save_file(flat, str(staging / OPTIMIZER_FILE),
                  metadata={"format": "pt", "param_groups": groups, "scalars": json.dumps(extra)})
        (staging / STATE_FILE).write_text(json.dumps(state or {}) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    if _distributed():
        torch.distributed.barrier()


def _read_checkpoint(model: nn.Module, directory: Path) -> tuple[dict, dict, dict]:
    """``(model state, optimizer state, caller's state)`` of a checkpoint, whole tensors, checked
    to hold every trainable tensor of ``model``."""
    from safetensors import safe_open

    from .errors import DataError
    from .integrity import load_safetensors, read_json

    model_state = load_safetensors(directory / MODEL_FILE)
    missing = [name for name in _trainable(model) if name not in model_state]
    if missing:
        raise DataError(f"{directory / MODEL_FILE} lacks {len(missing)} of the model's trainable tensors "
                        f"(first: {missing[0]!r}): it is a checkpoint of another model.")
    flat = load_safetensors(directory / OPTIMIZER_FILE)
    with safe_open(str(directory / OPTIMIZER_FILE), "pt") as handle:
        metadata = handle.metadata()
    state: dict[str, dict] = {}
    for key, value in [*flat.items(), *json.loads(metadata["scalars"]).items()]:
        name, _, entry = key.removeprefix("state.").rpartition(".")
        state.setdefault(name, {})[entry] = value
    groups = [{key: tuple(value) if isinstance(value, list) and key != "params" else value
               for key, value in group.items()} for group in json.loads(metadata["param_groups"])]
    return model_state, {"state": state, "param_groups": groups}, read_json(directory / STATE_FILE)


def load_sharded_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, directory: str | Path) -> dict:
    """Load a :func:`save_sharded_checkpoint` folder into ``model`` and ``optimizer``; returns the
    ``state`` saved with it.

    Sharded over several processes, every process must call it: process 0 reads the files and
    torch's ``set_model_state_dict`` / ``set_optimizer_state_dict`` (``full_state_dict=True,
    broadcast_from_rank0=True``) send each tensor to the others, which keep their shards (so the
    other processes need not see the folder). The number of processes may differ from the saving
    run's, and an unsharded model in one process loads it too. Only trainable tensors are loaded;
    the frozen ones must be those the run started from.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    from .errors import DataError

    distributed = _distributed()
    model_state, optim_state, state, error = {}, {}, {}, None
    if not distributed or torch.distributed.get_rank() == 0:
        try:
            model_state, optim_state, state = _read_checkpoint(model, Path(directory))
        except (DataError, FileNotFoundError, KeyError, ValueError) as failure:
            error = f"{type(failure).__name__}: {failure}"
    if distributed:  # every process raises, or none does
        shared = [error, state]
        torch.distributed.broadcast_object_list(shared, src=0)
        error, state = shared
    if error:
        raise DataError(f"Cannot resume from {directory}: {error}")
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed, strict=False)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
    return state
