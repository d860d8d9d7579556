"""The 7B cost of MoD, measured: LLaMA-7B shapes in bf16 with random weights, truncated depth.

At hidden 4096, intermediate 11008, 32 heads, vocabulary 32000, bf16 weights, one batch
of 1 x 256 tokens: the training-step time and peak memory of ``lora_notk``,
``lora_notk_mod`` (lambda 1) and lambda 0, measured on models of two depths (default 4 and
6 decoder layers: k = 3 members need at least 4), each variant in its own process
(benchmarks/bench_core.py). Costs are linear in depth: with LoRA on layers 0..L-4 and the
last 3 (member) layers frozen in every variant, ``t(L) = fixed + (L - 3) * per_layer``,
where ``fixed`` holds the embeddings, the 3 member layers and the head/loss. From the two
depths: ``per_layer = (t(L2) - t(L1)) / (L2 - L1)``, ``fixed = t(L1) - (L1 - 3) * per_layer``,
projected ``t(32) = fixed + 29 * per_layer``; memory likewise. Greedy generation
(tokens/s, MoD vs base, batch 1) is projected the same way from the time per token.

    python benchmarks/bench_7b.py [--depths 4,6] [--json out.json]   # on an idle machine
    python benchmarks/bench_7b.py --tiny                             # the same code at a tiny shape (tests)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ["lora_notk", "lora_notk_mod", "lora_notk_mod_lambda0"]
FULL_DEPTH, K = 32, 3


def measure_depth(layers: int, args) -> dict:
    """bench_core at one depth: ``{"train": {variant: ...}, "generation": {...}}``."""
    out = Path(args.workdir) / f"depth{layers}.json"
    cmd = [sys.executable, str(HERE / "bench_core.py"), "--model", "random", "--shape", args.shape,
           "--layers", str(layers), "--dtype", args.dtype, "--device", args.device, "--batch", "1",
           "--length", str(args.tokens), "--variants", ",".join(VARIANTS), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--skip-floor", "--gen-batches", "1", "--gen-rounds", "1",
           "--gen-repeats", str(args.gen_repeats), "--new-tokens", str(args.new_tokens), "--json", str(out),
           *(["--in-process"] if args.tiny else [])]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def project(values: dict[int, float], depth: int = FULL_DEPTH) -> dict:
    """Split ``{layers: cost}`` (two depths) into ``fixed`` + ``per_layer`` x LoRA layers; project to ``depth``."""
    (l1, c1), (l2, c2) = sorted(values.items())
    per_layer = (c2 - c1) / (l2 - l1)
    fixed = c1 - (l1 - K) * per_layer
    return {"per_layer": per_layer, "fixed": fixed, "projected": fixed + (depth - K) * per_layer}


def analyse(by_depth: dict[int, dict]) -> dict:
    """Per-variant time and memory split and projected to 32 layers; generation likewise."""
    result = {"train": {}, "generation": {}}
    for variant in VARIANTS:
        result["train"][variant] = {
            "step_s": project({d: r["train"][variant]["step_s"] for d, r in by_depth.items()}),
            "peak_mib": project({d: r["train"][variant]["peak_mib"] for d, r in by_depth.items()}),
        }
    for which in ("base", "mod"):  # seconds per generated token are linear in depth
        per_token = {d: 1.0 / r["generation"][f"{which}-1"][0] for d, r in by_depth.items()}
        split = project(per_token)
        result["generation"][which] = {**split, "tokens_per_s": 1.0 / split["projected"]}
    return result


def markdown(result: dict, depths: list[int], spec: str) -> str:
    ref = result["train"]["lora_notk"]
    rows = [f"LLaMA-7B shapes ({spec}), measured at depths {depths}, projected to {FULL_DEPTH} layers", "",
            "| variant | per LoRA layer (s) | embeddings + 3 member layers + head/loss (s) | step at 32 layers (s) "
            "| vs lora_notk | peak memory at 32 layers (MiB) | vs lora_notk |", "|---|---|---|---|---|---|---|"]
    for name, r in result["train"].items():
        t, m = r["step_s"], r["peak_mib"]
        rows.append(f"| {name} | {t['per_layer']:.4f} | {t['fixed']:.4f} | {t['projected']:.3f} | "
                    f"{t['projected'] / ref['step_s']['projected']:.3f}x | {m['projected']:.0f} | "
                    f"{m['projected'] / ref['peak_mib']['projected']:.3f}x |")
    gen = result["generation"]
    rows += ["", "| greedy generation, batch 1 | base | MoD | MoD / base |", "|---|---|---|---|",
             f"| tokens/s at 32 layers (projected) | {gen['base']['tokens_per_s']:.2f} | "
             f"{gen['mod']['tokens_per_s']:.2f} | {gen['mod']['tokens_per_s'] / gen['base']['tokens_per_s']:.3f}x |"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="4,6", help="two decoder depths >= 4 (k = 3 members)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens of the one training batch")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--gen-repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, one step: checks the script itself")
    parser.add_argument("--workdir", default="runs/bench_7b", help="per-depth results go here")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    args.shape = "tiny" if args.tiny else "llama7b"
    if args.tiny:
        args.tokens, args.steps, args.warmup, args.new_tokens, args.gen_repeats = 32, 1, 0, 4, 1
    depths = [int(d) for d in args.depths.split(",")]
    if len(depths) != 2 or min(depths) <= K or depths[0] == depths[1]:
        parser.error(f"--depths takes two different depths above k = {K} (e.g. 4,6)")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    by_depth = {d: measure_depth(d, args) for d in depths}
    result = analyse(by_depth)
    result["markdown"] = markdown(result, depths, f"{args.shape}, {args.dtype}, {args.device}, 1 x {args.tokens} tokens")
    result["by_depth"] = by_depth
    print(result["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
