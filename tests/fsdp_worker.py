"""Sharded MoD + LoRA training for `tests/test_fsdp.py`: the shared loop, and one process of the
2-process run (``accelerate launch --config_file configs/accelerate_fsdp.yaml tests/fsdp_worker.py OUT``).

Each process trains the same tiny MoD + LoRA models as the 1-process reference (same seeds, same
global batches; each process takes its half of every batch) under several FSDP2 wrappings, and
records per step the global loss and the gradient norm, the LM head weight the fused loss reads
at every call (a spy on ``modetune.mod.model.fused_mod_loss``), and how the model is sharded. It
writes ``OUT/rank<R>.json``; after training, each run's adapter is saved from the gathered full
state dict by ``MoDTrainer._save`` into ``OUT/<run>/rank<R>`` (only the main process writes), and
``MoDTrainer._load_from_checkpoint`` loads it back into a freshly sharded model.

Resumption (:func:`resume`): a sharded run of ``RESUME_STEPS`` steps writes a checkpoint after step
``RESUME_AT`` (``modetune.utils.sharding.save_sharded_checkpoint``) and goes on to the end; a fresh
sharded model and optimizer then load that checkpoint and train the remaining steps. Both runs'
final trainable tensors are written to ``OUT/resume/`` (the checkpoint stays there for the 1-process
resumption in ``tests/test_fsdp.py``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).parent))

from modetune.mod import model as model_module  # noqa: E402
from modetune.mod.config import MoDConfig  # noqa: E402
from modetune.mod.model import get_mod_model  # noqa: E402
from tiny import batch, lora, perturb, tiny_model  # noqa: E402

STEPS, ROWS = 3, 4  # optimizer steps; rows of a global batch
RESUME_STEPS, RESUME_AT = 4, 2  # the resumed run: its length, the step its checkpoint is written after
# (name, architecture, wrapping): llama ties its head to the embeddings (as SmolLM2 does), mistral does not
RUNS = [("modetune-tied", "llama", "modetune"), ("modetune-untied", "mistral", "modetune"),
        ("accelerate-tied", "llama", "accelerate"), ("head-unit-tied", "llama", "head_unit")]


def build(arch: str):
    """Tiny MoD + LoRA model (router and member norms perturbed), identical in every process."""
    return perturb(get_mod_model(lora(tiny_model(arch, seed=0)), MoDConfig()))


def make_optimizer(model) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def run_steps(model, rank: int = 0, world: int = 1, steps=range(STEPS), optimizer=None) -> list[dict]:
    """AdamW steps (``steps``: their indices, which seed their batches) with gradient clipping at
    1; this process takes rows ``rank::world`` of every global batch, its loss normalised by the
    global label count."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or make_optimizer(model)
    model.train()
    done = []
    for step in steps:
        ids, mask, labels = batch(seed=step, batch=ROWS, length=9)
        count = int((labels[:, 1:] != -100).sum())
        rows = slice(rank, None, world)
        out = model(input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows], num_items_in_batch=count)
        (out.loss * world).backward()  # FSDP averages gradients over processes
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        loss = out.loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(loss)
        optimizer.step()
        optimizer.zero_grad()
        done.append({"loss": float(loss), "grad_norm": float(norm)})
    return done


def trainable_state(model) -> dict:
    """The trainable tensors, whole (gathered from the shards; every process must call it; the
    other processes receive an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: state[name] for name, p in model.named_parameters() if p.requires_grad and name in state}


def resume(out: Path, rank: int, world: int) -> dict:
    """The sharded run interrupted after ``RESUME_AT`` steps and resumed from its checkpoint by a
    fresh model and optimizer, and the same run uninterrupted (see the module's docstring)."""
    from safetensors.torch import save_file

    from modetune.utils.sharding import load_sharded_checkpoint, save_sharded_checkpoint, shard_mod_model

    folder = out / "resume"
    model = shard_mod_model(build("llama"))
    optimizer = make_optimizer(model)
    first = run_steps(model, rank, world, range(RESUME_AT), optimizer)
    save_sharded_checkpoint(model, optimizer, folder / f"checkpoint-{RESUME_AT}", {"step": RESUME_AT})
    rest = run_steps(model, rank, world, range(RESUME_AT, RESUME_STEPS), optimizer)
    finals = {"uninterrupted": trainable_state(model)}
    model = shard_mod_model(build("llama"))  # a new process would start from here
    optimizer = make_optimizer(model)
    state = load_sharded_checkpoint(model, optimizer, folder / f"checkpoint-{RESUME_AT}")
    resumed = run_steps(model, rank, world, range(state["step"], RESUME_STEPS), optimizer)
    finals["resumed"] = trainable_state(model)
    if rank == 0:
        for name, tensors in finals.items():
            save_file(tensors, str(folder / f"{name}.safetensors"))
    torch.distributed.barrier()
    return {"uninterrupted": first + rest, "resumed": resumed, "resumed_from": state["step"]}


def trainer_load(arch: str, saved: Path, trained: dict) -> dict:
    """``MoDTrainer._load_from_checkpoint`` (the Trainer's ``--resume``) of the adapter saved after
    sharded training, into a freshly sharded model: how far its gathered trainable tensors are
    from the trained ones (compared in the main process, which holds ``trained``)."""
    from types import SimpleNamespace

    from modetune.train.trainer import MoDTrainer
    from modetune.utils.sharding import shard_mod_model

    model = shard_mod_model(build(arch))
    sharded = all(isinstance(p, DTensor) for p in model.parameters() if p.requires_grad)
    before = trainable_state(model)
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    MoDTrainer._load_from_checkpoint(trainer, str(saved))
    after = trainable_state(model)
    diff = lambda a: max((float((a[n] - trained[n]).abs().max()) for n in a), default=None)  # noqa: E731
    return {"sharded": sharded, "tensors": len(after), "max_diff": diff(after), "start_diff": diff(before),
            "plain_load": _whole_tensor_load(model)}


def _whole_tensor_load(model) -> dict:
    """``load_state_dict`` of a whole router weight into the sharded model: what it raises
    without ``loading_whole_tensors``, and how far the gathered result is from it with it."""
    from modetune.utils.sharding import loading_whole_tensors

    whole = torch.arange(model.router.weight.numel(), dtype=torch.float32).reshape(model.router.weight.shape)
    try:
        model.load_state_dict({"ensemble.router.weight": whole}, strict=False)
        without = "loaded"
    except RuntimeError as error:
        without = str(error)
    with loading_whole_tensors(model):
        model.load_state_dict({"ensemble.router.weight": whole}, strict=False)
    return {"without": without, "with_diff": float((model.router.weight.full_tensor() - whole).abs().max())}


def _accelerate_wrap(model):
    """The wrapping ``accelerate launch --config_file configs/accelerate_fsdp.yaml`` gives the
    Trainer on GPUs: accelerate's own ``fsdp2_prepare_model``, its plugin read from the
    environment that the launcher derived from the config file."""
    from types import SimpleNamespace

    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    assert os.environ.get("ACCELERATE_USE_FSDP") == "true", "not launched with the FSDP config"
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    stub = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), mixed_precision="no",
                           is_main_process=int(os.environ["RANK"]) == 0, device=torch.device("cpu"))
    return fsdp2_prepare_model(stub, model)


