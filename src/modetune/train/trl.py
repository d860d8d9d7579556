"""TRL: train a :class:`~modetune.mod.model.MoDModel` with ``trl.SFTTrainer`` (``pip install "modetune[trl]"``).

``SFTTrainer`` computes its own cross-entropy through a fused LM head that reads the base model's
head weights directly, which would bypass the MoD ensemble. :class:`MoDSFTTrainer` keeps everything
else of TRL (datasets, chat templates, completion-only labels, packing, logging) and replaces the
loss by ``MoDModel.forward``'s: ``L = CE(l, y) + lambda * sum_{i<N} KL(P_i || P_N)`` over the
ensemble logits ``l``. TRL's metrics are computed from the ensemble's logits (returned alongside
the loss, without gradient): ``entropy`` and ``mean_token_accuracy`` at the labelled tokens, and
``num_tokens``; MoD's ``task_loss`` and per-member ``distill_<i>`` are logged too.
"""

from __future__ import annotations

import torch

try:
    from trl import SFTTrainer
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError('modetune.train.trl needs TRL: pip install "modetune[trl]"') from error


class MoDSFTTrainer(SFTTrainer):
    """``trl.SFTTrainer`` whose loss is the MoD objective of the :class:`MoDModel` it trains."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # SFTTrainer wraps the model's `forward` for its fused LM head (`trl.trainer.utils.add_fused_lm_head`),
        # a path that reads the head weights directly and so bypasses the ensemble; MoD computes its own loss
        # and never uses it: restore the model's own `forward`.
        vars(self.model).pop("forward", None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs = {key: value for key, value in inputs.items() if key not in ("use_cache",)}
        outputs = model(**inputs, use_cache=False, return_logits=True, num_items_in_batch=num_items_in_batch)
        self._log_metrics(mode, inputs, outputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _log_metrics(self, mode: str, inputs: dict, outputs) -> None:
        """TRL's ``entropy``, ``mean_token_accuracy`` and ``num_tokens`` from the ensemble logits, plus MoD's losses."""
        with torch.no_grad():
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            logits = outputs.logits[:, :-1][mask].float()
            n = max(int(mask.sum()), 1)
            log_probs = logits.log_softmax(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1).sum() / n
            correct = (logits.argmax(-1) == labels[mask]).sum() / n
        metrics = self._metrics[mode]
        metrics["entropy"].append(float(entropy))
        metrics["mean_token_accuracy"].append(float(correct))
        if outputs.task_loss is not None:
            metrics["task_loss"].append(float(outputs.task_loss))
            for i, value in enumerate(outputs.distill_losses.tolist()):
                metrics[f"distill_{i}"].append(value)
        if mode == "train":
            self._total_train_tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else 0
        metrics["num_tokens"] = [self._total_train_tokens]
