"""What a study runs: `ExperimentConfig` (built on `TrainConfig`) and each study's list of runs.

Each study is a list of runs (a preset plus MoD overrides and a seed). Studies (docs/method.md,
"Measurements the paper reports"): ``variants``, ``motivation``, ``sparsity``, ``topk``,
``ablations``, and ``sweep`` (settle the MoD defaults on the validation split before the main study);
``router_sweep`` (the router's learning rate and warm-up, by validation CE), ``mod_vs_lora``
(the pre-registered study, docs/results/study-mod-vs-lora/PLAN.md) and ``clip_control`` (its
follow-up: per-group gradient clipping, LoRA at higher learning rates, and the final member
alone; docs/results/study-clip-control/PLAN.md).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..mod.config import MoDConfig
from ..train.config import TrainConfig
from ..utils.checks import check_bounds, coerce_fields, from_flat_dict
from ..utils.errors import ConfigError

# TrainConfig fields that the study sets for each run itself (not settable for a study)
RUN_FIELDS = ("preset", "seed", "output_dir", "report_to", "save_steps")
# where a study's training differs from TrainConfig's defaults
STUDY_TRAINING = dict(data="packaged:math-split/train.json", warmup_steps=10, val_size=64)


def _study_training() -> TrainConfig:
    return TrainConfig(**STUDY_TRAINING)


@dataclass
class ExperimentConfig:
    """The budget and data of a study; every field is a YAML key and a CLI flag.

    ``train`` holds the training settings shared by every run: its fields (and its MoD fields)
    are YAML keys and flags at the top level (``--learning-rate``, ``--k``, ``--distill-lambda``),
    except those each run sets itself (:data:`RUN_FIELDS`). A YAML file may also group MoD fields
    under ``mod:``.
    """

    train: TrainConfig = field(default_factory=_study_training, metadata={
        "help": "training settings of every run", "hide": RUN_FIELDS})
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"help": "seeds of the runs (comma-separated)"})
    key_seeds: list[int] = field(default_factory=lambda: [42, 43, 44], metadata={
        "help": "seeds of the key pair lora_notk vs lora_notk_mod in the variants study"})
    k_values: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5], metadata={
        "help": "the topk study's ensemble sizes k"})
    datasets: str = field(default="gsm8k,SVAMP,MultiArith,AddSub,SingleEq,AQuA", metadata={
        "help": "test sets each run is evaluated on (as for modetune eval --datasets)"})
    data_dir: str | None = field(default="packaged:math-split", metadata={
        "help": "where the test sets come from, as modetune eval --data-dir: packaged:math-split (the clean split's "
                "test halves), packaged:llm-adapters (none: the same), hub, or a folder holding <Name>/test.json"})
    eval_limit: int | None = field(default=200, metadata={"help": "first N items of each test set (none: all)"})
    eval_batch_size: int = field(default=16, metadata={"help": "prompts per generate call in the evaluation"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "generation budget (none: 256 arithmetic, 32 commonsense)"})
    num_beams: int = field(default=1, metadata={"help": "1 = greedy; the reference protocol uses 4"})
    cut_at_next_response: bool = field(default=True, metadata={
        "help": "score only the text before the next '### Response:' the model writes, as LLM-Adapters does "
                "(false: the whole generated text)"})
    test_ce: bool = field(default=True, metadata={
        "help": "also write each evaluated run's teacher-forced cross-entropy of every test item's gold response "
                "(test_ce.jsonl; one forward pass per item)"})
    test_size: int = field(default=600, metadata={
        "help": "held-out items of the built-in split by template and numbers (datasets entry 'builtin-tn')"})
    router_lr_factors: list[float] = field(default_factory=lambda: [1.0, 10.0, 30.0, 100.0], metadata={
        "help": "router_sweep: router_lr as multiples of learning_rate"})
    router_warmups: list[int] = field(default_factory=lambda: [0, 10], metadata={
        "help": "router_sweep: router_warmup_steps values"})
    router_arm_lr: float = field(default=3e-3, metadata={
        "help": "mod_vs_lora: router_lr of the mod_router arm (set from router_sweep before the study runs)"})
    router_arm_warmup: int = field(default=0, metadata={
        "help": "mod_vs_lora: router_warmup_steps of the mod_router arm (set from router_sweep)"})
    router_arm: str = field(default="train", metadata={
        "help": "mod_vs_lora: the fourth arm: 'train' (mod_router: router_arm_lr and router_arm_warmup in training) or "
                "'prefit' (mod_prefit: lora_notk_mod's adapter of the same seed with its router and member norms "
                "fitted afterwards on frozen members, as modetune fit-router --objective task)"})
    prefit_steps: int = field(default=200, metadata={"help": "mod_vs_lora: fit-router steps of the mod_prefit arm"})
    baseline_dir: str | None = field(default=None, metadata={
        "help": "clip_control: a committed study folder (relative to output_dir, or absolute) whose lora_notk and "
                "lora_notk_mod rows are the comparators, read and not retrained (none: train them in this study)"})
    lr_factors: list[float] = field(default_factory=lambda: [1.5, 2.0], metadata={
        "help": "clip_control: learning rates of the lora_lr arms, as multiples of learning_rate"})
    final_member: bool = field(default=False, metadata={
        "help": "also evaluate each MoD run's final member alone (eval-final/: every token routed to the last "
                "layer's own norm and the head, the plain model LoRA merging gives) on the same items"})
    probe_records: int = field(default=0, metadata={
        "help": "modetune probe on every evaluated run's adapter (<run>/probe/) and once on the base model "
                "(probe-base/), with N records of probe_data (0: no probe)"})
    probe_data: str | None = field(default=None, metadata={
        "help": "labelled records the probe reads (none: the study's held-out built-in file, datasets entry "
                "'builtin-tn')"})
    arms: list[str] = field(default_factory=lambda: list(TUNED_ARMS), metadata={
        "help": "tuned: the arms, each NAME=PRESET with optional +FIELD=VALUE training or MoD settings and "
                "+lr_grid=F/F/... (its own grid), or a bare PRESET; the first arm is the baseline"})
    lr_grid: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 3.0, 4.0], metadata={
        "help": "tuned: learning rates of the tuning stage, as multiples of learning_rate (an arm's +lr_grid "
                "overrides it); MoD's own parameters follow the rate unless router_lr is set"})
    tune_seeds: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "tuned: seeds of the tuning stage (disjoint from seeds, the confirmatory stage's)"})
    tune_datasets: str = field(default="builtin-tn-val", metadata={
        "help": "tuned: the validation items each tuning run is scored on (as datasets; 'builtin-tn-val': "
                "tune_size built-in items from the held-out templates-and-numbers bucket, disjoint by that key "
                "from the test items and from training); never the test sets"})
    tune_size: int = field(default=300, metadata={"help": "tuned: items of the entry 'builtin-tn-val'"})
    select_tolerance: float = field(default=0.01, metadata={
        "help": "tuned: selection rule: among the rates whose mean validation accuracy over tune_seeds is within "
                "this of the best (0.01 = one point), the one with the lowest mean validation CE of the gold "
                "answers (no CE: the smallest rate)"})
    primary: list[str] = field(default_factory=lambda: list(TUNED_PRIMARY), metadata={
        "help": "tuned: the primary difference tests, A:B (arm A minus arm B over the confirmatory seeds), "
                "Holm-corrected together with the equivalence tests"})
    equivalence: list[str] = field(default_factory=lambda: list(TUNED_EQUIVALENCE), metadata={
        "help": "tuned: the primary equivalence tests A:B (TOST at +-equivalence_margin)"})
    equivalence_margin: float = field(default=0.015, metadata={
        "help": "tuned: the equivalence margin in accuracy (0.015 = 1.5 points), stated before the runs"})
    jobs: int = field(default=1, metadata={
        "help": "runs trained and evaluated at once, each in its own process with cores/jobs threads"})
    only: list[str] | None = field(default=None, metadata={
        "help": "run only these runs of the study (by name, comma-separated), e.g. to run it in parts"})
    output_dir: str | None = field(default=None, metadata={
        "help": "study folder holding every run and report.md (none: runs/experiments/<study>)"})
    report_only: bool = field(default=False, metadata={
        "help": "write report.md from the runs' rows alone (val.json, log.jsonl, timing.json, eval/*.jsonl): "
                "nothing trains or evaluates, adapters are not needed"})

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_bounds(self, positive=("eval_limit", "eval_batch_size", "max_new_tokens", "num_beams", "tune_size",
                                     "jobs"), non_negative=("select_tolerance", "equivalence_margin"))
        if not self.lr_grid or any(f <= 0 for f in self.lr_grid):
            raise ConfigError(f"lr_grid must list positive multiples of learning_rate, got {self.lr_grid}.")
        for name in ("seeds", "key_seeds", "k_values", "tune_seeds", "arms"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must list at least one value.")
        if self.router_arm not in ("train", "prefit"):
            raise ConfigError(f"router_arm must be 'train' or 'prefit', got {self.router_arm!r}.")
        if self.prefit_steps < 1:
            raise ConfigError(f"prefit_steps must be positive, got {self.prefit_steps}.")
        if self.probe_records and self.probe_records < 4:
            raise ConfigError(f"probe_records must be 0 (no probe) or at least 4, got {self.probe_records}.")
        if any(k < 1 for k in self.k_values):
            raise ConfigError(f"k_values must be positive, got {self.k_values}.")
        if any(seed < 0 for seed in (*self.seeds, *self.key_seeds, *self.tune_seeds)):
            raise ConfigError(f"seeds must be >= 0, got {[*self.seeds, *self.key_seeds, *self.tune_seeds]}.")

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


# per-study changes to the smoke setting (the study's own data path, at a tiny size)
SMOKE_STUDY = {"mod_vs_lora": dict(data="builtin:arithmetic-tn:40", datasets="builtin-tn", test_size=4, seeds=[42],
                                   router_arm_lr=1e-2, router_arm_warmup=1, probe_records=4),
               "router_sweep": dict(router_lr_factors=[1.0, 10.0], router_warmups=[0, 1]),
               "clip_control": dict(data="builtin:arithmetic-tn:40", datasets="builtin-tn", test_size=4, seeds=[42],
                                    key_seeds=[42, 43], lr_factors=[2.0], final_member=True),
               "tuned": dict(data="builtin:arithmetic-tn:40", datasets="builtin-tn", test_size=4, tune_size=4,
                             seeds=[42, 43], tune_seeds=[1], lr_grid=[1.0, 4.0], final_member=True,
                             arms=["lora_notk", "mod=lora_notk_mod+clip_scope=per_group"], primary=["mod:lora_notk"],
                             equivalence=[])}
SMOKE = dict(data="builtin:arithmetic:40", max_steps=2, batch_size=2, micro_batch_size=2, warmup_steps=0,
             val_size=4, lora_r=4, lora_alpha=8, seeds=[42], key_seeds=[42], datasets="builtin", data_dir=None,
             eval_limit=4, eval_batch_size=4, max_new_tokens=16, k_values=[1, 2])


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


def _variants(config: ExperimentConfig) -> list[RunSpec]:
    runs = []
    for preset in ("lora_notk", "lora_notk_mod", "lora_all", "lora_all_mod", "mod_only"):
        seeds = config.key_seeds if preset in ("lora_notk", "lora_notk_mod") else config.seeds[:1]
        runs += [RunSpec(f"{preset}-s{seed}", preset, seed) for seed in seeds]
    return runs


def _motivation(config: ExperimentConfig) -> list[RunSpec]:
    return [RunSpec(f"lora_layer_{j}-s{s}", f"lora_layer_{j}", s) for j in range(3) for s in config.seeds]


def _sparsity(config: ExperimentConfig) -> list[RunSpec]:
    return [RunSpec(f"{p}-s{s}", p, s, evaluate=False) for p in ("lora_notk_mod", "lora_all_mod") for s in config.seeds]


def _topk(config: ExperimentConfig) -> list[RunSpec]:
    seed, k = config.seeds[0], config.train.mod.k
    runs = [RunSpec(f"lora_notk-s{seed}", "lora_notk", seed), RunSpec(f"lora_notk_mod-s{seed}", "lora_notk_mod", seed)]
    runs += [RunSpec(f"topk{K}-s{seed}", "lora_notk_mod", seed, {"top_k": K}) for K in range(1, k)]  # K = k: dense
    runs += [RunSpec(f"k{kk}-s{seed}", "lora_notk_mod", seed, {"k": kk}) for kk in config.k_values if kk != k]
    return runs


def _ablations(config: ExperimentConfig) -> list[RunSpec]:
    seed = config.seeds[0]
    return [RunSpec(f"lora_notk-s{seed}", "lora_notk", seed), RunSpec(f"lora_notk_mod-s{seed}", "lora_notk_mod", seed),
            RunSpec(f"no_distill-s{seed}", "lora_notk_mod", seed, {"distill_lambda": 0.0}),
            RunSpec(f"no_member_norms-s{seed}", "lora_notk_mod", seed, {"member_norms": False})]


def _sweep(config: ExperimentConfig) -> list[RunSpec]:
    seed = config.seeds[0]
    runs = [RunSpec(f"lora_notk-s{seed}", "lora_notk", seed, evaluate=False)]
    for lam in (0.0, 0.1, 1.0):
        for init in ("uniform", "final"):
            for body in ((True,) if lam == 0 else (True, False)):
                name = f"lam{lam:g}-{init}-{'body' if body else 'normsonly'}-s{seed}"
                runs.append(RunSpec(name, "lora_notk_mod", seed, {"distill_lambda": lam, "router_init": init,
                                                                   "distill_through_body": body}, False))
    return runs


def _router_sweep(config: ExperimentConfig) -> list[RunSpec]:
    seed, lr = config.seeds[0], config.train.learning_rate
    return [RunSpec(f"rlr{f:g}x-warm{w}-s{seed}", "lora_notk_mod", seed, evaluate=False,
                    train={"router_lr": f * lr, "router_warmup_steps": w})
            for f in config.router_lr_factors for w in config.router_warmups]


def _mod_vs_lora(config: ExperimentConfig) -> list[RunSpec]:
    """The pre-registered arms (PLAN.md), seed-major so an interrupted study has whole seeds:
    lora_notk and lora_notk_mod (defaults) over ``key_seeds``; ``mod_uniform`` (uniform router
    start, distillation on the member norms only) and, by ``router_arm``, ``mod_router``
    (``router_arm_lr``, ``router_arm_warmup``) or ``mod_prefit`` (``lora_notk_mod``'s adapter of
    the same seed with its router and norms fitted afterwards) over ``seeds``."""
    runs = []
    for seed in dict.fromkeys([*config.key_seeds, *config.seeds]):
        if seed in config.key_seeds:
            runs += [RunSpec(f"lora_notk-s{seed}", "lora_notk", seed),
                     RunSpec(f"lora_notk_mod-s{seed}", "lora_notk_mod", seed)]
        if seed in config.seeds:
            runs.append(RunSpec(f"mod_uniform-s{seed}", "lora_notk_mod", seed,
                                {"router_init": "uniform", "distill_through_body": False}))
            if config.router_arm == "prefit":
                if seed not in config.key_seeds:
                    raise ConfigError(f"router_arm prefit fits lora_notk_mod's router: seed {seed} must be a key seed.")
                runs.append(RunSpec(f"mod_prefit-s{seed}", "lora_notk_mod", seed, prefit_from=f"lora_notk_mod-s{seed}"))
            else:
                runs.append(RunSpec(f"mod_router-s{seed}", "lora_notk_mod", seed, train={
                    "router_lr": config.router_arm_lr, "router_warmup_steps": config.router_arm_warmup}))
    return runs


def _clip_control(config: ExperimentConfig) -> list[RunSpec]:
    """The follow-up's arms (docs/results/study-clip-control/PLAN.md), seed-major: over ``key_seeds``
    the comparators ``lora_notk`` and ``lora_notk_mod`` (committed rows from ``baseline_dir``) and
    ``mod_pergroup`` (``lora_notk_mod`` with ``clip_scope per_group``); over ``seeds``
    ``lora_notk_mod_rerun`` (``lora_notk_mod`` trained again: a reproduction check, then its final
    member) and ``lora_lr<f>x`` (``lora_notk`` at ``f`` x ``learning_rate`` for each of ``lr_factors``)."""
    lr, source = config.train.learning_rate, config.baseline_dir
    runs = []
    for seed in dict.fromkeys([*config.key_seeds, *config.seeds]):
        if seed in config.key_seeds:
            runs += [RunSpec(f"lora_notk-s{seed}", "lora_notk", seed, rows_from=source),
                     RunSpec(f"lora_notk_mod-s{seed}", "lora_notk_mod", seed, rows_from=source),
                     RunSpec(f"mod_pergroup-s{seed}", "lora_notk_mod", seed, train={"clip_scope": "per_group"})]
        if seed in config.seeds:
            runs.append(RunSpec(f"lora_notk_mod_rerun-s{seed}", "lora_notk_mod", seed))
            runs += [RunSpec(f"lora_lr{f:g}x-s{seed}", "lora_notk", seed, train={"learning_rate": float(f"{f * lr:.6g}")})
                     for f in config.lr_factors]
    return runs


# the tuned study's declaration (docs/results/study-tuned/PLAN.md)
TUNED_ARMS = ("lora_notk", "lora_all", "mod_global=lora_notk_mod+clip_scope=global",
              "mod_pergroup=lora_notk_mod+clip_scope=per_group")
TUNED_PRIMARY = ("mod_global:lora_notk", "mod_pergroup:lora_notk")
TUNED_EQUIVALENCE = ("mod_global:lora_all", "mod_pergroup:lora_all")


@dataclass(frozen=True)
class Arm:
    """One arm of a tuned study: a preset, the training and MoD settings it changes, its rate grid."""

    name: str
    preset: str
    train: dict
    mod: dict
    lr_grid: tuple[float, ...]


def parse_arm(text: str, lr_grid: list[float]) -> Arm:
    """``NAME=PRESET+FIELD=VALUE+...`` (or a bare ``PRESET``, named after it) as an :class:`Arm`.
    FIELD is a TrainConfig or MoDConfig field (values read as YAML scalars) or ``lr_grid``
    (multiples of learning_rate separated by ``/``), which replaces the study's grid for this arm."""
    import yaml

    from ..mod.variants import parse_preset

    head, *settings = text.strip().split("+")
    name, sep, preset = head.partition("=")
    preset = preset if sep else name
    parse_preset(preset)  # an unknown preset fails here, naming the known ones
    if not re.fullmatch(r"[A-Za-z0-9_.]+", name):
        raise ConfigError(f"Arm {text!r}: its name may hold letters, digits, '_' and '.' only.")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(RUN_FIELDS) - {"mod", "learning_rate"}
    mod_fields = {f.name for f in dataclasses.fields(MoDConfig)}
    train, mod, grid = {}, {}, tuple(lr_grid)
    for setting in settings:
        key, sep, raw = setting.partition("=")
        if not sep:
            raise ConfigError(f"Arm {text!r}: {setting!r} is not FIELD=VALUE.")
        if key == "lr_grid":
            try:
                grid = tuple(float(v) for v in raw.split("/"))
            except ValueError:
                raise ConfigError(f"Arm {text!r}: lr_grid must be numbers separated by '/', got {raw!r}.") from None
            if not grid or any(f <= 0 for f in grid):
                raise ConfigError(f"Arm {text!r}: lr_grid must be positive, got {raw!r}.")
            continue
        value = yaml.safe_load(raw)
        if key in mod_fields:
            mod[key] = value
        elif key in train_fields:
            train[key] = value
        else:
            raise ConfigError(f"Arm {text!r}: unknown field {key!r} (a TrainConfig or MoD field, or lr_grid; "
                              f"learning_rate is what the study tunes).")
    return Arm(name, preset, train, mod, grid)


