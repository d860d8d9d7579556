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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..train.config import TrainConfig
from ..utils.errors import ConfigError
from .config import ExperimentConfig
from .spec import RunSpec, arm_of
from .tuning import declared_secondaries, tuned_runs

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


def smoke_settings(study: str) -> dict:
    """The tiny setting of ``study`` (``--smoke``): the fields it sets, beneath whatever the user sets."""
    return {**SMOKE, **SMOKE_STUDY.get(study, {})}


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
    repeated on items with no seen equation (``unseen_only``: shown on those items only, not in the
    comparisons table); ``paper``: reference numbers from the paper."""

    runs: Callable[[ExperimentConfig], list[RunSpec]]
    sections: tuple[str, ...] = (*TOP, *MIDDLE, "probe")
    plots: tuple[str, ...] = ()
    primary: str | None = None
    comparisons: tuple[tuple[str, str, str], ...] = ()
    unseen: tuple[str, ...] = ()
    unseen_only: bool = False
    paper: dict | None = None
    declare: Callable[[ExperimentConfig], tuple[tuple[str, str, str], ...]] | None = None  # comparisons from the config
    holm: tuple[str, ...] = ()  # comparison labels adjusted together (a note under the table)
    comparisons_title: str = "Pre-registered comparisons (PLAN.md)"

    def comparisons_of(self, config: ExperimentConfig) -> tuple[tuple[str, str, str], ...]:
        """The declared comparisons: static, or built from the study's settings (its arms)."""
        return self.declare(config) if self.declare else self.comparisons

    def table_comparisons(self, config: ExperimentConfig) -> list[tuple[str, str, str]]:
        """The declared comparisons of the comparisons table: all of them, less the ``unseen`` labels
        when those are shown on the unseen-equation items only (``unseen_only``)."""
        return [d for d in self.comparisons_of(config) if not (self.unseen_only and d[0] in self.unseen)]


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
    "tuned": Study(tuned_runs, ("tuning", "tests", "runs", "comparisons", "final_member", "unseen", "clipping", "test_ce",
                            "val_ce", "collapse", "spread", "probe"), unseen=("P-unseen",),
                   unseen_only=True, declare=declared_secondaries,
                   comparisons_title="Secondary comparisons (PLAN.md; unadjusted)"),
}
STUDIES = tuple(STUDY)


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
