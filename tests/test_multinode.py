"""`modetune train` launched as 2 nodes x 1 process equals one process, and only rank 0 writes.

Two torchrun agents on this machine, started together, form the run as two nodes would
(`--nnodes 2 --nproc-per-node 1 --node-rank 0|1`, static rendezvous at `--master-addr
127.0.0.1 --master-port P`): each runs the real CLI (`python -m modetune.cli train`) in a folder of
its own with the same command line, as on two machines with their own disks (`--output-dir run`
resolves to a different folder on each), so what node rank 1 writes is seen apart from node rank 0's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modetune.cli import main
from train_helpers import FAULT_CLI, free_port, train_args

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
COMMON = ["--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--save-steps", "100"]


def _launch_two_nodes(model_dir: Path, cwd: dict[int, Path], *extra: str, env_extra: dict | None = None
                      ) -> dict[int, subprocess.CompletedProcess]:
    """Both node ranks' torchrun agents, started concurrently (``cwd``: each one's folder, the same
    for a shared disk); their results once both have ended."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    procs = {}
    for node in (0, 1):
        cwd[node].mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "static", "--master-addr", "127.0.0.1",
               "--master-port", str(port), FAULT_CLI, *train_args(model_dir, "run", *(extra or COMMON))]
        procs[node] = subprocess.Popen(cmd, cwd=cwd[node], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    results = {}
    try:
        for node, proc in procs.items():
            out, err = proc.communicate(timeout=600)
            results[node] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return results


def _logged(run: Path) -> list[dict]:
    return [row for row in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in row]


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _weights(adapter: Path) -> dict[str, torch.Tensor]:
    return {f"{name}:{key}": tensor for name in ("adapter_model.safetensors", "mod_model.safetensors")
            for key, tensor in load_file(str(adapter / name)).items()}


def test_two_nodes_equal_one_process_and_only_rank0_writes(tiny_model_dir, tmp_path):
    """3 steps of global batch 4 on 2 nodes x 1 process (micro batch 2, no accumulation) against 1
    process (micro batch 2, accumulation 2): the Trainer ran 2 processes making up batch 4. Every
    logged step equals the 1-process run's: loss and task loss (relative 1e-6; measured: bit for bit),
    gradient norm (relative 1e-5; measured 1.2e-7), distillation per member (absolute 1e-7 on values
    near 1e-3; measured 3.9e-8), and so does every tensor of the saved adapter (absolute 1e-5, a
    thousandth of one step's update at learning rate 1e-2; measured 2.1e-6, 3.1e-5 of the tensor's
    largest entry: Adam scales the rounding of near-zero gradients up). Node rank 0 wrote the whole run folder, node
    rank 1 (a folder of its own) only the checkpoint it resumes from, its own RNG state in it and no
    other process's; no `.staging` stays on either."""
    nodes = {0: tmp_path / "node0", 1: tmp_path / "node1"}
    results = _launch_two_nodes(tiny_model_dir, nodes)
    for node, result in results.items():
        assert result.returncode == 0, (node, result.stderr[-3000:])
    single = tmp_path / "single" / "run"
    assert main(train_args(tiny_model_dir, single, *COMMON)) == 0

    run = nodes[0] / "run"
    summary, reference = (json.loads((folder / "summary.json").read_text()) for folder in (run, single))
    assert (summary["processes"], summary["micro_batch_size"], summary["gradient_accumulation_steps"]) == (2, 2, 1)
    assert (reference["processes"], reference["micro_batch_size"], reference["gradient_accumulation_steps"]) == (1, 2, 2)
    assert summary["global_batch"] == reference["global_batch"] == 4
    assert "global batch 4 (2 process(es) x 2 x 1 accumulation)" in results[0].stdout
    assert "[modetune]" not in results[1].stdout  # node rank 1 prints no run line or summary

    got, want = _logged(run), _logged(single)
    assert [row["step"] for row in got] == [row["step"] for row in want] == [1, 2, 3]
    for a, b in zip(got, want):
        for key, tolerance in (("loss", {"rel": 1e-6}), ("task_loss", {"rel": 1e-6}), ("grad_norm", {"rel": 1e-5}),
                               ("distill_0", {"abs": 1e-7}), ("distill_1", {"abs": 1e-7})):
            assert a[key] == pytest.approx(b[key], **tolerance), key
    weights, expected = _weights(run / "adapter"), _weights(single / "adapter")
    assert weights.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(weights[key], tensor, rtol=0, atol=1e-5, msg=key)
    assert any("lora_B" in key and tensor.abs().max() > 0 for key, tensor in weights.items())  # trained

    written = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert {"log.jsonl", "summary.json", "adapter/adapter_model.safetensors", "adapter/mod_model.safetensors",
            "checkpoint-3/trainer_state.json", "checkpoint-3/rng_state_0.pth"} <= written
    assert not any("rng_state_1" in name or "staging" in name for name in written)
    checkpoint = {name for name in written if name.startswith("checkpoint-3/")}
    assert _files(nodes[1]) == {f"run/{name}".replace("rng_state_0", "rng_state_1") for name in checkpoint}


RESUME = ["--max-steps", "4", "--batch-size", "4", "--micro-batch-size", "2", "--save-steps", "2", "--lora-dropout", "0.1"]


def test_two_nodes_killed_in_a_save_resume_from_their_own_folders_to_the_uninterrupted_run(tiny_model_dir,
                                                                                            tmp_path):
    """4 steps on 2 nodes x 1 process, checkpoints at steps 2 and 4, dropout on (each process's
    restored RNG state matters). Uninterrupted, on one folder both nodes share; then killed
    (``kill-save:4``: SIGKILL in every process inside checkpoint 4's save, its weights written) with
    each node on a folder of its own, and resumed there (``--resume`` on both): every logged step
    equals the uninterrupted run's bit for bit (measured: the adapter too; asserted within the
    first test's 1e-5). Each node's folder holds a complete ``checkpoint-2`` to resume from (node
    rank 1's with its own RNG state), the killed save's ``.staging`` is cleared at the resume on both,
    and at the end no ``.staging`` or other process's file is left: the shared checkpoint holds
    both RNG states, node rank 1's folder only its checkpoints."""
    shared = tmp_path / "shared"
    for node, result in _launch_two_nodes(tiny_model_dir, {0: shared, 1: shared}, *RESUME).items():
        assert result.returncode == 0, (node, result.stderr[-3000:])
    want = shared / "run"
    assert {"checkpoint-4/rng_state_0.pth", "checkpoint-4/rng_state_1.pth"} <= _files(want)
    assert not any("staging" in name for name in _files(want))

    nodes = {0: tmp_path / "node0", 1: tmp_path / "node1"}
    killed = _launch_two_nodes(tiny_model_dir, nodes, *RESUME, env_extra={"MODETUNE_TEST_FAULT": "kill-save:4"})
    assert all(result.returncode != 0 for result in killed.values())
    for node in (0, 1):
        left = _files(nodes[node] / "run")
        assert f"checkpoint-2/rng_state_{node}.pth" in left and "checkpoint-2/trainer_state.json" in left, left
        assert any(name.startswith(".staging/checkpoint-4/") for name in left), left  # a leftover to clear
        assert "checkpoint-4/trainer_state.json" not in left and "summary.json" not in left

    resumed = _launch_two_nodes(tiny_model_dir, nodes, *RESUME, "--resume")
    for node, result in resumed.items():
        assert result.returncode == 0, (node, result.stderr[-3000:])
    run = nodes[0] / "run"
    assert f"removed {Path('run', '.staging')}, the partial checkpoint" in resumed[0].stdout  # node rank 1: at its save
    assert [(row["step"], row["loss"], row["task_loss"]) for row in _logged(run)] == \
        [(row["step"], row["loss"], row["task_loss"]) for row in _logged(want)]
    assert [row["step"] for row in _logged(run)] == [1, 2, 3, 4]
    weights, expected = _weights(run / "adapter"), _weights(want / "adapter")
    assert weights.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(weights[key], tensor, rtol=0, atol=1e-5, msg=key)
    for key, tensor in _weights(nodes[1] / "run" / "checkpoint-4").items():  # node rank 1's copy: the same
        torch.testing.assert_close(tensor, weights[key], rtol=0, atol=0, msg=key)

    written = _files(run)
    assert not any("staging" in name or "rng_state_1" in name for name in written)
    checkpoints = {name for name in written if name.startswith("checkpoint-")}
    assert {name.split("/")[0] for name in checkpoints} == {"checkpoint-2", "checkpoint-4"}
    assert _files(nodes[1] / "run") == {name.replace("rng_state_0", "rng_state_1") for name in checkpoints}