def tuned_arms(config: ExperimentConfig) -> list[Arm]:
    """The tuned study's arms, checked: distinct names, and the tests name declared arms."""
    arms = [parse_arm(text, config.lr_grid) for text in config.arms]
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"Arm names must differ, got {names}.")
    for test in (*config.primary, *config.equivalence):
        a, sep, b = test.partition(":")
        if not sep or a not in names or b not in names or a == b:
            raise ConfigError(f"Test {test!r} must be A:B with two different arms of {names}.")
    overlap = sorted(set(config.tune_seeds) & set(config.seeds))
    if overlap:
        raise ConfigError(f"tune_seeds and seeds must be disjoint (confirmatory seeds are never tuned on): {overlap}.")
    return arms


def lr_label(factor: float) -> str:
    return f"lr{factor:g}x"


def _tuned(config: ExperimentConfig) -> list[RunSpec]:
    """The tuned comparison (docs/results/study-tuned/PLAN.md). Tuning stage: every arm at every
    rate of its grid (``learning_rate`` x factor) over ``tune_seeds``, scored on the validation
    items only (``tune-<arm>-lr<f>x-s<seed>``). Confirmatory stage: every arm at its selected rate
    over ``seeds`` (``<arm>-s<seed>``, rate filled in by :func:`modetune.studies.tuning.select_rates`),
    scored on the test items."""
    lr = config.train.learning_rate
    runs = []
    for seed in config.tune_seeds:
        for arm in tuned_arms(config):
            runs += [RunSpec(f"tune-{arm.name}-{lr_label(f)}-s{seed}", arm.preset, seed, dict(arm.mod),
                             train={**arm.train, "learning_rate": float(f"{f * lr:.6g}")}, stage="tune")
                     for f in arm.lr_grid]
    for seed in config.seeds:
        runs += [RunSpec(f"{arm.name}-s{seed}", arm.preset, seed, dict(arm.mod), train=dict(arm.train), select=arm.name)
                 for arm in tuned_arms(config)]
    return runs


