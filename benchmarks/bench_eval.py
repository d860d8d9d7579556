"""Evaluation throughput: batched greedy generation against batch size 1, same items, same outputs.

Runs ``modetune.eval.runner.evaluate`` (the real pipeline: sorting, generation, scoring, JSONL
writing) twice on the first ``--n`` items of a dataset with the default model: once with
``--batch-size`` (default 16) and once with batch size 1, and compares items/s and the
responses. Target: batch 16 reaches >= 4x the items/s of batch 1 with identical outputs.

    .venv/bin/python benchmarks/bench_eval.py --n 32 --max-new-tokens 64 --threads 1

Data: the packaged ``math-split/gsm8k/test.json`` by default (``--data``). Prints a
markdown table; ``--output FILE`` also writes it. Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from modetune.data.packaged import MATH_SPLIT

DEFAULT_DATA = MATH_SPLIT / "gsm8k" / "test.json"


def run(model, tokenizer, records, batch_size: int, max_new_tokens: int, out: Path) -> tuple[float, list[dict]]:
    from modetune.eval.results import read_results
    from modetune.eval.runner import EvalConfig, evaluate

    config = EvalConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False)
    start = time.perf_counter()
    evaluate(model, tokenizer, [("gsm8k", records)], config, out, info={"model": "default"})
    seconds = time.perf_counter() - start
    return seconds, read_results(out / "gsm8k.jsonl")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="items (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="an LLM-Adapters test.json (numeric answers)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--output", help="also write the markdown result here")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        print(f"bench_eval: {args.data} not found; nothing to measure.")
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from modetune.eval.sources import load_test_items
    from modetune.loading import load_source

    model, tokenizer, _ = load_source(args.model)
    records = load_test_items("gsm8k", path=args.data)[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        t_batch, rows_batch = run(model, tokenizer, records, args.batch_size, args.max_new_tokens, Path(tmp, "b"))
        t_one, rows_one = run(model, tokenizer, records, 1, args.max_new_tokens, Path(tmp, "one"))
    same = sum(a["response"] == b["response"] for a, b in zip(rows_batch, rows_one))
    ratio = t_one / t_batch
    ok = ratio >= 4.0 and same == len(records)
    acc = sum(r["correct"] for r in rows_batch) / len(rows_batch)
    lines = [
        f"Evaluation throughput: {args.model} model, {len(records)} items of {Path(args.data).parent.name}, "
        f"greedy, max_new_tokens={args.max_new_tokens}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}",
        "",
        "| batch size | seconds | items/s |",
        "|---:|---:|---:|",
        f"| 1 | {t_one:.1f} | {len(records) / t_one:.2f} |",
        f"| {args.batch_size} | {t_batch:.1f} | {len(records) / t_batch:.2f} |",
        "",
        f"speed-up {ratio:.2f}x (target >= 4x); identical responses {same}/{len(records)}; "
        f"accuracy {100 * acc:.1f}%: {'PASS' if ok else 'FAIL'}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(json.dumps({"items": len(records), "seconds_batch1": round(t_one, 2), "seconds_batched": round(t_batch, 2),
                      "speedup": round(ratio, 2), "identical": same}), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
