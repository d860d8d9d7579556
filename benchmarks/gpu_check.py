"""The one-command GPU acceptance check (run it through ``bash benchmarks/gpu_check.sh``).

On CUDA, in under 10 minutes on one H200-class GPU, it runs:
1. ``tests``: the tests marked ``device`` on CUDA (loss equivalence in float32 and bf16,
   generation equal to the base path, save/load);
2. ``train``: a 30-step bf16 ``modetune train`` of the default job;
3. ``bench_default``: benchmarks/bench_core.py on the default model in bf16 (step time and
   peak memory of lora_notk, lora_notk_mod, lambda 0; the floor; generation tokens/s);
4. ``bench_7b``: the same at LLaMA-7B shapes, random bf16 weights, all 32 layers;
5. ``train_fsdp``: 5 steps of the default job through the HF Trainer's FSDP2 path, ``accelerate
   launch --config_file configs/accelerate_fsdp.yaml -m modetune.cli train`` on every GPU;
6. ``train_zero3``: the same through DeepSpeed ZeRO-3, ``accelerate launch --use_deepspeed
   --deepspeed_config_file configs/deepspeed_zero3.json`` (skipped where DeepSpeed is not installed:
   ``modetune[deepspeed]``); both check that the adapter was saved and ``MoDModel.from_pretrained`` loads it.

It writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` and prints every stage it skipped
and why. It installs nothing. ``GPU_CHECK_TINY=1`` runs the same stages in a tiny CPU
setting (a tiny random model, one step each): the test suite runs that, so it cannot rot. There
the two sharded launches are expected to be refused: on CPU accelerate drops FSDP and DeepSpeed,
and ``modetune train`` says so instead of training unsharded (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = "lora_notk,lora_notk_mod,lora_notk_mod_lambda0"
# stage: seconds it may take on the GPU (the sum stays under 10 minutes)
BUDGET = {"tests": 80, "train": 100, "bench_default": 130, "bench_7b": 200, "train_fsdp": 45, "train_zero3": 45}
# the sharded launches: (label in modetune's refusal, accelerate launch arguments)
LAUNCH = {"train_fsdp": ("FSDP", ["--config_file", str(ROOT / "configs" / "accelerate_fsdp.yaml")]),
          "train_zero3": ("DeepSpeed", ["--use_deepspeed", "--deepspeed_config_file",
                                        str(ROOT / "configs" / "deepspeed_zero3.json")])}
MIN_7B_GIB = 40  # 7B bf16 weights (13.5 GB) + LoRA optimizer state + activations, with room to spare


def _run(cmd: list[str], timeout: float, cwd: Path = ROOT) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return out.returncode, (out.stdout + out.stderr)[-4000:]


def _default_model_available() -> str | None:
    """``None`` when the embedded default model can be loaded, else why not."""
    try:
        from modetune.utils.models import default_model_path

        default_model_path()
    except Exception as error:  # noqa: BLE001 (any reason is reported, not raised)
        return f"the default model is not available ({type(error).__name__}: {str(error).splitlines()[0]})"
    return None


def _tiny_model_dir(out: Path) -> Path:
    """A tiny random Llama with the default model's tokenizer (the tiny setting's 'default job')."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from modetune.utils.models import default_model_path

    path = out / "tiny-model"
    if not (path / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
        LlamaForCausalLM(config).save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
    return path


def stage_tests(device: str, out: Path, tiny: bool) -> dict:
    code, text = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "device",
                       "--device", device, "tests/test_device.py"], BUDGET["tests"])
    summary = [line for line in text.splitlines() if " passed" in line or " failed" in line or " error" in line]
    return {"status": "ok" if code == 0 else "failed", "summary": summary[-1] if summary else text[-500:]}