def _head_unit_wrap(model):
    """The head (with its tied embedding) in a unit of its own that reshards after forward:
    the loss then finds the head sharded and must gather it."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.parts.layers:
        fully_shard(layer)
    fully_shard([model.get_input_embeddings(), model.parts.head], reshard_after_forward=True)
    fully_shard(model)
    return model


def _save_gathered(model, directory: Path, rank: int) -> int:
    """Save as the Trainer does under FSDP2: every process gathers the full state dict as
    ``accelerator.get_state_dict`` does, then calls ``MoDTrainer._save`` with it (which writes on
    the main process only). Returns the tensors this process received."""
    from types import SimpleNamespace

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from modetune.train.trainer import MoDTrainer

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(should_save=rank == 0, output_dir=str(directory)),
                              accelerator=SimpleNamespace(unwrap_model=lambda m: m),
                              tokenizer_to_save=None, _run_config=None, _fingerprint=None)
    MoDTrainer._save(trainer, str(directory), state_dict=state)
    torch.distributed.barrier()
    return state


def _refusal(model, directory: Path) -> str:
    """What saving from the sharded model's own state dict (``DTensor`` shards) raises."""
    from modetune.utils.errors import DataError

    try:
        model.save_pretrained(directory, state_dict=model.state_dict())
    except DataError as error:
        return str(error)
    return "saved"


def _sharding(model) -> dict:
    from torch.distributed.fsdp import FSDPModule

    head = model.parts.head.weight
    return {
        "backend": torch.distributed.get_backend(),
        "world_size": torch.distributed.get_world_size(),
        "root_is_fsdp": isinstance(model, FSDPModule),
        "layers_fsdp": [isinstance(layer, FSDPModule) for layer in model.parts.layers],
        "all_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "head_is_dtensor": isinstance(head, DTensor),
        "head_shape": list(head.shape),
        "head_local_shape": list(head.to_local().shape) if isinstance(head, DTensor) else None,
        "head_tied": head is model.get_input_embeddings().weight,
    }


def main(out: Path) -> None:
    from modetune.utils.sharding import shard_mod_model

    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    calls: list[dict] = []
    original = model_module.fused_mod_loss

    def spy(hs, router_input, labels, norms, router, head, *args, **kwargs):
        weight = head.weight
        calls.append({"is_dtensor": isinstance(weight, DTensor), "shape": list(weight.shape),
                      # the head module's own parameter at that moment: sharded again or not
                      "module_weight_is_dtensor": isinstance(model.parts.head.weight, DTensor),
                      "equals_full": not isinstance(weight, DTensor) and weight.shape == full.shape
                      and torch.equal(weight.detach(), full)})
        return original(hs, router_input, labels, norms, router, head, *args, **kwargs)

    model_module.fused_mod_loss = spy
    wraps = {"modetune": shard_mod_model, "accelerate": _accelerate_wrap, "head_unit": _head_unit_wrap}
    record = {}
    for name, arch, wrapping in RUNS:
        model = build(arch)
        full = model.parts.head.weight.detach().clone()  # the unsharded head, before sharding
        calls.clear()
        model = wraps[wrapping](model)
        sharding = _sharding(model)
        steps = run_steps(model, rank, world)
        gathered = _save_gathered(model, out / name / f"rank{rank}", rank)
        record[name] = {"steps": steps, "loss_calls": list(calls), "sharding": sharding,
                        "vocab_rows": full.shape[0], "gathered_tensors": len(gathered),
                        "shards_refused": _refusal(model, out / name / f"shards{rank}")}
        if wrapping == "modetune":
            record[name]["trainer_load"] = trainer_load(arch, out / name / "rank0", gathered)
    record["resume"] = resume(out, rank, world)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
