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
from train_helpers import free_port, train_args

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
COMMON = ["--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--save-steps", "100"]


def _launch_two_nodes(model_dir: Path, cwd: dict[int, Path]) -> dict[int, subprocess.CompletedProcess]:
    """Both node ranks' torchrun agents, started concurrently; their results once both have ended."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    procs = {}
    for node in (0, 1):
        cwd[node].mkdir(parents=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "static", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "modetune.cli", *train_args(model_dir, "run", *COMMON)]
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
    rank 1 only its own RNG state, which the Trainer saves per process in the checkpoint it writes
    at the end (`.staging/checkpoint-3/rng_state_1.pth`: in `checkpoint-3` when the folder is shared)."""
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
    assert not any("rng_state_1" in name for name in written)
    assert {p.relative_to(nodes[1]).as_posix() for p in nodes[1].rglob("*") if p.is_file()} == {
        "run/.staging/checkpoint-3/rng_state_1.pth"}