PAPER_LLAMA7B = {  # the poster's table (LLaMA-7B, math_10k, beam search), for comparison only
    "lora_notk": {"AddSub": 38.7, "AQuA": 13.4, "gsm8k": 37.3, "mawps": 56.3, "MultiArith": 78.2, "SingleEq": 59.8,
                  "SVAMP": 42.3, "avg": 46.6},
    "lora_all": {"AddSub": 41.3, "AQuA": 15.4, "gsm8k": 38.5, "mawps": 58.0, "MultiArith": 81.0, "SingleEq": 62.9,
                 "SVAMP": 44.2, "avg": 48.8},
    "lora_all_mod": {"AddSub": 42.0, "AQuA": 15.8, "gsm8k": 39.1, "mawps": 58.5, "MultiArith": 81.3,
                     "SingleEq": 62.9, "SVAMP": 44.9, "avg": 49.2},
    "lora_notk_mod": {"AddSub": 41.5, "AQuA": 16.1, "gsm8k": 38.2, "mawps": 58.4, "MultiArith": 80.7,
                      "SingleEq": 62.3, "SVAMP": 43.8, "avg": 48.7},
}
# report sections every study shows (an empty table is left out), around each study's own
TOP = ("runs", "paired", "pooled")
MIDDLE = ("test_ce", "val_ce", "collapse", "spread")


