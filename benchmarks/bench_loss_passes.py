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
    """``modetune.losses`` as it was at git revision ``rev``, imported beside the current package."""
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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--row-blocks", default="0,256",
                        help="MoDConfig.row_block settings of the current code, comma-separated (0 = automatic)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the baseline ('' = none)")
    parser.add_argument("--json", help="also write the results here")
    return parser


def measure(args) -> dict:
    import torch

    from modetune.config import MoDConfig
    from modetune.losses import HeadSpec, _chunk_grads

    torch.manual_seed(0)
    n, d, V, k = args.tokens, args.hidden, args.vocab, args.k
    head = HeadSpec(torch.randn(V, d) * d**-0.5)
    zs = [torch.randn(n, d) for _ in range(k)]
    weights = torch.softmax(torch.randn(n, k), -1)
    labels = torch.randint(0, V, (n,))
    variants = {}
    if args.baseline_rev:
        variants["baseline"] = (load_baseline(args.baseline_rev)._chunk_grads, MoDConfig(k=k, chunk_size=n))
    for block in [int(b) for b in args.row_blocks.split(",")]:
        variants[f"row_block={block}"] = (_chunk_grads, MoDConfig(k=k, chunk_size=n, row_block=block))

    def projections() -> float:
        """Seconds of ``k`` forward and ``k`` backward head projections (the random gradient untimed)."""
        start = time.perf_counter()
        for z in zs:
            z @ head.weight.T
        forward = time.perf_counter() - start
        g = torch.randn(n, V)
        start = time.perf_counter()
        for _ in range(k):
            g @ head.weight
        return forward + time.perf_counter() - start

    names = [*variants, "projections"]
    seconds = {name: [] for name in names}
    values = {}
    for rep in range(args.repeats + 1):  # the first round warms up
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            if name == "projections":
                spent = projections()
            else:
                fn, config = variants[name]
                start = time.perf_counter()
                task, kls, _, _, _, _ = fn(zs, weights, labels, head, config, 1.0 / n, True, True)
                spent = time.perf_counter() - start
                values[name] = [float(task), *map(float, kls)]
            if rep:
                seconds[name].append(spent)
    per_1k = 1024 / n * 1e3  # seconds per chunk -> ms per 1,024 tokens
    result = {"shape": dict(tokens=n, hidden=d, vocab=V, k=k), "baseline_rev": args.baseline_rev,
              "torch_threads": torch.get_num_threads(), "values": values, "variants": {}}
    for name in variants:
        elementwise = [(a - b) * per_1k for a, b in zip(seconds[name], seconds["projections"])]
        result["variants"][name] = {
            "chunk_ms_per_1k": [s * per_1k for s in seconds[name]],
            "elementwise_ms_per_1k": elementwise,
            "elementwise_median": statistics.median(elementwise),
            "elementwise_range": [min(elementwise), max(elementwise)],
        }
    result["projections_ms_per_1k"] = [s * per_1k for s in seconds["projections"]]
    return result


def report(result: dict) -> str:
    proj = result["projections_ms_per_1k"]
    rows = [f"{result['shape']}, {result['torch_threads']} thread(s); projections alone: "
            f"median {statistics.median(proj):.0f} ms per 1,024 tokens (range {min(proj):.0f}-{max(proj):.0f})", "",
            "| variant | chunk, ms per 1,024 tokens (median) | element-wise, ms per 1,024 tokens: median | range |",
            "|---|---|---|---|"]
    for name, r in result["variants"].items():
        lo, hi = r["elementwise_range"]
        rows.append(f"| {name} | {statistics.median(r['chunk_ms_per_1k']):.0f} | {r['elementwise_median']:.0f} | "
                    f"{lo:.0f}-{hi:.0f} |")
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
