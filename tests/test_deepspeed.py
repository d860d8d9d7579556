"""DeepSpeed ZeRO-3 and ZeRO-2 training of MoD + LoRA over 2 CPU processes (gloo) equals the 1-process
run, the fused loss reads whole parameters, the adapter the HF Trainer's save path writes equals the
1-process adapter, and the all-gathers ZeRO-3 issues per step are counted against LoRA alone.

One launch (``python -m torch.distributed.run --nproc_per_node 2 tests/deepspeed_worker.py``) runs
every case, each through ``deepspeed.initialize`` with the shipped ``configs/deepspeed_zero3.json``
(``auto`` values filled in; ZeRO-2: its stage set to 2). The HF Trainer is not the loop: on CPU,
accelerate never enables DeepSpeed (docs/scaling.md); benchmarks/gpu_check.sh runs that path on a GPU.
The tests skip only where DeepSpeed cannot be imported (``pip install 'modetune[deepspeed]'``;
scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install 'modetune[deepspeed]' "
                                        "(DS_BUILD_OPS=0, --no-build-isolation; scripts/setup.sh does it)")

import deepspeed_worker  # noqa: E402
import fsdp_worker  # noqa: E402
from tiny import VOCAB  # noqa: E402
from train_helpers import free_port, launch_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MOD_RUNS = [name for name, *_ in deepspeed_worker.RUNS if not name.startswith("lora")]
STAGE = {name: stage for name, stage, _ in deepspeed_worker.RUNS}
# the tensors the fused loss reads outside their modules' forward (the head is tied to the embeddings)
LOSS_TENSORS = ("ensemble.norms.0.weight", "ensemble.norms.1.weight", "ensemble.router.weight",
                "model.embed_tokens.weight", "model.norm.weight")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def zero_out(tmp_path_factory) -> Path:
    """The folder the 2 DeepSpeed processes wrote to (their records, their adapter saves)."""
    out = tmp_path_factory.mktemp("deepspeed")
    launch_workers(["torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                    str(free_port())], "deepspeed_worker.py", out)
    return out


@pytest.fixture(scope="module")
def zero(zero_out) -> dict[int, dict]:
    """What each of the 2 processes recorded, by rank."""
    return {rank: json.loads((zero_out / f"rank{rank}.json").read_text()) for rank in (0, 1)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[dict], Path]:
    """The same training in one process without DeepSpeed: its steps and its saved adapter."""
    out = tmp_path_factory.mktemp("reference") / "llama"
    model = fsdp_worker.build("llama")
    steps = fsdp_worker.run_steps(model)
    model.save_pretrained(out)
    return steps, out


@pytest.mark.parametrize("name", MOD_RUNS)
def test_zero_steps_equal_one_process(zero, reference, name):
    """Really partitioned (ZeRO-3: every parameter a size-0 placeholder between steps, the head's
    3,104 entries split 1,552 + 1,552; ZeRO-2: whole parameters), and per step the global loss and
    DeepSpeed's gradient norm equal the 1-process run (relative 1e-5) in both processes."""
    for rank in (0, 1):
        run = zero[rank][name]
        part = run["partitioning"]
        assert part["backend"] == "gloo" and part["world_size"] == 2 and part["head_tied"]
        assert part["head_ds_shape"] == [VOCAB, 32] and len(part["loss_params_ds"]) == 5
        if STAGE[name] == 3:
            assert part["head_local_numel"] == 0 and part["head_partition_numel"] == VOCAB * 32 // 2
            assert all(part["loss_params_ds"]) and part["loss_params_local_numel"] == [0] * 5
        else:
            assert part["head_local_numel"] == VOCAB * 32 and not any(part["loss_params_ds"])
        assert len(run["steps"]) == len(reference[0]) == fsdp_worker.STEPS
        for step, (got, want) in enumerate(zip(run["steps"], reference[0])):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), (name, rank, step)
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5), (name, rank, step)


