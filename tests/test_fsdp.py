"""Sharded training (FSDP2, `fully_shard`) over 2 CPU processes (gloo) equals the 1-process run,
the fused loss reads the whole LM head, and `configs/accelerate_fsdp.yaml` is what the run used.

The 2 processes are started by `accelerate launch --config_file configs/accelerate_fsdp.yaml`
(`tests/fsdp_worker.py`). The HF Trainer itself is not the loop here: on CPU, accelerate never
enables FSDP (see `test_trainer_with_sharding_config_on_cpu_is_refused` and docs/scaling.md), so the
worker runs the Trainer's sharding (accelerate's `fsdp2_prepare_model` with the plugin the
launcher built from the config) and `modetune.utils.sharding.shard_mod_model` in a plain loop.
The same launch resumes a sharded run from a checkpoint of whole tensors (`save_sharded_checkpoint`
/ `load_sharded_checkpoint`) and loads an adapter into sharded parameters as `--resume` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fsdp_worker
from train_helpers import fails, free_port, launch_workers, train_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate_fsdp.yaml"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def sharded_out(tmp_path_factory) -> Path:
    """The folder the 2 sharded processes wrote to (their records, their adapter saves)."""
    out = tmp_path_factory.mktemp("fsdp")
    launch_workers(["accelerate.commands.launch", "--config_file", str(CONFIG), "--main_process_port",
                    str(free_port())], "fsdp_worker.py", out)
    return out


@pytest.fixture(scope="module")
def sharded(sharded_out) -> dict[int, dict]:
    """What each of the 2 sharded processes recorded, by rank."""
    return {rank: json.loads((sharded_out / f"rank{rank}.json").read_text()) for rank in (0, 1)}


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory) -> dict[str, tuple[list[dict], Path]]:
    """The same training in one process, unsharded, on the whole global batches: its steps, and
    the folder its adapter was saved to (the unsharded save path, from the model's parameters)."""
    out = tmp_path_factory.mktemp("reference")
    runs = {}
    for arch in sorted({a for _, a, _ in fsdp_worker.RUNS}):
        model = fsdp_worker.build(arch)
        runs[arch] = (fsdp_worker.run_steps(model), out / arch)
        model.save_pretrained(out / arch)
    return runs


@pytest.fixture(scope="module")
def reference(reference_runs) -> dict[str, list[dict]]:
    return {arch: steps for arch, (steps, _) in reference_runs.items()}


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


@pytest.mark.parametrize("name,arch,wrapping", fsdp_worker.RUNS)
def test_trainer_save_of_gathered_state_dict_equals_unsharded_save(sharded_out, sharded, reference_runs,
                                                                   name, arch, wrapping):
    """`MoDTrainer._save` given the full state dict gathered after sharded training (as the
    Trainer's FSDP path calls it) writes the adapter the 1-process run writes, on the main process
    only, and modetune's loader reads it."""
    from safetensors.torch import load_file

    from modetune.mod.model import ADAPTER_WEIGHTS, WEIGHTS_NAME, MoDModel

    saved, want = sharded_out / name / "rank0", reference_runs[arch][1]
    assert sharded[0][name]["gathered_tensors"] > 0 and sharded[1][name]["gathered_tensors"] == 0
    assert not (sharded_out / name / "rank1").exists()  # the other process wrote nothing
    for rank in (0, 1):  # the sharded model's own state dict (DTensor shards) is refused, not saved
        assert "holds shards" in sharded[rank][name]["shards_refused"]
    assert {p.name for p in saved.iterdir()} == {p.name for p in want.iterdir()}
    for file in (ADAPTER_WEIGHTS, WEIGHTS_NAME):
        got, expected = load_file(str(saved / file)), load_file(str(want / file))
        assert set(got) == set(expected), file
    loaded = MoDModel.from_pretrained(fsdp_worker.tiny_model(arch, seed=0), saved)
    unsharded = MoDModel.from_pretrained(fsdp_worker.tiny_model(arch, seed=0), want)
    start = dict(fsdp_worker.build(arch).named_parameters())
    trained = [n for n, p in start.items() if p.requires_grad]
    assert any("lora_" in n for n in trained)
    assert "ensemble.router.weight" in trained and "ensemble.norms.0.weight" in trained
    got, expected = dict(loaded.named_parameters()), dict(unsharded.named_parameters())
    for param in trained:
        torch.testing.assert_close(got[param], expected[param], rtol=1e-5, atol=1e-6, msg=param)
        assert not torch.equal(got[param], start[param]), param  # the trained weights, not the initial ones


def test_save_from_state_dict_refuses_missing_or_sharded_tensors(tmp_path):
    """A state dict that lacks a trainable tensor, or holds a shard, is refused by name, and
    wrapper prefixes (FSDP, torch.compile) in its keys are understood. (A state dict of shards is
    refused in the sharded run: `test_trainer_save_of_gathered_state_dict_equals_unsharded_save`.)"""
    from modetune.utils.errors import DataError

    model = fsdp_worker.build("llama")
    state = {f"_orig_mod.{key}": t for key, t in model.state_dict().items()}
    model.save_pretrained(tmp_path / "ok", state_dict=state)
    assert (tmp_path / "ok" / "adapter_model.safetensors").exists()
    missing = {key: t for key, t in state.items() if not key.endswith("router.weight")}
    with pytest.raises(DataError, match="lacks 1 .*'ensemble.router.weight'"):
        model.save_pretrained(tmp_path / "missing", state_dict=missing)
    lora_key = next(key for key in state if "lora_A" in key)
    with pytest.raises(DataError, match="lacks 1 .*lora_A"):
        model.save_pretrained(tmp_path / "missing", state_dict={k: t for k, t in state.items() if k != lora_key})
    assert not (tmp_path / "missing").exists()


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


def _max_relative_diff(got: dict, want: dict) -> float:
    """The largest ``max|got - want| / max|want|`` over the tensors (the same names in both)."""
    assert got.keys() == want.keys() and got
    return max(float((got[k] - want[k]).abs().max() / want[k].abs().max()) for k in want)


@pytest.fixture(scope="module")
def uninterrupted_one_process() -> dict:
    """The resumed runs' training (``RESUME_STEPS`` steps) in one unsharded process: its final
    trainable tensors."""
    model = fsdp_worker.build("llama")
    fsdp_worker.run_steps(model, steps=range(fsdp_worker.RESUME_STEPS))
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_sharded_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(sharded, sharded_out,
                                                                              uninterrupted_one_process):
    """2 processes -> 2 processes: a fresh sharded model and optimizer loading the checkpoint written
    after step 2 of 4 train steps 3 and 4 to the weights of the run that went on (relative 1e-5 of
    each tensor's largest entry; measured: equal bit for bit), and to one unsharded process's
    (relative 1e-5; measured: 3.9e-6, the sharded arithmetic, not the resumption). The checkpoint
    holds whole tensors in safetensors files: every trainable tensor and its Adam state."""
    from safetensors.torch import load_file

    folder = sharded_out / "resume"
    for rank in (0, 1):
        run = sharded[rank]["resume"]
        assert run["resumed_from"] == fsdp_worker.RESUME_AT and len(run["uninterrupted"]) == fsdp_worker.RESUME_STEPS
        assert run["resumed"] == run["uninterrupted"][fsdp_worker.RESUME_AT:]  # the same losses and norms
    checkpoint = folder / f"checkpoint-{fsdp_worker.RESUME_AT}"
    assert {p.name for p in checkpoint.iterdir()} == {"model.safetensors", "optimizer.safetensors", "checkpoint.json"}
    weights, optimizer = (load_file(str(checkpoint / f"{name}.safetensors")) for name in ("model", "optimizer"))
    assert set(weights) == set(uninterrupted_one_process)  # every trainable tensor, whole, nothing frozen
    assert all(weights[n].shape == t.shape for n, t in uninterrupted_one_process.items())
    assert set(optimizer) == {f"state.{n}.{e}" for n in weights for e in ("step", "exp_avg", "exp_avg_sq")}
    resumed, uninterrupted = (load_file(str(folder / f"{name}.safetensors")) for name in ("resumed", "uninterrupted"))
    assert _max_relative_diff(resumed, uninterrupted) <= 1e-5
    assert _max_relative_diff(resumed, uninterrupted_one_process) <= 1e-5
    assert _max_relative_diff(weights, uninterrupted_one_process) > 1e-3  # the checkpoint is not the end


def test_sharded_checkpoint_resumes_in_one_unsharded_process(sharded_out, uninterrupted_one_process):
    """2 processes -> 1: the checkpoint of the 2-process sharded run, loaded into an unsharded model
    in this process, trains steps 3 and 4 to the weights of the uninterrupted 2-process run and of
    the uninterrupted 1-process run (relative 1e-5; measured: 1.5e-7 and 3.9e-6). Resuming the
    weights without the optimizer state (a fresh AdamW) ends elsewhere (measured: 0.16)."""
    from safetensors.torch import load_file

    from modetune.utils.sharding import load_sharded_checkpoint

    checkpoint = sharded_out / "resume" / f"checkpoint-{fsdp_worker.RESUME_AT}"
    finals = {}
    for name in ("resumed", "weights_only"):
        model = fsdp_worker.build("llama")
        optimizer = fsdp_worker.make_optimizer(model)
        state = load_sharded_checkpoint(model, optimizer, checkpoint)
        assert state == {"step": fsdp_worker.RESUME_AT}
        if name == "weights_only":
            optimizer = fsdp_worker.make_optimizer(model)
        fsdp_worker.run_steps(model, steps=range(state["step"], fsdp_worker.RESUME_STEPS), optimizer=optimizer)
        finals[name] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert _max_relative_diff(finals["resumed"], uninterrupted_one_process) <= 1e-5
    sharded_end = load_file(str(sharded_out / "resume" / "uninterrupted.safetensors"))
    assert _max_relative_diff(finals["resumed"], sharded_end) <= 1e-5
    assert _max_relative_diff(finals["weights_only"], uninterrupted_one_process) > 1e-3


def test_trainer_resume_loads_whole_tensors_into_shards(sharded):
    """`MoDTrainer._load_from_checkpoint` (what `--resume` calls) fills a freshly sharded model
    (every trainable parameter a `DTensor`) from an adapter of whole tensors, in both processes:
    gathered, every trained tensor equals the saved one exactly. Before, the MoD weights' copy
    failed (`aten.copy_.default got mixed torch.Tensor and DTensor`), as a plain `load_state_dict`
    of whole tensors still does unless inside `loading_whole_tensors`."""
    for name, arch, wrapping in fsdp_worker.RUNS:
        if wrapping != "modetune":
            continue
        for rank in (0, 1):
            load = sharded[rank][name]["trainer_load"]
            assert load["sharded"]
            assert "mixed torch.Tensor and DTensor" in load["plain_load"]["without"]
            assert load["plain_load"]["with_diff"] == 0.0
        load = sharded[0][name]["trainer_load"]  # the main process holds the gathered tensors
        assert load["tensors"] == sum(p.requires_grad for p in fsdp_worker.build(arch).parameters()) > 0
        assert load["max_diff"] == 0.0 and load["start_diff"] > 1e-3
