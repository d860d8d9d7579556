"""A run of a study, as the plan declares it, and the names runs go by."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# TrainConfig fields that the study sets for each run itself (not settable for a study)
RUN_FIELDS = ("preset", "seed", "output_dir", "report_to", "save_steps")


@dataclass
class RunSpec:
    name: str
    preset: str
    seed: int
    mod: dict = field(default_factory=dict)
    evaluate: bool = True
    train: dict = field(default_factory=dict)  # TrainConfig fields this run sets (router_lr, router_warmup_steps)
    prefit_from: str | None = None  # a post-hoc arm: this run's router and norms fitted on that run's frozen adapter
    rows_from: str | None = None  # a study folder holding this run's committed rows: read, never trained here
    stage: str = "test"  # "tune": scored on the validation items (eval-val/, val_ce.jsonl), never the test sets
    select: str | None = None  # a confirmatory run of this arm: its learning rate is the arm's selected one

    def folder(self, root: Path) -> Path:
        """Where the run's rows live: ``root/<name>``, or ``<rows_from>/<name>`` (relative to ``root``)."""
        return (root / self.rows_from / self.name) if self.rows_from else root / self.name


def arm_of(name: str) -> str:
    """A run's arm: its name without the ``-s<seed>`` suffix."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name
