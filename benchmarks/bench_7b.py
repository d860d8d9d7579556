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
           "--length", str(args.tokens), "--variants", ",".join(VARIANTS), "--steps", str(args.steps), "--rounds", "3",
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
    result["shared"] = {
        "train": shared_projection({v: {d: r["train"][v]["step_s"] for d, r in by_depth.items()} for v in VARIANTS}),
        "generation": shared_projection({w: {d: 1.0 / r["generation"][f"{w}-1"][0] for d, r in by_depth.items()}
                                         for w in ("base", "mod")}),
    }
    return result


def shared_projection(costs: dict[str, dict[int, float]], depth: int = FULL_DEPTH) -> dict:
    """The variants differ only above the body (LoRA layers are the same in each), so one
    per-layer cost serves them all: ``per_layer`` is the mean of the variants' own slopes (each
    a noisy estimate of it), each variant's ``fixed`` the mean over depths of
    ``t(L) - (L - 3) per_layer``, projected ``fixed + (depth - 3) per_layer``. Sturdier than a
    line per variant when two short timings carry seconds of noise."""
    slopes = [project(values)["per_layer"] for values in costs.values()]
    per_layer = sum(slopes) / len(slopes)
    out = {"per_layer": per_layer, "variants": {}}
    for name, values in costs.items():
        fixed = sum(c - (layers - K) * per_layer for layers, c in values.items()) / len(values)
        out["variants"][name] = {"fixed": fixed, "projected": fixed + (depth - K) * per_layer}
    return out


def markdown(result: dict, depths: list[int], spec: str, by_depth: dict[int, dict] | None = None) -> str:
    ref = result["train"]["lora_notk"]
    rows = [f"LLaMA-7B shapes ({spec}), measured at depths {depths}, projected to {FULL_DEPTH} layers", ""]
    if by_depth:
        rows += ["Measured (median step, s; peak RSS, MiB):", "",
                 "| depth | " + " | ".join(VARIANTS) + " | " + " | ".join(f"{v} vs lora_notk" for v in VARIANTS[1:])
                 + " | peak MiB (" + ", ".join(VARIANTS) + ") |", "|---" * (2 * len(VARIANTS) + 1) + "|"]
        for d, r in sorted(by_depth.items()):
            t = {v: r["train"][v]["step_s"] for v in VARIANTS}
            rows.append(f"| {d} | " + " | ".join(f"{t[v]:.2f}" for v in VARIANTS) + " | "
                        + " | ".join(f"{t[v] / t['lora_notk']:.3f}x ({t[v] - t['lora_notk']:+.2f} s)"
                                     for v in VARIANTS[1:])
                        + " | " + ", ".join(f"{r['train'][v]['peak_mib']:.0f}" for v in VARIANTS) + " |")
        rows.append("")
    shared = result["shared"]["train"]
    base = shared["variants"]["lora_notk"]["projected"]
    rows += [f"Projected to {FULL_DEPTH} layers with one per-layer cost for every variant "
             f"({shared['per_layer']:.3f} s per LoRA layer, the mean of the variants' slopes):", "",
             "| variant | head, loss and fixed part (s) | step at 32 layers (s) | vs lora_notk |", "|---|---|---|---|"]
    for name, v in shared["variants"].items():
        rows.append(f"| {name} | {v['fixed']:.3f} | {v['projected']:.2f} | {v['projected'] / base:.3f}x |")
    gen = result["shared"]["generation"]["variants"]
    rows += ["", f"Greedy generation, batch 1, projected the same way: base {1 / gen['base']['projected']:.2f} tokens/s, "
             f"MoD {1 / gen['mod']['projected']:.2f} tokens/s "
             f"({gen['base']['projected'] / gen['mod']['projected']:.3f}x).", "",
             "A line per variant (each with its own per-layer cost; noisier):", "",
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
    parser.add_argument("--reanalyse", action="store_true", help="analyse the depth<L>.json files already in --workdir")
    args = parser.parse_args(argv)
    args.shape = "tiny" if args.tiny else "llama7b"
    if args.tiny:
        args.tokens, args.steps, args.warmup, args.new_tokens, args.gen_repeats = 32, 1, 0, 4, 1
    depths = [int(d) for d in args.depths.split(",")]
    if len(depths) != 2 or min(depths) <= K or depths[0] == depths[1]:
        parser.error(f"--depths takes two different depths above k = {K} (e.g. 4,6)")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.reanalyse:  # the measurements already in --workdir (depth<L>.json), analysed again
        by_depth = {d: json.loads((Path(args.workdir) / f"depth{d}.json").read_text()) for d in depths}
    else:
        by_depth = {d: measure_depth(d, args) for d in depths}
    result = analyse(by_depth)
    result["markdown"] = markdown(result, depths, f"{args.shape}, {args.dtype}, {args.device}, 1 x {args.tokens} tokens",
                                  by_depth)
    result["by_depth"] = by_depth
    print(result["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
