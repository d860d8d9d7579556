"""The trained adapter's ``README.md``: what it is, how it was trained, and how to load it."""

from __future__ import annotations

from ..mod.variants import parse_preset
from ..utils.publish import hub_name
from .config import TrainConfig


def adapter_card(config: TrainConfig, steps: int, val_loss: float | None) -> str:
    """Markdown with hub metadata: base model, preset, k, lambda, data, steps, validation CE, loading."""
    base = hub_name(config.model)
    mod = parse_preset(config.preset).mod
    rows = [("base model", base or "a local model (name not recorded)"), ("preset", config.preset),
            ("k (members)", config.mod.k if mod else "none (no ensemble)"),
            ("distillation lambda", config.mod.distill_lambda if mod else "none"), ("training data", config.data),
            ("steps", steps), ("learning rate", config.learning_rate),
            ("validation CE (nats/answer token)", "not measured" if val_loss is None else f"{val_loss:.4f}")]
    front = ["---", "library_name: modetune", "tags: [modetune, mixture-of-depths-ensemble, lora, peft]"]
    if base:
        front.insert(1, f"base_model: {base}")
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    model_flag = f" --model {base}" if base else " --model BASE"
    return "\n".join([*front, "---", "", f"# {config.preset} adapter for {base or 'a local model'}", "",
                      "A Mixture-of-Depths Ensemble (MoD, Luo & Specia 2024, arXiv 2410.13077) adapter trained with "
                      "modetune: LoRA plus a per-token router over the last k layers' outputs, each with its own "
                      "norm and the shared LM head." if mod else "A LoRA adapter trained with modetune.", "",
                      "| | |", "|---|---|", table, "", "## Load it", "", "```bash",
                      f"modetune generate --adapter ADAPTER{model_flag} \"What is 12 * 7?\"",
                      f"modetune export --adapter ADAPTER{model_flag} --output exported   # plain transformers",
                      "```", "", "```python", "from modetune import MoDModel",
                      "from modetune.utils.models import load_model", "",
                      f"base, tokenizer = load_model({(base or 'BASE')!r})",
                      "model = MoDModel.from_pretrained(base, \"ADAPTER\")  # checks the base's fingerprint",
                      "```", ""])
