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
"""

from __future__ import annotations

import os

from torch import Tensor, nn


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
