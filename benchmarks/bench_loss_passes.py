"""Element-wise cost of the fused MoD loss per chunk: the current code against a baseline revision.

One process, the same random inputs at the default model's shape (``n`` = chunk_size tokens,
``d`` = 576, ``V`` = 49152, ``k`` = 3, float32, the default MoDConfig: reverse KL, detached
teacher, tau = 1). Each repetition times, in a rotating order so that the machine's state is
shared: the baseline's per-chunk function (``losses._chunk_grads`` of ``--baseline-rev``, read
with ``git show``), the current one at each ``--row-blocks`` setting, and the head projections
alone (``k`` forward and ``k`` input-gradient backward, the floor's count in bench_core.py).
The element-wise time of a variant is its chunk time minus the projections' time of the same
repetition, reported in ms per 1,024 tokens (median and range over repetitions).

    OMP_NUM_THREADS=1 python benchmarks/bench_loss_passes.py [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REV = "79212f7745a2dd3d5c5a6bae0af53eea6d6d6f7e"  # main before the row-blocked element-wise passes


def load_baseline(rev: str):
    """``modetune.mod.losses`` as it was at git revision ``rev``, imported beside the current package."""
    import modetune

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/modetune/losses.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "losses_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("modetune._losses_baseline", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = modetune.__name__  # its relative imports resolve to the current package
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per chunk (the default chunk_size)")
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--row-blocks", default="0,256",
                        help="MoDConfig.row_block settings of the current code, comma-separated (0 = automatic)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the baseline ('' = none)")
    parser.add_argument("--skip-chunk", action="store_true", help="time the element-wise part only")
    parser.add_argument("--json", help="also write the results here")
    return parser


def _timed(fn, inputs) -> tuple[float, float]:
    """``(wall seconds, this thread's CPU seconds)`` of ``fn(inputs)``; CPU time leaves out the time
    the scheduler gave the other processes on a busy machine."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn(inputs)
    return time.perf_counter() - wall, time.thread_time() - cpu


def _tasks(args, baseline) -> dict:
    """``name -> (prepare, run)``: ``prepare()`` makes fresh inputs (untimed), ``run(inputs)`` is timed."""
    import torch

    from modetune.mod.config import MoDConfig
    from modetune.mod.logit_grads import logit_grads, row_block_size
    from modetune.mod.losses import HeadSpec, _chunk_grads

    torch.manual_seed(0)
    n, d, V, k = args.tokens, args.hidden, args.vocab, args.k
    head = HeadSpec(torch.randn(V, d) * d**-0.5)
    zs = [torch.randn(n, d) for _ in range(k)]
    weights = torch.softmax(torch.randn(n, k), -1)
    labels = torch.randint(0, V, (n,))
    logits = [head.logits(z) for z in zs]
    fresh = lambda: [lg.clone() for lg in logits]  # noqa: E731 (the element-wise code consumes its logits)
    tasks = {}
    if baseline is not None:
        config = MoDConfig(k=k, chunk_size=n)

        def old_elementwise(ls):  # the baseline's [n, V] passes: its two functions without their projections
            baseline._task_grads(zs, ls, weights, labels, head, 1.0 / n, False)
            baseline._distill_grads(k, ls, labels, head.weight, config, 1.0 / n, None, False)

        tasks["elementwise/baseline"] = (fresh, old_elementwise)
        if not args.skip_chunk:
            tasks["chunk/baseline"] = (list, lambda _: baseline._chunk_grads(zs, weights, labels, head, config,
                                                                              1.0 / n, True, True))
    for block in [int(b) for b in args.row_blocks.split(",")]:
        config = MoDConfig(k=k, chunk_size=n, row_block=block)
        rows = row_block_size(config, n, labels.device)
        tasks[f"elementwise/row_block={block}"] = (
            fresh, lambda ls, config=config, rows=rows: logit_grads(ls, weights, labels, config, None, True, True, rows))
        if not args.skip_chunk:
            tasks[f"chunk/row_block={block}"] = (
                list, lambda _, config=config: _chunk_grads(zs, weights, labels, head, config, 1.0 / n, True, True))
    if not args.skip_chunk:
        grad = torch.randn(n, V)

        def projections(_):  # k forward and k input-gradient backward projections: the floor's count
            for z in zs:
                z @ head.weight.T
            for _ in range(k):
                grad @ head.weight

        tasks["chunk/projections only"] = (list, projections)
    return tasks


def measure(args) -> dict:
    import torch

    baseline = load_baseline(args.baseline_rev) if args.baseline_rev else None
    tasks = _tasks(args, baseline)
    names = list(tasks)
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for rep in range(args.repeats + 1):  # the first round warms up; the order rotates every round
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            prepare, run = tasks[name]
            w, c = _timed(run, prepare())
            if rep:
                wall[name].append(w)
                cpu[name].append(c)
    per_1k = 1024 / args.tokens * 1e3  # seconds per chunk -> ms per 1,024 tokens
    result = {"shape": dict(tokens=args.tokens, hidden=args.hidden, vocab=args.vocab, k=args.k),
              "baseline_rev": args.baseline_rev, "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
              "ms_per_1024_tokens": {}}
    for name in names:
        entry = {}
        for clock, values in (("wall", wall[name]), ("cpu", cpu[name])):
            ms = [v * per_1k for v in values]
            entry[clock] = {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "all": ms}
        result["ms_per_1024_tokens"][name] = entry
    return result


def report(result: dict) -> str:
    rows = [f"{result['shape']}, {result['torch_threads']} thread(s), {result['repeats']} interleaved repetitions; "
            "ms per 1,024 tokens", "",
            "| measured | wall median | wall range | CPU median | CPU range |", "|---|---|---|---|---|"]
    for name, r in result["ms_per_1024_tokens"].items():
        w, c = r["wall"], r["cpu"]
        rows.append(f"| {name} | {w['median']:.0f} | {w['min']:.0f}-{w['max']:.0f} | {c['median']:.0f} | "
                    f"{c['min']:.0f}-{c['max']:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    result = measure(args)
    result["markdown"] = report(result)
    print(result["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
