"""The GPU acceptance check and the 7B benchmark, run in their tiny CPU settings so that they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
VARIANTS = ["lora_notk", "lora_notk_mod", "lora_notk_mod_lambda0"]


def _env():
    src = str(ROOT / "src")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable, "GPU_CHECK_TINY": "1",
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_gpu_check_tiny_setting_runs_every_stage(tmp_path, default_model_dir):
    out = tmp_path / "check"
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(out)], cwd=tmp_path,
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["setting"] == "tiny CPU setting"
    # on CPU the FSDP2 and ZeRO-3 launches must be refused by `modetune train` (accelerate would drop them)
    assert {name: stage["status"] for name, stage in report["stages"].items()} == {
        **dict.fromkeys(["tests", "train", "bench_default", "bench_7b"], "ok"),
        **dict.fromkeys(["train_fsdp", "train_zero3"], "refused-as-expected")}
    assert " passed" in report["stages"]["tests"]["summary"] and "failed" not in report["stages"]["tests"]["summary"]
    assert report["stages"]["train"]["steps"] == 3 and report["stages"]["train"]["adapter_saved"]
    for name in ("bench_default", "bench_7b"):
        bench = report["stages"][name]["result"]
        assert list(bench["train"]) == VARIANTS
        assert all(r["step_s"] > 0 and r["peak_mib"] > 0 for r in bench["train"].values())
        assert set(bench["generation"]) == {"base-1", "mod-1"}
    table = (out / "gpu_check.md").read_text()
    assert "| bench_7b | ok |" in table and "lora_notk_mod_lambda0" in table
    assert "| train_zero3 | refused-as-expected |" in table and "refuses the DeepSpeed launch" in table


def test_gpu_check_without_cuda_says_so(tmp_path):
    env = {**_env(), "GPU_CHECK_TINY": "0", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "no CUDA device here; nothing checked" in result.stdout


def test_bench_7b_tiny_projects_to_32_layers(tmp_path):
    out = tmp_path / "b7.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_7b.py"), "--tiny", "--workdir",
                             str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True, env=_env(),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert sorted(data["by_depth"]) == ["4", "6"]
    for variant in VARIANTS:
        for measure in ("step_s", "peak_mib"):
            split = data["train"][variant][measure]
            measured = {int(d): r["train"][variant][measure] for d, r in data["by_depth"].items()}
            # the split reproduces both measurements, and the projection extends the same line
            for depth, value in measured.items():
                assert split["fixed"] + (depth - 3) * split["per_layer"] == pytest.approx(value, rel=1e-9)
            assert split["projected"] == pytest.approx(split["fixed"] + 29 * split["per_layer"], rel=1e-9)
    for which in ("base", "mod"):  # seconds per token, split and projected the same way (tiny timings are noise)
        gen = data["generation"][which]
        per_token = {int(d): 1 / r["generation"][f"{which}-1"][0] for d, r in data["by_depth"].items()}
        for depth, value in per_token.items():
            assert gen["fixed"] + (depth - 3) * gen["per_layer"] == pytest.approx(value, rel=1e-9)
        assert gen["tokens_per_s"] == pytest.approx(1 / (gen["fixed"] + 29 * gen["per_layer"]), rel=1e-9)
    shared = data["shared"]["train"]  # one per-layer cost (the mean slope), a fixed part per variant
    slopes = [data["train"][v]["step_s"]["per_layer"] for v in VARIANTS]
    assert shared["per_layer"] == pytest.approx(sum(slopes) / len(slopes), rel=1e-9)
    for variant in VARIANTS:
        measured = {int(d): r["train"][variant]["step_s"] for d, r in data["by_depth"].items()}
        fixed = sum(t - (d - 3) * shared["per_layer"] for d, t in measured.items()) / 2
        assert shared["variants"][variant]["projected"] == pytest.approx(fixed + 29 * shared["per_layer"], rel=1e-9)
    assert "projected to 32 layers" in data["markdown"] and "one per-layer cost" in data["markdown"]
    # --reanalyse reads the measurements back and gives the same analysis
    again = tmp_path / "again.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_7b.py"), "--tiny", "--reanalyse", "--workdir",
                    str(tmp_path / "work"), "--json", str(again)], check=True, capture_output=True, env=_env())
    assert json.loads(again.read_text())["shared"] == data["shared"]