@dataclass(frozen=True)
class Study:
    """A study as data: its runs, and what its report shows (``report.py`` renders it and knows no
    study by name). ``sections``: report sections in order (``report.SECTIONS``); ``plots``: extra
    per-step series plotted beside the loss; ``primary``: the pre-registered primary test's sentence
    (``{key_seeds}``, ``{seeds}``: their counts), put at the head of the pooled table; ``comparisons``:
    declared ``(label, arm[:final], arm[:final])`` comparisons over seeds, and ``unseen`` the labels
    repeated on items with no seen equation; ``paper``: reference numbers from the paper."""

    runs: Callable[[ExperimentConfig], list[RunSpec]]
    sections: tuple[str, ...] = (*TOP, *MIDDLE, "probe")
    plots: tuple[str, ...] = ()
    primary: str | None = None
    comparisons: tuple[tuple[str, str, str], ...] = ()
    unseen: tuple[str, ...] = ()
    paper: dict | None = None
    declare: Callable[[ExperimentConfig], tuple[tuple[str, str, str], ...]] | None = None  # comparisons from the config
    holm: tuple[str, ...] = ()  # comparison labels adjusted together (a note under the table)
    comparisons_title: str = "Pre-registered comparisons (PLAN.md)"

    def comparisons_of(self, config: ExperimentConfig) -> tuple[tuple[str, str, str], ...]:
        """The declared comparisons: static, or built from the study's settings (its arms)."""
        return self.declare(config) if self.declare else self.comparisons


