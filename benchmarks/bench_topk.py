"""Top-K benchmark: wall-clock of dense vs Top-K routing on the same training step and the same generation.

The acceleration ratio is ``time(dense) / time(Top-K)``. With the one-projection shortcut
the ensemble costs one head projection whatever K is, so Top-K saves only the member norms it
could skip (it does not skip them: every member is computed); with lambda > 0 the distillation
needs every member's logits anyway. Measured, not assumed.

Takes the ``modetune experiment`` fields (model, k, LoRA rank, micro batch, MoD fields) and
writes ``topk_speed.json`` into the study folder, where the topk study's report picks it up:

    python benchmarks/bench_topk.py --config configs/experiments/commonsense.yaml
    modetune experiment topk --config configs/experiments/commonsense.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path


def measure_topk_speed(config, root: Path, repeats: int = 3) -> dict:
    """Median train-step and generation seconds per routing (``dense``, ``top1``, ...) of an
    ``ExperimentConfig``'s ``lora_notk_mod``; writes ``root/topk_speed.json``."""
    import torch

    from modetune.mod.variants import build_variant
    from modetune.studies.report import TOPK_SPEED_NAME, topk_speed_markdown
    from modetune.utils.models import load_model

    train = config.train
    timings = {}
    for label, top_k in [("dense", None)] + [(f"top{K}", K) for K in range(1, train.mod.k)]:
        base, tokenizer = load_model(train.model)
        model = build_variant(base, "lora_notk_mod", dataclasses.replace(train.mod, top_k=top_k),
                              lora_r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=0.0)
        ids = torch.randint(100, base.config.vocab_size, (train.micro_batch_size, 128),
                            generator=torch.Generator().manual_seed(0))
        model.train()
        steps = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            if i:
                steps.append(time.perf_counter() - start)
        model.eval()
        gens = []
        with torch.no_grad():
            for i in range(repeats + 1):
                start = time.perf_counter()
                model.generate(ids[:1, :16], max_new_tokens=24, min_new_tokens=24, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
                if i:
                    gens.append(time.perf_counter() - start)
        timings[label] = (statistics.median(steps), statistics.median(gens))
    root.mkdir(parents=True, exist_ok=True)
    (root / TOPK_SPEED_NAME).write_text(json.dumps(timings, indent=2))
    return {"timings": timings, "markdown": topk_speed_markdown(timings)}


def main() -> None:
    from modetune.cli.flags import add_config_flags, config_from_args
    from modetune.studies.plan import ExperimentConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of experiment fields (flags override it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (median)")
    add_config_flags(parser, ExperimentConfig)
    args = parser.parse_args()
    config = config_from_args(args, ExperimentConfig)
    result = measure_topk_speed(config, Path(config.output_dir or "runs/experiments/topk"), args.repeats)
    print(result["markdown"])


if __name__ == "__main__":
    main()
