"""`modetune fit-router`: fit only the router and the member norms of a MoD ensemble on frozen members.

For a base model, a LoRA-only adapter or a MoD adapter: the members (the logit lens of the
last ``k`` layers, LoRA included) stay frozen and only ``W_g`` and the member norms ``N_i``
train, by teacher forcing on labelled records, with Adam on

- ``objective = "mod"``: the MoD loss ``L_task + lambda * L_distill`` (lambda of the MoD config), or
- ``objective = "task"``: the task cross-entropy of the logit mix alone,
  ``-(1/n) sum_t log softmax(sum_i G_i(x_t) l_i(t))[y_t]``.

The result is a MoD adapter (``mod_config.json``, ``mod_model.safetensors`` and, for an
adapter that had LoRA, its LoRA files unchanged) that ``modetune eval`` and ``modetune
probe`` read, and ``fit_router.json`` with the training and validation cross-entropy before
and after. Every other weight is left bit-identical (the test checks it).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from ..loading import ModelSource
from ..mod.config import MoDConfig
from ..utils.config import SEED_MAX, Config
from ..utils.models import base_model_for, record_base_model
from ..utils.outputs import check_output, data_paths, staged
from ..utils.progress import progress_bar
from ..utils.prompts import AUTO, resolve_style
from .validation import teacher_forced_ce

FIT_NAME = "fit_router.json"


@dataclass
class FitRouterConfig(Config):
    """Every choice of a router pre-fit; each field is a ``modetune fit-router`` flag."""

    what: ClassVar[str] = "fit-router"

    source: ModelSource = field(default_factory=ModelSource, metadata={
        "help": "the model and adapter: a MoD adapter (its router and norms are fitted further), a LoRA-only adapter "
                "(a new router and norms are added on top; LoRA stays frozen), or none (the base model)"})
    data: str = field(default="packaged:math-split/train.json", metadata={
        "help": "labelled records to fit on (as for modetune train --data)"})
    max_records: int | None = field(default=None, metadata={"min": 1, "help": "use only the first N records (none: all)"})
    val_size: int = field(default=32, metadata={"min": 0, "help": "held-out records for the before/after CE (0: none)"})
    ce_records: int = field(default=64, metadata={"min": 1,
        "help": "training records (the first N) on which the before/after training CE is measured"})
    cutoff_len: int = field(default=256, metadata={"min": 1, "help": "tokens per record after truncation"})
    prompt_style: str = field(default="auto", metadata={
        "help": "prompt template: auto (the adapter's training style, else alpaca), alpaca, llm-adapters or chat"})
    steps: int = field(default=100, metadata={"min": 1, "help": "Adam steps"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "records per step"})
    learning_rate: float = field(default=1e-3, metadata={"gt": 0, "help": "Adam learning rate (constant)"})
    objective: Literal["mod", "task"] = field(default="mod", metadata={
        "help": "'mod': L_task + lambda L_distill; 'task': the cross-entropy of the logit mix alone"})
    seed: int = field(default=42, metadata={
        "min": 0, "max": SEED_MAX, "help": "seed of the record order and the validation split"})
    output: str = field(default="runs/fit-router", metadata={"help": "folder of the fitted MoD adapter"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing output, once the new one is complete (off: refuse it)"})
    mod: MoDConfig = field(default_factory=MoDConfig, metadata={
        "help": "the new ensemble's settings (ignored when --adapter is already a MoD adapter)"})

    def validate(self) -> None:
        if self.prompt_style != AUTO:
            resolve_style(self.prompt_style, None)  # refuses an unknown style


def load_frozen_members(config: FitRouterConfig):
    """``(MoDModel, tokenizer, kind)`` with only the MoD parameters trainable (:meth:`MoDModel.mod_parameters`)."""
    from ..mod.model import MoDModel

    loaded, tokenizer, info = config.source.load()
    kind = info["kind"]  # the one adapter loader: integrity, the base fingerprint, LoRA or MoD
    model = loaded if kind == "mod" else MoDModel(loaded, config.mod)
    for param in model.parameters():
        param.requires_grad_(False)
    for param in model.mod_parameters(trainable_only=False):  # the router, member norms (N_p if the adapter trains it)
        param.requires_grad_(True)
    model.eval()  # no dropout in the frozen members
    tokenizer.padding_side = "right"
    return model, tokenizer, kind


def _batches(rows: list[dict], batch_size: int, steps: int, seed: int, pad_id: int):
    """``steps`` right-padded batches, records drawn without replacement, reshuffled each pass."""
    rng, order = random.Random(seed), []
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(rows)), len(rows))
        chosen, order = order[:batch_size], order[batch_size:]
        width = max(len(rows[i]["input_ids"]) for i in chosen)
        pad = lambda seq, value, width=width: seq + [value] * (width - len(seq))
        yield (torch.tensor([pad(rows[i]["input_ids"], pad_id) for i in chosen]),
               torch.tensor([pad(rows[i]["attention_mask"], 0) for i in chosen]),
               torch.tensor([pad(rows[i]["labels"], -100) for i in chosen]))


def fit_router(config: FitRouterConfig, progress: bool = True):
    """Fit the router and member norms; save the MoD adapter to ``config.output``. Returns ``(model, result)``.
    ``progress``: a bar for each phase (tokenising, the CE before and after, the steps) and a line every 10 steps."""
    config = dataclasses.replace(config, prompt_style=resolve_style(config.prompt_style, config.source.adapter))
    from ..data import load_training_records, split_validation, tokenize_records

    source = config.source
    if source.adapter and not Path(source.adapter).is_dir():
        raise FileNotFoundError(f"Adapter folder {source.adapter} does not exist.")
    check_output(config.output, [source.adapter, source.model, *data_paths(config.data)], config.overwrite)
    torch.manual_seed(config.seed)
    records = load_training_records(config.data, config.max_records, config.seed)
    train_records, val_records = split_validation(records, config.val_size, config.seed)
    if progress:
        print(f"[modetune fit-router] loading {source.model}{' + ' + source.adapter if source.adapter else ''}",
              flush=True)
    model, tokenizer, kind = load_frozen_members(config)
    def tokenize(records: list[dict], what: str) -> list[dict]:
        bar = progress_bar(records, f"fit-router: tokenising the {what} records", progress, unit="record")
        return tokenize_records(bar, tokenizer, config.cutoff_len, False, config.prompt_style)

    train_rows = tokenize(train_records, "training")
    val_rows = tokenize(val_records, "validation") if val_records else []
    probe_rows = train_rows[:config.ce_records]  # the training CE: a fixed subset, before and after

    def ce(rows: list[dict], what: str) -> dict:  # teacher-forced CE, one record at a time, with a bar
        return teacher_forced_ce(model, progress_bar(rows, f"fit-router: {what}", progress, unit="record"))

    saved_config = model.mod_config
    if config.objective == "task":
        model.mod_config = dataclasses.replace(saved_config, distill_lambda=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    result = {"kind": kind, "config": config.to_dict(), "train_records": len(train_rows), "val_records": len(val_rows),
              "train_ce_before": ce(probe_rows, "CE before, training records"), "losses": []}
    if val_rows:
        result["val_ce_before"] = ce(val_rows, "CE before, validation records")
    started = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = _batches(train_rows, config.batch_size, config.steps, config.seed, pad_id)
    with progress_bar(None, "fit-router: fitting the router", progress, config.steps, "step") as bar:
        for step, (ids, mask, labels) in enumerate(batches, 1):
            out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                        labels=labels.to(model.device), return_logits=False)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            result["losses"].append(float(out.loss.detach()))
            bar.update()
            bar.set_postfix(loss=f"{result['losses'][-1]:.4f}", refresh=False)
            if progress and (step % 10 == 0 or step == config.steps):
                bar.write(f"[modetune fit-router] step {step}/{config.steps}: loss {result['losses'][-1]:.4f}",
                          file=sys.stdout)
    result["seconds"] = time.perf_counter() - started
    model.mod_config = saved_config
    for param in params:
        param.requires_grad_(False)
    result["train_ce_after"] = ce(probe_rows, "CE after, training records")
    if val_rows:
        result["val_ce_after"] = ce(val_rows, "CE after, validation records")
    with staged(config.output) as stage:  # the adapter appears whole or not at all
        model.save_pretrained(stage)
        (stage / FIT_NAME).write_text(json.dumps(result, indent=2) + "\n")
        record_base_model(stage, base_model_for(source.model, source.adapter))  # later commands may omit --model
    return model, result


def format_fit(result: dict) -> str:
    """Console lines: the ensemble's cross-entropy before -> after, on the fitted and the held-out records."""
    lines = [f"[modetune fit-router] {result['config']['steps']} steps on {result['train_records']} records "
             f"({result['kind']} members) in {result['seconds']:.0f} s"]
    for part in ("train", "val"):
        if f"{part}_ce_before" in result:
            before, after = result[f"{part}_ce_before"], result[f"{part}_ce_after"]
            lines.append(f"  {part} CE of the ensemble {before['ensemble_ce']:.4f} -> {after['ensemble_ce']:.4f} "
                         f"(final member {after['final_ce']:.4f}; nats/token over {after['tokens']} tokens)")
    lines.append(f"  MoD adapter saved to {result['config']['output']}")
    return "\n".join(lines)