@pytest.mark.parametrize("name", MOD_RUNS)
def test_fused_loss_reads_whole_parameters(zero, name):
    """At every call, in every process, the loss receives the whole head (equal to the unpartitioned
    one), and the member norms and router it calls hold their whole weights, as does the head module."""
    for rank in (0, 1):
        calls = zero[rank][name]["loss_calls"]
        assert len(calls) == fsdp_worker.STEPS
        for call in calls:
            assert call["head_shape"] == [VOCAB, 32] and call["head_equals_full"]
            assert call["head_module_numel"] == VOCAB * 32
            assert call["norm_shapes"] == [[32]] * 3 and call["router_shape"] == [3, 32]


@pytest.mark.parametrize("name", MOD_RUNS)
def test_trainer_save_of_gathered_state_dict_equals_one_process(zero_out, zero, reference, name):
    """The state dict the Trainer gathers under DeepSpeed (ZeRO-3: the 16-bit consolidation, whole on
    rank 0 only; ZeRO-2: the module's own), given to `MoDTrainer._save`, writes the 1-process adapter:
    same files and tensor names, loaded by `MoDModel.from_pretrained`, every trained tensor (LoRA,
    member norms, router) equal (relative 1e-5, absolute 1e-6) and moved from its initial value.
    Under ZeRO-3 the saved tensors also equal the optimizer's fp32 master weights."""
    from safetensors.torch import load_file

    from modetune.mod.model import ADAPTER_WEIGHTS, WEIGHTS_NAME, MoDModel

    saved, want = zero_out / name / "rank0", reference[1]
    received = [zero[rank][name]["saved"]["tensors"] for rank in (0, 1)]
    assert received[0] > 0 and (received[1] == 0 if STAGE[name] == 3 else received[1] == received[0])
    if STAGE[name] == 3:
        assert zero[0][name]["saved"]["master_gap"] == 0.0
    assert not (zero_out / name / "rank1").exists()  # the other process wrote nothing
    assert {p.name for p in saved.iterdir()} == {p.name for p in want.iterdir()}
    for file in (ADAPTER_WEIGHTS, WEIGHTS_NAME):
        assert set(load_file(str(saved / file))) == set(load_file(str(want / file))), file
    loaded = MoDModel.from_pretrained(fsdp_worker.tiny_model("llama", seed=0), saved)
    unsharded = MoDModel.from_pretrained(fsdp_worker.tiny_model("llama", seed=0), want)
    start = dict(fsdp_worker.build("llama").named_parameters())
    trained = [n for n, p in start.items() if p.requires_grad]
    assert any("lora_" in n for n in trained) and "ensemble.router.weight" in trained
    got, expected = dict(loaded.named_parameters()), dict(unsharded.named_parameters())
    for param in trained:
        torch.testing.assert_close(got[param], expected[param], rtol=1e-5, atol=1e-6, msg=param)
        assert not torch.equal(got[param], start[param]), param


def _gathers(record: dict, step: int) -> Counter:
    """One step's all-gathers: (module that asked, forward or backward, the tensors)."""
    return Counter((e["module"], e["forward"], tuple(e["params"])) for e in record["gathers"][step])


def test_zero3_gathers_per_step_against_lora_alone(zero):
    """ZeRO-3 releasing every parameter after use, no prefetch (after the first step, which records
    the trace): MoD + LoRA issues the same all-gathers as LoRA alone for every decoder layer, and in
    place of LoRA's five (embedding and head, the one tied tensor, in forward; head in backward; final
    norm in forward and backward) two of its own, by `MoDModel` in forward and backward, each
    coalescing the tensors the loss reads (tied head, final norm, member norms, router)."""
    lora_only = Counter({("Embedding", True, ("model.embed_tokens.weight",)): 1,
                         ("Linear", True, ("model.embed_tokens.weight",)): 1,
                         ("Linear", False, ("model.embed_tokens.weight",)): 1,
                         ("LlamaRMSNorm", True, ("model.norm.weight",)): 1,
                         ("LlamaRMSNorm", False, ("model.norm.weight",)): 1})
    for rank in (0, 1):
        for step in range(1, fsdp_worker.STEPS):
            mod, lora = _gathers(zero[rank]["zero3-release"], step), _gathers(zero[rank]["lora-zero3-release"], step)
            assert mod - lora == Counter({("MoDModel", True, LOSS_TENSORS): 1, ("MoDModel", False, LOSS_TENSORS): 1})
            assert lora - mod == lora_only
            assert sum(lora.values()) - sum(mod.values()) == 3 and sum(mod.values()) > 100
