"""DeepSpeed ZeRO-3 and ZeRO-2 training of MoD + LoRA for `tests/test_deepspeed.py`: one process of
the 2-process run (``python -m torch.distributed.run --nproc_per_node 2 tests/deepspeed_worker.py OUT``).

Each process trains the tiny MoD + LoRA model of `tests/fsdp_worker.py` (same seeds, same global
batches, each process taking its half of every batch) through ``deepspeed.initialize`` with the
shipped ``configs/deepspeed_zero3.json`` (its ``auto`` values filled in; for ZeRO-2 its stage set to
2), once per entry of ``RUNS``. Per step it records the global loss and DeepSpeed's gradient norm, the shapes
of what the fused loss reads (a spy on ``modetune.mod.model.fused_mod_loss``), how ZeRO partitioned
the model, and the parameters ZeRO-3 all-gathered (a spy on its parameter coordinator). After
training each process gathers the state dict as the HF Trainer does (accelerate's
``get_state_dict``: ZeRO-3's 16-bit consolidation, or the module's own under ZeRO-2) and calls
``MoDTrainer._save`` with it, into ``OUT/<run>/rank<R>``. It writes ``OUT/rank<R>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import deepspeed  # noqa: E402
from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator  # noqa: E402

from fsdp_worker import ROWS, STEPS, build  # noqa: E402
from modetune.mod import model as model_module  # noqa: E402
from tiny import batch, lora, tiny_model  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "deepspeed_zero3.json"
# (run, ZeRO stage, settings over the filled-in config): "zero3-release" releases every parameter as
# soon as its module is done and prefetches nothing, so each all-gather is one module's fetch (counted);
# "lora-zero3-release" trains the LoRA model alone (no MoD) that way: the gathers without MoD
RELEASE = {"stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": 0}
RUNS = [("zero3", 3, {}), ("zero3-release", 3, RELEASE), ("zero2", 2, {}), ("lora-zero3-release", 3, RELEASE)]
HIDDEN = 32  # the tiny model's hidden size


def ds_config(stage: int, world: int, settings: dict | None = None) -> dict:
    """The shipped config with its ``auto`` values filled in as the HF Trainer would for this run
    (batch sizes, clipping at 1, no 16-bit, bucket sizes from the hidden size), except that the
    persistence threshold is 0: every parameter is partitioned, the router and member norms too
    (the Trainer's ``10 * hidden_size`` would keep those small ones whole). ZeRO-2: stage 2, no
    ``stage3_*`` keys."""
    config = json.loads(CONFIG.read_text())
    config.update(train_micro_batch_size_per_gpu=ROWS // world, gradient_accumulation_steps=1, train_batch_size=ROWS,
                  gradient_clipping=1.0, bf16={"enabled": False}, fp16={"enabled": False})
    zero = config["zero_optimization"]
    zero.update(reduce_bucket_size=HIDDEN * HIDDEN, stage3_prefetch_bucket_size=int(0.9 * HIDDEN * HIDDEN),
                stage3_param_persistence_threshold=0)
    zero.update(settings or {})
    if stage == 2:
        zero["stage"] = 2
        for key in [key for key in zero if key.startswith("stage3_")]:
            del zero[key]
    assert "auto" not in json.dumps(config), config
    return config


class GatherSpy:
    """Counts, per step, the parameters ZeRO-3's coordinator all-gathers (by name; forward or
    backward) and which module's fetch asked for them."""

    def __init__(self, model) -> None:
        # names without peft's prefixes, so that MoD + LoRA and LoRA alone read alike
        self.names = {id(p): name.removeprefix("base_model.base_model.model.").removeprefix("base_model.model.")
                      for name, p in model.named_parameters()}
        self.modules = {id(m): type(m).__name__ for m in model.modules()}
        self.events: list[dict] = []
        self.module = None
        coordinator = PartitionedParameterCoordinator
        self.original = (coordinator.fetch_sub_module, coordinator._PartitionedParameterCoordinator__all_gather_params)
        fetch, gather = self.original
        spy = self

        def fetch_sub_module(self, current_submodule, forward):
            spy.module = spy.modules.get(id(current_submodule), "?")
            return fetch(self, current_submodule, forward)

        def all_gather_params(self, params, forward):
            spy.events.append({"module": spy.module, "forward": forward,
                               "params": sorted(spy.names.get(id(p), "?") for p in params)})
            return gather(self, params, forward)

        coordinator.fetch_sub_module = fetch_sub_module
        coordinator._PartitionedParameterCoordinator__all_gather_params = all_gather_params

    def take(self) -> list[dict]:
        events, self.events = self.events, []
        return events

    def remove(self) -> None:
        coordinator = PartitionedParameterCoordinator
        coordinator.fetch_sub_module, coordinator._PartitionedParameterCoordinator__all_gather_params = self.original