SPARSITY_PLOT = ("sparsity",)
STUDY = {
    "variants": Study(_variants, (*TOP, *MIDDLE, "paper", "probe"), SPARSITY_PLOT, paper=PAPER_LLAMA7B),
    "motivation": Study(_motivation, (*TOP, *MIDDLE, "probe", "venn")),
    "sparsity": Study(_sparsity, (*TOP, *MIDDLE, "sparsity", "probe"), SPARSITY_PLOT),
    "topk": Study(_topk, (*TOP, *MIDDLE, "probe", "topk_speed"), SPARSITY_PLOT),
    "ablations": Study(_ablations, plots=SPARSITY_PLOT),
    "sweep": Study(_sweep, plots=SPARSITY_PLOT),
    "router_sweep": Study(_router_sweep, (*TOP, *MIDDLE, "router_movement", "probe")),
    "mod_vs_lora": Study(_mod_vs_lora, (*TOP, *MIDDLE, "router_movement", "probe"), primary=(
        "**Primary test (PLAN.md):** `lora_notk_mod` vs `lora_notk` over the {key_seeds} shared seeds, read from the "
        "over-seed columns (MoD is better if the 95% t-interval lies above 0, worse if below, otherwise no difference "
        "was detected at the stated MDE); `mod_uniform` and `mod_prefit` are read the same way over their {seeds} "
        "seeds. The item-level columns are not the test.")),
    "clip_control": Study(_clip_control, (*TOP, "comparisons", "final_member", "unseen", "reproduction", "clipping",
                                          *MIDDLE, "probe"),
                          comparisons=(("C1", "mod_pergroup", "lora_notk"), ("C2", "mod_pergroup", "lora_notk_mod"),
                                       ("C3", "lora_lr1.5x", "lora_notk"), ("C4", "lora_lr2x", "lora_notk"),
                                       ("C5", "mod_pergroup:final", "lora_notk"),
                                       ("C5", "lora_notk_mod_rerun:final", "lora_notk"),
                                       ("C5", "mod_pergroup:final", "mod_pergroup"),
                                       ("C5", "lora_notk_mod_rerun:final", "lora_notk_mod_rerun"),
                                       ("(reference)", "lora_notk_mod", "lora_notk")),
                          unseen=("C1", "C2", "C4"), holm=("C1", "C2", "C3", "C4")),
    "tuned": Study(_tuned, ("tuning", "tests", "runs", "comparisons", "final_member", "unseen", "clipping", "test_ce",
                            "val_ce", "collapse", "spread", "probe"), unseen=("P-unseen",),
                   declare=lambda config: _tuned_secondaries(config),
                   comparisons_title="Secondary comparisons (PLAN.md; unadjusted)"),
}
STUDIES = tuple(STUDY)


