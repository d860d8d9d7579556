"""Sharded training (FSDP2, `fully_shard`) over 2 CPU processes (gloo) equals the 1-process run,
the fused loss reads the whole LM head, and `configs/accelerate_fsdp.yaml` is what the run used.

The 2 processes are started by `accelerate launch --config_file configs/accelerate_fsdp.yaml`
(`tests/fsdp_worker.py`). The HF Trainer itself is not the loop here: on CPU, accelerate never
enables FSDP (see `test_trainer_with_sharding_config_on_cpu_is_refused` and docs/scaling.md), so the
worker runs the Trainer's sharding (accelerate's `fsdp2_prepare_model` with the plugin the
launcher built from the config) and `modetune.sharding.shard_mod_model` in a plain loop.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import fsdp_worker
from train_helpers import fails, train_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate_fsdp.yaml"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict[int, dict]:
    """What each of the 2 sharded processes recorded, by rank."""
    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
           "--main_process_port", str(_free_port()), str(Path(__file__).parent / "fsdp_worker.py"), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {rank: json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)}


@pytest.fixture(scope="module")
def reference() -> dict[str, list[dict]]:
    """The same training in one process, unsharded, on the whole global batches."""
    return {arch: fsdp_worker.run_steps(fsdp_worker.build(arch)) for arch in {a for _, a, _ in fsdp_worker.RUNS}}


@pytest.mark.parametrize("name,arch,wrapping", fsdp_worker.RUNS)
def test_sharded_steps_equal_one_process(sharded, reference, name, arch, wrapping):
    for rank in (0, 1):
        run = sharded[rank][name]
        shard = run["sharding"]
        # really sharded: gloo, 2 processes, every decoder layer and the root an FSDP unit, every
        # parameter a DTensor, the head split by rows (97 = 49 + 48) between the processes
        assert shard["backend"] == "gloo" and shard["world_size"] == 2 and shard["root_is_fsdp"]
        assert all(shard["layers_fsdp"]) and shard["all_dtensor"] and shard["head_is_dtensor"]
        assert shard["head_shape"] == [fsdp_worker.tiny_model(arch).config.vocab_size, 32]
        assert shard["head_local_shape"] == [49 if rank == 0 else 48, 32]
        assert shard["head_tied"] == (arch == "llama")  # the default model (SmolLM2) ties its head too
        steps = run["steps"]
        assert len(steps) == len(reference[arch]) == fsdp_worker.STEPS
        for step, (got, want) in enumerate(zip(steps, reference[arch])):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), (name, rank, step)
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4, abs=1e-7), (name, rank, step)


@pytest.mark.parametrize("name,arch,wrapping", fsdp_worker.RUNS)
def test_fused_loss_reads_the_full_head_weight(sharded, name, arch, wrapping):
    for rank in (0, 1):
        run = sharded[rank][name]
        calls = run["loss_calls"]
        assert len(calls) == fsdp_worker.STEPS  # one fused loss per step, every one seen
        for call in calls:  # the whole [V, d] tensor, equal to the unsharded head, not a DTensor shard
            assert not call["is_dtensor"] and call["shape"] == [run["vocab_rows"], 32] and call["equals_full"]
        # the root unit keeps the head gathered through the loss; a head unit that reshards after
        # its forward leaves the head sharded, and MoDModel gathers it for the loss
        assert {c["module_weight_is_dtensor"] for c in calls} == {wrapping == "head_unit"}


def test_accelerate_fsdp_config_is_fsdp2(monkeypatch):
    """The shipped config, read by accelerate's own launcher code: FSDP2, one unit per decoder
    layer, whole state dicts (adapters are saved as single safetensors files)."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIG), "train.py"])
    args, *_ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


@pytest.mark.parametrize("name,key", [("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")])
def test_trainer_with_sharding_config_on_cpu_is_refused(tiny_model_dir, tmp_path, capsys, monkeypatch, name, key):
    """accelerate turns FSDP and DeepSpeed on only off CPU: on CPU the Trainer would train
    unsharded (plain data parallel), silently. `modetune train` says so, before the model loads."""
    monkeypatch.setenv(key, "true")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    fails(capsys, train_args(tiny_model_dir, tmp_path / "run", "--max-steps", "1"), f"{name} through accelerate")
    assert not (tmp_path / "run").exists()