def _partitioning(model) -> dict:
    """How ZeRO holds the parameters between steps: ``[0]`` placeholders (ZeRO-3) or whole tensors."""
    head = model.parts.head.weight
    loss_params = model.loss_parameters()
    return {"backend": torch.distributed.get_backend(), "world_size": torch.distributed.get_world_size(),
            "head_local_numel": head.numel(), "head_ds_shape": list(getattr(head, "ds_shape", head.shape)),
            "head_partition_numel": head.ds_tensor.numel() if hasattr(head, "ds_tensor") else None,
            "head_tied": head is model.get_input_embeddings().weight,
            "loss_params_local_numel": [p.numel() for p in loss_params],
            "loss_params_ds": [hasattr(p, "ds_id") for p in loss_params]}


def _trainer_save(engine, stage: int, directory: Path, rank: int) -> dict:
    """What ``Trainer.save_model`` does under DeepSpeed: accelerate's ``get_state_dict(engine)``
    (ZeRO-3: ``_zero3_consolidated_16bit_state_dict``, the whole tensors on rank 0 and ``None``
    elsewhere; ZeRO-2: the module's own state dict) handed to ``MoDTrainer._save`` in every process.
    Returns how many tensors this process received and, under ZeRO-3 on rank 0, the largest gap
    between them and the optimizer's fp32 master weights (``safe_get_full_fp32_param``)."""
    from types import SimpleNamespace

    from modetune.train.trainer import MoDTrainer

    if stage == 3:
        assert engine.zero_gather_16bit_weights_on_model_save()
        state = engine._zero3_consolidated_16bit_state_dict()
        # the optimizer's fp32 master weights, gathered another way (every process takes part)
        master = {name: deepspeed.utils.safe_get_full_fp32_param(p) for name, p in engine.module.named_parameters()
                  if p.requires_grad}
        if rank == 0:
            gap = max(float((master[name] - state[name]).abs().max()) for name in master)
    else:
        state = {key: t.detach().clone() for key, t in engine.module.state_dict().items()}
    trainer = SimpleNamespace(model=engine.module, args=SimpleNamespace(should_save=rank == 0, output_dir=str(directory)),
                              accelerator=SimpleNamespace(unwrap_model=lambda m: m),
                              tokenizer_to_save=None, _run_config=None, _fingerprint=None)
    MoDTrainer._save(trainer, str(directory), state_dict=state)
    torch.distributed.barrier()
    return {"tensors": len(state or {}), "master_gap": gap if stage == 3 and rank == 0 else None}


def train(name: str, stage: int, settings: dict, rank: int, world: int, out: Path, calls: list[dict],
          current: list) -> dict:
    """``STEPS`` steps of AdamW (lr 1e-2, clipping at 1) under ZeRO ``stage``; what this process saw.
    A run named ``lora-*`` trains the same LoRA model without MoD (its gathers are the baseline)."""
    mod = not name.startswith("lora")
    model = build("llama") if mod else lora(tiny_model("llama", seed=0))
    params = [p for p in model.parameters() if p.requires_grad]
    current[:] = [model, model.get_output_embeddings().weight.detach().clone()]
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-2),
                                      config=ds_config(stage, world, settings))
    record = {"partitioning": _partitioning(model) if mod else None, "steps": [], "gathers": []}
    gathers = GatherSpy(model) if stage == 3 else None
    for step in range(STEPS):
        ids, mask, labels = batch(seed=step, batch=ROWS, length=9)
        count = int((labels[:, 1:] != -100).sum())
        rows = slice(rank, None, world)
        out_ = engine(input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows], num_items_in_batch=count)
        engine.backward(out_.loss * world)  # DeepSpeed averages gradients over processes
        engine.step()
        loss = out_.loss.detach().clone()
        torch.distributed.all_reduce(loss)
        record["steps"].append({"loss": float(loss), "grad_norm": float(engine.get_global_grad_norm())})
        if gathers is not None:
            record["gathers"].append(gathers.take())
    if gathers is not None:
        gathers.remove()
    record["loss_calls"] = list(calls)
    calls.clear()
    if mod:
        record["saved"] = _trainer_save(engine, stage, out / name / f"rank{rank}", rank)
    return record


def main(out: Path) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    calls: list[dict] = []
    current: list = []  # [model, its unsharded head weight] of the run in progress
    original = model_module.fused_mod_loss

    def spy(hs, router_input, labels, norms, router, head, *args, **kwargs):
        model, full = current
        weight = head.weight
        calls.append({"head_shape": list(weight.shape), "head_equals_full": weight.shape == full.shape
                      and torch.equal(weight.detach(), full),
                      "head_module_numel": model.parts.head.weight.numel(),
                      "norm_shapes": [list(p.shape) for norm in norms for p in norm.parameters()],
                      "router_shape": list(router.weight.shape)})
        return original(hs, router_input, labels, norms, router, head, *args, **kwargs)

    model_module.fused_mod_loss = spy
    record = {name: train(name, stage, settings, rank, world, out, calls, current) for name, stage, settings in RUNS}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
