"""What a training run leaves behind for people: ``summary.json``, the console summary, and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..mod.variants import parse_preset
from ..utils.outputs import write_text
from ..utils.plotting import pyplot
from .card import adapter_card
from .config import TrainConfig

SPARSITY_EPS = 1e-5  # a router weight below this counts as "not routed" in the sparsity diagnostics


def read_log(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summarise(output_dir: Path, config: TrainConfig, trainable: int, total: int, adapter: Path, seconds: float,
              val_loss: float | None, batch: dict | None = None, write: bool = True) -> dict:
    """The run's summary from its ``log.jsonl``; ``batch``: how the Trainer made up the global batch
    (processes, micro batch, accumulation). With ``write`` (the main process only) it is written to
    ``summary.json``, with the adapter's model card and the plots."""
    logs = [row for row in read_log(output_dir) if "loss" in row]
    last = logs[-min(len(logs), 5):] if logs else []
    mean = lambda key: (sum(row[key] for row in last if key in row) / max(1, sum(key in row for row in last))
                        if any(key in row for row in last) else None)
    k = config.mod.k if parse_preset(config.preset).mod else 0
    summary = {
        "preset": config.preset, "model": config.model, "steps": logs[-1]["step"] if logs else 0,
        "first_loss": logs[0]["loss"] if logs else None, "last_loss": mean("loss"), "val_loss": val_loss,
        "task_loss": mean("task_loss"), "distill": [mean(f"distill_{i}") for i in range(max(0, k - 1))],
        "router_weights": [mean(f"router_{i}") for i in range(k)], "sparsity": mean("sparsity"),
        "router_entropy": mean("router_entropy"), "router_nonfinal_top": mean("router_nonfinal_top"),
        "learning_rate": config.learning_rate, "router_lr": config.router_lr or config.learning_rate,
        "router_warmup_steps": config.router_warmup_steps,
        "trainable": trainable, "total": total, "adapter": str(adapter), "seconds": seconds,
        "eval_command": f"modetune eval --adapter {adapter} --model {config.model} " + _eval_datasets(config.data),
        **(batch or {}),
    }
    if not write:
        return summary
    write_text(Path(output_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    if Path(adapter).is_dir():  # the model card (replacing peft's blank one)
        write_text(Path(adapter, "README.md"), adapter_card(config, summary["steps"], val_loss))
    plot_training(output_dir, k)
    return summary


def _eval_datasets(data: str) -> str:
    """The ``--datasets`` (and ``--data-dir``) the summary suggests for a run trained on ``data``."""
    if data.startswith("builtin:"):
        return "--datasets builtin"
    if "math-split/train.json" in data:
        return "--datasets arithmetic --data-dir packaged:math-split"  # the halves disjoint from training
    return "--datasets gsm8k,SVAMP"


def format_summary(s: dict) -> str:
    fmt = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
    lines = [f"[modetune] done: {s['preset']}, {s['steps']} steps in {s['seconds']:.0f} s",
             f"  loss {fmt(s['first_loss'])} -> {fmt(s['last_loss'])} (mean of the last 5 logs); "
             f"validation loss {fmt(s['val_loss'])}"]
    if s["router_weights"]:
        lines.append(f"  task loss {fmt(s['task_loss'])}; distillation per member {[fmt(x) for x in s['distill']]}")
        lines.append(f"  learning rate {s['learning_rate']:g}, router and member norms {s['router_lr']:g}; "
                     f"router warm-up {s['router_warmup_steps']} step(s)")
        lines.append(f"  mean router weight per member (shallow -> final) {[fmt(x) for x in s['router_weights']]}; "
                     f"routing sparsity (share < {SPARSITY_EPS:g}) {fmt(s['sparsity'])}")
    lines.append(f"  adapter saved to {s['adapter']}")
    lines.append(f"  evaluate it: {s['eval_command']}")
    return "\n".join(lines)


def plot_training(output_dir: str | Path, k: int) -> None:
    """``loss.png`` (total, task, distillation per member) and ``routing.png`` (router weights, sparsity)."""
    plt = pyplot()
    logs = [row for row in read_log(output_dir) if "loss" in row]
    if not logs:
        return
    steps = [row["step"] for row in logs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [row["loss"] for row in logs], label="loss")
    for key in ["task_loss"] + [f"distill_{i}" for i in range(max(0, k - 1))]:
        if key in logs[0]:
            ax.plot(steps, [row.get(key) for row in logs], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(output_dir) / "loss.png", dpi=100)
    plt.close(fig)
    if k and "router_0" in logs[0]:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for i in range(k):
            left.plot(steps, [row.get(f"router_{i}") for row in logs], label=f"member {i} (layer N-{k - 1 - i})")
            right.plot(steps, [row.get(f"sparsity_{i}") for row in logs], label=f"member {i}")
        left.set_title("mean router weight")
        right.set_title(f"routing sparsity (weights < {SPARSITY_EPS:g})")
        for axis in (left, right):
            axis.set_xlabel("step")
            axis.legend()
        fig.tight_layout()
        fig.savefig(Path(output_dir) / "routing.png", dpi=100)
        plt.close(fig)
