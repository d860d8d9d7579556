"""Accuracy of the fused loss in float32 against a float64 reference, on the default model
(MoD over SmolLM2-135M-Instruct, no LoRA) and 16 real main-job records: the current loss, and
the loss before the row blocks (git revision 79212f7), in the same process.

    python benchmarks/loss_accuracy.py        # needs the git history (it reads the old losses.py)

Measured 2026-11-29 (benchmarks/results/loss_accuracy.txt): relative error of the total loss
6.2e-8 now, 2.0e-5 before; of the task loss 4.5e-8 now, 5.3e-6 before.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

import modetune.mod.model as model_module
from modetune.data import load_training_records, tokenize_records
from modetune.mod.config import MoDConfig
from modetune.mod.model import MoDModel
from modetune.utils.models import load_model, resolve_model

OLD_REVISION = "79212f7"


def old_loss_module():
    """``modetune/losses.py`` as it was at :data:`OLD_REVISION`, importable beside the current package."""
    source = subprocess.run(["git", "show", f"{OLD_REVISION}:src/modetune/losses.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parent).stdout
    path = Path(tempfile.mkdtemp()) / "old_losses.py"
    path.write_text(source.replace("from .", "from modetune."))
    spec = importlib.util.spec_from_file_location("old_losses", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_losses"] = module
    spec.loader.exec_module(module)
    return module


def batch(n: int = 16):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default"))
    rows = tokenize_records(load_training_records("builtin:arithmetic", n, 42)[:n], tokenizer, 256, False)
    length = max(len(r["input_ids"]) for r in rows)
    pad = lambda values, fill: [v + [fill] * (length - len(v)) for v in values]  # noqa: E731
    return (torch.tensor(pad([r["input_ids"] for r in rows], 0)), torch.tensor(pad([r["labels"] for r in rows], -100)),
            torch.tensor(pad([[1] * len(r["input_ids"]) for r in rows], 0)))


def losses(model: MoDModel, ids, labels, mask) -> tuple[float, float]:
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=False)
    return out.loss.item(), out.task_loss.item()


def main() -> None:
    ids, labels, mask = batch()
    reference = MoDModel(load_model("default", dtype=torch.float64)[0], MoDConfig(loss_impl="naive")).eval()
    results = {"float64 naive (reference)": losses(reference, ids, labels, mask)}
    model = MoDModel(load_model("default", dtype=torch.float32)[0], MoDConfig()).eval()
    results["float32 fused, current"] = losses(model, ids, labels, mask)
    current = model_module.fused_mod_loss
    model_module.fused_mod_loss = old_loss_module().fused_mod_loss
    try:
        results[f"float32 fused, {OLD_REVISION}"] = losses(model, ids, labels, mask)
    finally:
        model_module.fused_mod_loss = current
    ref = results["float64 naive (reference)"]
    print("| loss | total | task | rel. error total | rel. error task |\n|---|---|---|---|---|")
    for name, (total, task) in results.items():
        print(f"| {name} | {total:.10f} | {task:.10f} | {abs(total - ref[0]) / ref[0]:.2e} | "
              f"{abs(task - ref[1]) / ref[1]:.2e} |")


if __name__ == "__main__":
    main()