def _train_command(run_dir: Path, out: Path, tiny: bool, steps: int) -> list[str]:
    """``-m modetune.cli train ...``: the default job for ``steps`` steps (tiny: a tiny model, 3 steps)."""
    if tiny:
        extra = ["--model", str(_tiny_model_dir(out)), "--max-steps", "3", "--batch-size", "4", "--micro-batch-size",
                 "2", "--cutoff-len", "64", "--data", "builtin:arithmetic:24", "--val-size", "4", "--lora-r", "4"]
    else:
        extra = ["--max-steps", str(steps)]
    return ["-m", "modetune.cli", "train", "--bf16", "--output-dir", str(run_dir), "--report-to", "none",
            "--save-steps", "1000", *extra]


def stage_train(device: str, out: Path, tiny: bool) -> dict:
    run_dir = out / "train"
    code, text = _run([sys.executable, *_train_command(run_dir, out, tiny, 30)], BUDGET["train"])
    if code != 0:
        return {"status": "failed", "summary": text[-1500:]}
    return _trained(run_dir)


def _trained(run_dir: Path) -> dict:
    """What a finished ``modetune train`` left: its logged losses and the adapter."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    summary = json.loads((run_dir / "summary.json").read_text())
    adapter = (run_dir / "adapter" / "mod_model.safetensors").exists()
    return {"status": "ok" if adapter and losses else "failed", "steps": len(losses), "first_loss": losses[0],
            "last_loss": losses[-1], "adapter_saved": adapter,
            "summary": f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                       f"{float(summary.get('seconds', 0)):.0f} s of training"}


def _sharded(name: str, out: Path, tiny: bool) -> dict:
    """``accelerate launch`` (every GPU; FSDP2 or ZeRO-3) of 5 training steps; the adapter must load.
    In the tiny CPU setting the launch must be refused by ``modetune train`` (accelerate would drop
    the sharding on CPU)."""
    import torch

    label, launch = LAUNCH[name]
    run_dir = out / name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = 1 if tiny else torch.cuda.device_count()
    code, text = _run([sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", str(processes),
                       "--main_process_port", str(port), *_train_command(run_dir, out, tiny, 5)], BUDGET[name])
    if tiny:
        refused = code != 0 and f"{label} through accelerate needs GPUs" in text
        return {"status": "refused-as-expected" if refused else "failed",
                "summary": f"on CPU modetune train refuses the {label} launch (accelerate would not shard)"
                if refused else text[-1500:]}
    if code != 0:
        return {"status": "failed", "summary": text[-1500:]}
    result = _trained(run_dir)
    try:
        from transformers import AutoModelForCausalLM

        from modetune.mod.model import MoDModel
        from modetune.utils.models import default_model_path

        MoDModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(default_model_path())), run_dir / "adapter")
    except Exception as error:  # noqa: BLE001 (reported, not raised)
        return {**result, "status": "failed", "summary": f"the adapter does not load: {type(error).__name__}: {error}"}
    return {**result, "processes": processes, "summary": f"{processes} GPU(s); {result['summary']}; the adapter loads"}


def stage_train_fsdp(device: str, out: Path, tiny: bool) -> dict:
    return _sharded("train_fsdp", out, tiny)


def stage_train_zero3(device: str, out: Path, tiny: bool) -> dict:
    return _sharded("train_zero3", out, tiny)


def _bench(name: str, args: list[str], out: Path) -> dict:
    path = out / f"{name}.json"
    code, text = _run([sys.executable, str(HERE / "bench_core.py"), *args, "--json", str(path)], BUDGET[name])
    if code != 0:
        return {"status": "failed", "summary": text[-1500:]}
    result = json.loads(path.read_text())
    return {"status": "ok", "result": result, "summary": "see the table below"}


def stage_bench_default(device: str, out: Path, tiny: bool) -> dict:
    if tiny:  # the tiny setting stands in a tiny random model for the default one
        args = ["--model", "random", "--shape", "tiny", "--dtype", "bfloat16", "--steps", "1", "--warmup", "0",
                "--batch", "2", "--length", "32", "--gen-batches", "1", "--gen-rounds", "1", "--gen-repeats", "1",
                "--new-tokens", "4", "--in-process"]
    else:
        args = ["--dtype", "bfloat16", "--steps", "5", "--warmup", "2", "--gen-rounds", "1"]
    return _bench("bench_default", ["--device", device, "--variants", VARIANTS, *args], out)


def stage_bench_7b(device: str, out: Path, tiny: bool) -> dict:
    if tiny:
        args = ["--shape", "tiny", "--layers", "4", "--steps", "1", "--warmup", "0", "--batch", "2", "--length", "32",
                "--gen-batches", "1", "--gen-rounds", "1", "--gen-repeats", "1", "--new-tokens", "4", "--skip-floor",
                "--in-process"]
    else:
        args = ["--shape", "llama7b", "--steps", "3", "--warmup", "1", "--gen-batches", "1", "--gen-rounds", "1",
                "--gen-repeats", "2", "--new-tokens", "32"]
    return _bench("bench_7b", ["--model", "random", "--dtype", "bfloat16", "--device", device, "--variants", VARIANTS,
                               *args], out)


def skips(device: str, tiny: bool) -> dict[str, str]:
    """Stages that cannot run here, with the reason."""
    import torch

    reasons = {}
    missing = _default_model_available()
    if missing:
        reasons["train"] = reasons["train_fsdp"] = reasons["train_zero3"] = missing
        if not tiny:
            reasons["bench_default"] = missing
    try:
        import deepspeed  # noqa: F401
    except Exception as error:  # noqa: BLE001 (any reason is reported, not raised)
        reasons.setdefault("train_zero3", f"DeepSpeed cannot be imported ({type(error).__name__}); "
                                          "pip install 'modetune[deepspeed]' (see pyproject.toml)")
    if not tiny:
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        if gib < MIN_7B_GIB:
            reasons["bench_7b"] = f"the GPU has {gib:.0f} GiB; LLaMA-7B shapes at full depth need about {MIN_7B_GIB}"
    return reasons


STAGES = {"tests": stage_tests, "train": stage_train, "bench_default": stage_bench_default, "bench_7b": stage_bench_7b,
          "train_fsdp": stage_train_fsdp, "train_zero3": stage_train_zero3}


def markdown(report: dict) -> str:
    rows = [f"# GPU acceptance check ({report['setting']}, {report['device_name']})", "",
            "| stage | status | seconds | summary |", "|---|---|---|---|"]
    for name, stage in report["stages"].items():
        text = str(stage.get("summary", stage.get("reason", ""))).replace("\n", " ").replace("|", "/")[:300]
        rows.append(f"| {name} | {stage['status']} | {stage.get('seconds', 0):.0f} | {text} |")
    for name in ("bench_default", "bench_7b"):
        stage = report["stages"].get(name, {})
        if stage.get("status") == "ok":
            rows += ["", f"## {name}", "", stage["result"]["markdown"]]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu_check", help="folder of gpu_check.json / gpu_check.md")
    parser.add_argument("--only", help="comma-separated stages to run (default: all)")
    args = parser.parse_args(argv)
    import torch

    tiny = os.environ.get("GPU_CHECK_TINY", "") not in ("", "0")
    if not tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing checked (GPU_CHECK_TINY=1 runs the tiny CPU setting)")
        return 1
    device = "cpu" if tiny else "cuda"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"setting": "tiny CPU setting" if tiny else "CUDA", "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(0) if not tiny else "cpu", "stages": {}}
    wanted = args.only.split(",") if args.only else list(STAGES)
    reasons = skips(device, tiny)
    for name in STAGES:
        if name not in wanted:
            reasons.setdefault(name, "not asked for (--only)")
        if name in reasons:
            print(f"gpu_check: SKIPPED {name}: {reasons[name]}", flush=True)
            report["stages"][name] = {"status": "skipped", "reason": reasons[name]}
            continue
        print(f"gpu_check: {name} ...", flush=True)
        started = time.perf_counter()
        result = STAGES[name](device, out, tiny)
        result["seconds"] = time.perf_counter() - started
        report["stages"][name] = result
        print(f"gpu_check: {name} {result['status']} in {result['seconds']:.0f} s", flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    passed = ("ok", "skipped", "refused-as-expected") if tiny else ("ok", "skipped")
    return 0 if all(s["status"] in passed for s in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
