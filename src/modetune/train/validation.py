"""Teacher-forced validation of a saved adapter: the cheap primary metric of the studies' sweeps."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import TrainConfig


def validation_metrics(adapter: Path, train_config: TrainConfig) -> dict:
    """Held-out teacher-forced cross-entropy (nats/token) of the ensemble and of each member
    on the run's validation split: the cheap primary metric for sweeps."""
    from ..data import load_training_records, split_validation, tokenize_records
    from ..loading import load_source

    records = load_training_records(train_config.data, train_config.max_records, train_config.seed)
    _, val = split_validation(records, train_config.val_size, train_config.seed)
    model, tokenizer, info = load_source(train_config.model, adapter, device="cuda" if torch.cuda.is_available() else None,
                                           trust_remote_code=train_config.trust_remote_code)
    rows = tokenize_records(val, tokenizer, train_config.cutoff_len, train_config.train_on_inputs,
                            train_config.prompt_style)
    return teacher_forced_ce(model, rows)


def teacher_forced_ce(model, rows: list[dict], per_row: bool = False) -> dict:
    """Teacher-forced cross-entropy (nats per labelled token) of the model (the ensemble for
    MoD) and of each member, over tokenised ``rows``, one record at a time:
    ``{"tokens", "ensemble_ce", "member_ce" (None without MoD), "final_ce"}``; with ``per_row``
    also ``"rows"``: each row's ``{"tokens", "ce", "member_ce"}`` (the pooled values are their
    token-weighted means)."""
    total, ensemble, members, each = 0, 0.0, None, []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=model.device)
            labels = torch.tensor([row["labels"]], device=model.device)
            out = model(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            total += n
            row_ce = float(out.loss if getattr(out, "task_loss", None) is None else out.task_loss)
            ensemble += row_ce * n
            ce = getattr(out, "member_ce", None)
            if ce is not None:
                members = [m + float(c) * n for m, c in zip(members or [0.0] * len(ce), ce)]
            if per_row:
                each.append({"tokens": n, "ce": row_ce, "member_ce": None if ce is None else [float(c) for c in ce]})
    result = {"tokens": total, "ensemble_ce": ensemble / total}
    if per_row:
        result["rows"] = each
    result["member_ce"] = [m / total for m in members] if members else None
    result["final_ce"] = result["member_ce"][-1] if members else result["ensemble_ce"]
    return result
