"""What a study runs with: :class:`ExperimentConfig`, built on :class:`~modetune.train.config.TrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..mod.config import MoDConfig
from ..train.config import TrainConfig
from ..utils.checks import from_flat_dict
from ..utils.config import SEED_MAX, Config
from ..utils.errors import ConfigError
from .spec import RUN_FIELDS

# the tuned study's declaration (docs/results/study-tuned/PLAN.md): its arms and primary tests
TUNED_ARMS = ("lora_notk", "lora_all", "mod_global=lora_notk_mod+clip_scope=global",
              "mod_pergroup=lora_notk_mod+clip_scope=per_group")
TUNED_PRIMARY = ("mod_global:lora_notk", "mod_pergroup:lora_notk")
TUNED_EQUIVALENCE = ("mod_global:lora_all", "mod_pergroup:lora_all")
# where a study's training differs from TrainConfig's defaults
STUDY_TRAINING = dict(data="packaged:math-split/train.json", warmup_steps=10, val_size=64)


def _study_training() -> TrainConfig:
    return TrainConfig(**STUDY_TRAINING)


@dataclass
class ExperimentConfig(Config):
    """The budget and data of a study; every field is a YAML key and a CLI flag.

    ``train`` holds the training settings shared by every run: its fields (and its MoD fields)
    are YAML keys and flags at the top level (``--learning-rate``, ``--k``, ``--distill-lambda``),
    except those each run sets itself (:data:`RUN_FIELDS`). A YAML file may also group MoD fields
    under ``mod:``.
    """

    train: TrainConfig = field(default_factory=_study_training, metadata={
        "help": "training settings of every run", "hide": RUN_FIELDS})
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"distinct": True,
        "min": 0, "max": SEED_MAX, "help": "seeds of the runs (comma-separated)"})
    key_seeds: list[int] = field(default_factory=lambda: [42, 43, 44], metadata={
        "distinct": True, "min": 0, "max": SEED_MAX,
        "help": "seeds of the key pair lora_notk vs lora_notk_mod in the variants study"})
    k_values: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5], metadata={"distinct": True, "min": 1,
        "help": "the topk study's ensemble sizes k"})
    datasets: str = field(default="gsm8k,SVAMP,MultiArith,AddSub,SingleEq,AQuA", metadata={
        "help": "test sets each run is evaluated on (as for modetune eval --datasets)"})
    data_dir: str | None = field(default="packaged:math-split", metadata={
        "help": "where the test sets come from, as modetune eval --data-dir: packaged:math-split (the clean split's "
                "test halves), packaged:llm-adapters (none: the same), hub, or a folder holding <Name>/test.json"})
    eval_limit: int | None = field(default=200, metadata={"min": 1, "help": "first N items of each test set (none: all)"})
    eval_batch_size: int = field(default=16, metadata={"min": 1, "help": "prompts per generate call in the evaluation"})
    max_new_tokens: int | None = field(default=None, metadata={"min": 1,
        "help": "generation budget (none: 256 arithmetic, 32 commonsense)"})
    num_beams: int = field(default=1, metadata={"min": 1, "help": "1 = greedy; the reference protocol uses 4"})
    cut_at_next_response: bool = field(default=True, metadata={
        "help": "score only the text before the next '### Response:' the model writes, as LLM-Adapters does "
                "(false: the whole generated text)"})
    test_ce: bool = field(default=True, metadata={
        "help": "also write each evaluated run's teacher-forced cross-entropy of every test item's gold response "
                "(test_ce.jsonl; one forward pass per item)"})
    test_size: int = field(default=600, metadata={"min": 1,
        "help": "held-out items of the built-in split by template and numbers (datasets entry 'builtin-tn')"})
    router_lr_factors: list[float] = field(default_factory=lambda: [1.0, 10.0, 30.0, 100.0], metadata={
        "distinct": True, "gt": 0, "help": "router_sweep: router_lr as multiples of learning_rate"})
    router_warmups: list[int] = field(default_factory=lambda: [0, 10], metadata={"distinct": True, "min": 0,
        "help": "router_sweep: router_warmup_steps values"})
    router_arm_lr: float = field(default=3e-3, metadata={"gt": 0,
        "help": "mod_vs_lora: router_lr of the mod_router arm (set from router_sweep before the study runs)"})
    router_arm_warmup: int = field(default=0, metadata={"min": 0,
        "help": "mod_vs_lora: router_warmup_steps of the mod_router arm (set from router_sweep)"})
    router_arm: str = field(default="train", metadata={
        "help": "mod_vs_lora: the fourth arm: 'train' (mod_router: router_arm_lr and router_arm_warmup in training) or "
                "'prefit' (mod_prefit: lora_notk_mod's adapter of the same seed with its router and member norms "
                "fitted afterwards on frozen members, as modetune fit-router --objective task)"})
    prefit_steps: int = field(default=200, metadata={
        "min": 1, "help": "mod_vs_lora: fit-router steps of the mod_prefit arm"})
    baseline_dir: str | None = field(default=None, metadata={
        "help": "clip_control: a committed study folder (relative to output_dir, or absolute) whose lora_notk and "
                "lora_notk_mod rows are the comparators, read and not retrained (none: train them in this study)"})
    lr_factors: list[float] = field(default_factory=lambda: [1.5, 2.0], metadata={"distinct": True, "gt": 0,
        "help": "clip_control: learning rates of the lora_lr arms, as multiples of learning_rate"})
    final_member: bool = field(default=False, metadata={
        "help": "also evaluate each MoD run's final member alone (eval-final/: every token routed to the last "
                "layer's own norm and the head, the plain model LoRA merging gives) on the same items"})
    probe_records: int = field(default=0, metadata={"min": 0,
        "help": "modetune probe on every evaluated run's adapter (<run>/probe/) and once on the base model "
                "(probe-base/), with N records of probe_data (0: no probe)"})
    probe_data: str | None = field(default=None, metadata={
        "help": "labelled records the probe reads (none: the study's held-out built-in file, datasets entry "
                "'builtin-tn')"})
    arms: list[str] = field(default_factory=lambda: list(TUNED_ARMS), metadata={
        "help": "tuned: the arms, each NAME=PRESET with optional +FIELD=VALUE training or MoD settings and "
                "+lr_grid=F/F/... (its own grid), or a bare PRESET; the first arm is the baseline"})
    lr_grid: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 3.0, 4.0], metadata={"distinct": True, "gt": 0,
        "help": "tuned: learning rates of the tuning stage, as multiples of learning_rate (an arm's +lr_grid "
                "overrides it); MoD's own parameters follow the rate unless router_lr is set"})
    tune_seeds: list[int] = field(default_factory=lambda: [1, 2], metadata={"distinct": True, "min": 0, "max": SEED_MAX,
        "help": "tuned: seeds of the tuning stage (disjoint from seeds, the confirmatory stage's)"})
    tune_datasets: str = field(default="builtin-tn-val", metadata={
        "help": "tuned: the validation items each tuning run is scored on (as datasets; 'builtin-tn-val': "
                "tune_size built-in items from the held-out templates-and-numbers bucket, disjoint by that key "
                "from the test items and from training); never the test sets"})
    tune_size: int = field(default=300, metadata={"min": 1, "help": "tuned: items of the entry 'builtin-tn-val'"})
    select_tolerance: float = field(default=0.01, metadata={"min": 0, "max": 1,
        "help": "tuned: selection rule: among the rates whose mean validation accuracy over tune_seeds is within "
                "this of the best (0.01 = one point), the one with the lowest mean validation CE of the gold "
                "answers (no CE: the smallest rate)"})
    primary: list[str] = field(default_factory=lambda: list(TUNED_PRIMARY), metadata={
        "help": "tuned: the primary difference tests, A:B (arm A minus arm B over the confirmatory seeds), "
                "Holm-corrected together with the equivalence tests"})
    equivalence: list[str] = field(default_factory=lambda: list(TUNED_EQUIVALENCE), metadata={
        "help": "tuned: the primary equivalence tests A:B (TOST at +-equivalence_margin)"})
    equivalence_margin: float = field(default=0.015, metadata={"gt": 0, "max": 1,
        "help": "tuned: the equivalence margin in accuracy (0.015 = 1.5 points), stated before the runs"})
    jobs: int = field(default=1, metadata={"min": 1,
        "help": "runs trained and evaluated at once, each in its own process with cores/jobs threads"})
    only: list[str] | None = field(default=None, metadata={
        "help": "run only these runs of the study (by name, comma-separated), e.g. to run it in parts"})
    output_dir: str | None = field(default=None, metadata={
        "help": "study folder holding every run and report.md (none: runs/experiments/<study>)"})
    smoke: bool = field(default=False, metadata={
        "help": "a tiny budget that runs end to end in minutes (on --model, e.g. a tiny random model); the "
                "fields set by flag or --config keep their values"})
    report_only: bool = field(default=False, metadata={
        "help": "write report.md from the runs' rows alone (val.json, log.jsonl, timing.json, eval/*.jsonl): "
                "nothing trains or evaluates, adapters are not needed"})

    def validate(self) -> None:
        for name in ("seeds", "key_seeds", "k_values", "tune_seeds", "arms", "lr_grid"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must list at least one value.")
        if self.router_arm not in ("train", "prefit"):
            raise ConfigError(f"router_arm must be 'train' or 'prefit', got {self.router_arm!r}.")
        if self.probe_records and self.probe_records < 4:
            raise ConfigError(f"probe_records must be 0 (no probe) or at least 4, got {self.probe_records}.")

    def to_dict(self) -> dict:
        """Every field by its YAML/flag name (training fields first); ``from_dict`` reads it back."""
        train = {key: value for key, value in self.train.to_dict().items() if key not in RUN_FIELDS}
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"}
        return {**train, **own}

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        """From a flat mapping: this class's own fields, and TrainConfig's (MoD fields flat or under
        ``mod:``) on top of the study defaults (:data:`STUDY_TRAINING`), except :data:`RUN_FIELDS`."""
        own = {f.name for f in dataclasses.fields(cls)} - {"train"}
        train = {key: value for key, value in data.items() if key not in own}
        run_fields = sorted(set(train) & set(RUN_FIELDS))
        if run_fields:
            raise ConfigError(f"Unknown experiment field(s): {', '.join(run_fields)} (each run of a study sets it).")
        train = from_flat_dict(TrainConfig, {**STUDY_TRAINING, **train}, "experiment")
        return cls(train=train, **{key: value for key, value in data.items() if key in own})

    def mod_overrides(self) -> dict:
        """The MoD fields (other than ``k``) that differ from MoDConfig's defaults."""
        default = MoDConfig().to_dict()
        return {key: value for key, value in self.train.mod.to_dict().items()
                if key != "k" and value != default[key]}


