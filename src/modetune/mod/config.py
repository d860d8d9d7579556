"""`MoDConfig`: every choice of the Mixture-of-Depths Ensemble, with the defaults of docs/method.md."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from ..utils.config import Config
from ..utils.errors import ConfigError, DataError, first_line
from ..utils.integrity import read_json

CONFIG_NAME = "mod_config.json"


@dataclass
class MoDConfig(Config):
    """Configuration of a MoD ensemble over the last ``k`` decoder layers.

    Each field's meaning is its ``help`` metadata (shown by ``modetune train --help``).
    """

    what: ClassVar[str] = "MoDConfig"
    ignored_keys: ClassVar[tuple[str, ...]] = ("modetune_version", "base_fingerprint")  # mod_config.json's metadata

    k: int = field(default=3, metadata={"min": 1, "help": "number of late layers in the ensemble (members N-k+1 .. N)"})
    router_input: Literal["final", "entry"] = field(default="final", metadata={
        "help": "'final' routes on N_p(h^(N)); 'entry' on h^(N-k), the input of the ensemble block "
                "(early exit becomes possible)"})
    router_init: Literal["uniform", "final"] = field(default="final", metadata={
        "help": "'final': zero router weights plus constant prior logits giving the final member "
                "router_init_final_weight at step 0; 'uniform': zero router weights (uniform mixture at step 0; "
                "SPEC's first default)"})
    router_init_final_weight: float = field(default=0.9, metadata={"gt": 0, "lt": 1,
        "help": "the final member's weight at step 0 for router_init=final"})
    top_k: int | None = field(default=None, metadata={"min": 1,
        "help": "keep only the top_k largest router logits per token (none: dense)"})
    distill_lambda: float = field(default=1.0, metadata={"min": 0,
        "help": "weight of L_distill in L = L_task + lambda * L_distill"})
    temperature: float = field(default=1.0, metadata={"gt": 0,
        "help": "tau in P_i = softmax(l_i / tau) for the distillation"})
    distill_direction: Literal["reverse", "forward"] = field(default="reverse", metadata={
        "help": "'reverse' = KL(P_i || P_N) (the poster); 'forward' = KL(P_N || P_i)"})
    detach_teacher: bool = field(default=True, metadata={
        "help": "no distillation gradient through the final member P_N"})
    distill_through_body: bool = field(default=False, metadata={
        "help": "let L_distill reach the layers below the members; off = it trains the member norms only (the "
                "body learns from L_task). This default and detach_teacher's were settled by the sweep in "
                "docs/results/sweep: on, at lambda = 1, the final member degrades by ~0.3 nats"})
    train_final_norm: bool = field(default=False, metadata={"help": "make the model's own final norm N_p trainable"})
    member_norms: bool = field(default=True, metadata={
        "help": "give each non-final member a new trainable norm copied from N_p; off = every member uses the "
                "frozen N_p (the 'without N_k' ablation)"})
    chunk_size: int = field(default=256, metadata={"min": 1,
        "help": "tokens per chunk of the fused head + loss (memory/speed trade-off)"})
    row_block: int = field(default=0, metadata={"min": 0,
        "help": "tokens per block of the fused loss's element-wise softmax/KL passes inside a chunk (blocks small "
                "enough to stay in the CPU cache); 0 = automatic: 8 on CPU, the whole chunk on a GPU"})
    loss_impl: Literal["chunked", "naive"] = field(default="chunked", metadata={
        "help": "'chunked' (fused, low memory) or 'naive' (materialises every member's logits; the reference, "
                "for tests and benchmarks)"})
    loss_layer: int | None = field(default=None, metadata={"min": 0,
        "help": "none for the ensemble; j puts the whole task loss on the logit lens of layer N-j instead (the "
                "lora_layer_j motivation runs; needs k > j and routes all weight to that member)"})
    extra: dict = field(default_factory=dict, metadata={"help": "free-form settings kept with the config (YAML only)"})

    def validate(self) -> None:
        if self.top_k is not None and self.top_k > self.k:
            raise ConfigError(f"Invalid MoDConfig: top_k must be between 1 and k={self.k}, got {self.top_k}.")
        if self.loss_layer is not None and self.loss_layer >= self.k:
            raise ConfigError(f"Invalid MoDConfig: loss_layer j needs 0 <= j < k={self.k}, got {self.loss_layer}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, directory: str | Path, **metadata) -> None:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps({**self.to_dict(), **metadata}, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> tuple[MoDConfig, dict]:
        """Return the config and the metadata stored beside it (e.g. the base fingerprint); a damaged
        file, one without ``k`` or with a field of the wrong type is one :class:`DataError` naming it."""
        path = Path(directory) / CONFIG_NAME
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(f"{path} is damaged (expected a JSON object of MoD fields).")
        if "k" not in data:  # the one field the weights' layout cannot be read without
            raise DataError(f"{path} lacks the field 'k'.")
        metadata = {key: data.pop(key) for key in ("modetune_version", "base_fingerprint") if key in data}
        try:
            return cls.from_dict(data), metadata
        except ConfigError as error:
            raise DataError(f"{path}: {first_line(error)}") from None