def _tuned_secondaries(config: ExperimentConfig) -> tuple[tuple[str, str, str], ...]:
    from .tuning import declared_secondaries

    return declared_secondaries(config)


def plan(study: str, config: ExperimentConfig) -> list[RunSpec]:
    """The runs of a study, baseline first."""
    if study not in STUDY:
        raise ConfigError(f"Unknown study {study!r}; choose one of {', '.join(STUDIES)}.")
    return STUDY[study].runs(config)


def run_train_config(spec: RunSpec, config: ExperimentConfig, run_dir: Path) -> TrainConfig:
    """The TrainConfig of one run: the study's training settings, the run's preset, seed and MoD overrides."""
    return dataclasses.replace(config.train, preset=spec.preset, seed=spec.seed, output_dir=str(run_dir),
                               report_to=["none"], save_steps=20, mod=dataclasses.replace(config.train.mod, **spec.mod),
                               **spec.train)


def arm_of(name: str) -> str:
    """A run's arm: its name without the ``-s<seed>`` suffix."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


def is_baseline(result: dict, base: str = "lora_notk") -> bool:
    """Whether a run belongs to the arm ``base`` (by its name: arms may share a preset)."""
    return arm_of(result["name"]) == base


def arms_vs_lora(results: list[dict], keep=lambda r: True, base: str = "lora_notk") -> dict[str, list[tuple[dict, dict]]]:
    """Each arm other than ``base`` (by :func:`arm_of`) as ``(run, base run of its seed)`` pairs,
    over the results ``keep`` accepts (bases included); arms in first-seen order."""
    bases = {r["seed"]: r for r in results if is_baseline(r, base) and keep(r)}
    arms: dict[str, list[tuple[dict, dict]]] = {}
    for r in results:
        if not is_baseline(r, base) and keep(r) and r["seed"] in bases:
            arms.setdefault(arm_of(r["name"]), []).append((r, bases[r["seed"]]))
    return arms
