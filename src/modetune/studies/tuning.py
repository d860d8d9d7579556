"""Tuned baselines: every arm at its own best learning rate, chosen on validation data only.

The tuning stage scores each arm's runs over its rate grid on validation items (never the test
sets); :func:`select_rates` applies the rule written before the runs, and the choice is recorded
in ``selection.json``, which the confirmatory stage reads. The rule, exactly: for each rate ``r``
of an arm, ``acc(r)`` is the mean over tuning seeds of the validation accuracy (pooled over the
validation items) and ``ce(r)`` the mean over seeds of the token-weighted teacher-forced
cross-entropy of the gold answers; the candidates are the rates with
``acc(r) >= max_r acc(r) - tolerance``, and the selected rate is the candidate with the lowest
``ce(r)`` (without CE rows: the smallest candidate rate).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..mod.config import MoDConfig
from ..train.config import TrainConfig
from ..utils.errors import ConfigError
from ..utils.outputs import write_text
from .config import ExperimentConfig
from .spec import RUN_FIELDS, RunSpec, arm_of


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
            if not grid or any(f <= 0 for f in grid) or len(set(grid)) != len(grid):
                raise ConfigError(f"Arm {text!r}: lr_grid must be distinct positive numbers, got {raw!r}.")
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


def tuned_runs(config: ExperimentConfig) -> list[RunSpec]:
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



VAL_ENTRY = "builtin-tn-val"  # validation items from the held-out templates-and-numbers bucket
SELECTION_NAME = "selection.json"
VAL_EVAL = "eval-val"  # a tuning run's scored validation items, beside the run's other rows
VAL_CE_NAME = "val_ce.jsonl"


def val_items_path(config: ExperimentConfig, root: Path) -> Path:
    return root / f"{VAL_ENTRY}-{config.tune_size}.json"


def builtin_val_items(n: int, test_size: int) -> list[dict]:
    """``n`` generated items of the held-out bucket (split by a hash of template and numbers, so
    none shares its template and numbers with any training item) whose template-and-numbers keys
    differ from those of the ``test_size`` test items (``builtin_arithmetic(test_size, 0, "test",
    "template")``): validation items disjoint from train and test by the split's own key."""
    from ..data.builtin import builtin_arithmetic, template_key

    test_keys = {template_key(r["instruction"]) for r in builtin_arithmetic(test_size, 0, "test", "template")}
    pool = builtin_arithmetic(n + test_size, 1, "test", "template")
    items = [r for r in pool if template_key(r["instruction"]) not in test_keys][:n]
    if len(items) < n:
        raise ConfigError(f"Could only generate {len(items)} validation items disjoint from the test items.")
    return items


def tune_datasets(config: ExperimentConfig, root: Path) -> str:
    """``config.tune_datasets`` with the entry ``builtin-tn-val`` replaced by ``builtin=FILE``, the
    file written once into ``root`` so every tuning run is scored on the same items."""
    entries = [entry.strip() for entry in config.tune_datasets.split(",")]
    if VAL_ENTRY not in entries:
        return config.tune_datasets
    path = val_items_path(config, root)
    if not path.exists():
        write_text(path, json.dumps(builtin_val_items(config.tune_size, config.test_size), indent=1))
    return ",".join(f"builtin={path}" if entry == VAL_ENTRY else entry for entry in entries)


def tune_arm(name: str) -> tuple[str, str] | None:
    """``("mod_global", "lr2x")`` for a tuning run's arm ``tune-mod_global-lr2x``; ``None`` otherwise."""
    if not name.startswith("tune-"):
        return None
    arm, _, rate = name[5:].rpartition("-")
    return arm, rate


def _val_accuracy(result: dict) -> float:
    if "diverged" in result:  # PLAN.md: a diverged rate scores 0
        return 0.0
    flags = [ok for items in result["correct_val"].values() for ok in items.values()]
    return sum(flags) / len(flags)


def _val_ce(result: dict) -> float | None:
    if "diverged" in result:
        return float("inf")
    rows = result.get("val_item_ce")
    if not rows:
        return None
    return sum(ce * tokens for ce, tokens in rows) / sum(tokens for _, tokens in rows)


def tuning_curves(specs: list[RunSpec], results: list[dict]) -> dict[str, list[dict]]:
    """Per arm, one row per rate of its grid (plan order): ``learning_rate``, ``label``, the seeds
    scored, per-seed validation accuracy and CE, their means; ``complete`` when every planned
    tuning run of that rate has its rows."""
    done = {r["name"]: r for r in results if "correct_val" in r}
    curves: dict[str, dict[str, dict]] = {}
    for spec in specs:
        if spec.stage != "tune":
            continue
        arm, label = tune_arm(arm_of(spec.name))
        row = curves.setdefault(arm, {}).setdefault(label, {
            "label": label, "learning_rate": spec.train["learning_rate"], "planned": [], "seeds": [],
            "acc": [], "ce": []})
        row["planned"].append(spec.seed)
        if spec.name in done:
            row["seeds"].append(spec.seed)
            row["acc"].append(_val_accuracy(done[spec.name]))
            row["ce"].append(_val_ce(done[spec.name]))
    out = {}
    for arm, rows in curves.items():
        out[arm] = []
        for row in rows.values():
            ce = [c for c in row["ce"] if c is not None]
            out[arm].append({**row, "complete": sorted(row["seeds"]) == sorted(row["planned"]),
                             "mean_acc": sum(row["acc"]) / len(row["acc"]) if row["acc"] else None,
                             "mean_ce": sum(ce) / len(ce) if ce and len(ce) == len(row["ce"]) else None})
    return out


def select_rate(rows: list[dict], tolerance: float) -> dict:
    """The pre-registered rule (module docstring) over one arm's complete curve."""
    best = max(row["mean_acc"] for row in rows)
    candidates = [row for row in rows if row["mean_acc"] >= best - tolerance - 1e-12]
    if all(row["mean_ce"] is not None for row in candidates):
        chosen = min(candidates, key=lambda row: (row["mean_ce"], row["learning_rate"]))
        why = "lowest validation CE among the rates within tolerance of the best validation accuracy"
    else:
        chosen = min(candidates, key=lambda row: row["learning_rate"])
        why = "smallest rate within tolerance of the best validation accuracy (no CE rows)"
    return {"learning_rate": chosen["learning_rate"], "label": chosen["label"], "mean_acc": chosen["mean_acc"],
            "mean_ce": chosen["mean_ce"], "best_acc": best, "candidates": [row["label"] for row in candidates],
            "rule": why, "curve": [{key: row[key] for key in ("label", "learning_rate", "seeds", "acc", "ce",
                                                              "mean_acc", "mean_ce")} for row in rows]}


def recorded_selection(root: Path) -> dict[str, dict]:
    """The choices recorded in the study's ``selection.json``, per arm (none yet: empty)."""
    path = root / SELECTION_NAME
    return json.loads(path.read_text())["arms"] if path.exists() else {}


def select_rates(specs: list[RunSpec], results: list[dict], config: ExperimentConfig, root: Path,
                 write: bool = True) -> dict[str, dict]:
    """Each arm's selected rate, for the arms whose tuning runs all have rows. A choice already
    recorded in ``selection.json`` must have been made over the arm's grid and tuning seeds of now
    and equal the one its rows give now (else the grid or the rows changed after the choice: an
    error); new choices are added to the file (``write``)."""
    curves = tuning_curves(specs, results)
    chosen = {arm: select_rate(rows, config.select_tolerance) for arm, rows in curves.items()
              if all(row["complete"] for row in rows)}
    path = root / SELECTION_NAME
    recorded = recorded_selection(root)
    for arm, choice in recorded.items():
        was = [(row["label"], sorted(row["seeds"])) for row in choice["curve"]]
        now = [(row["label"], sorted(row["planned"])) for row in curves.get(arm, [])]
        if arm in curves and sorted(was) != sorted(now):
            show = lambda grid: ", ".join(f"{label} (seeds {','.join(map(str, seeds))})" for label, seeds in grid)  # noqa: E731
            raise ConfigError(f"{path}: {arm}'s rate was chosen over {show(was)}; its grid or tuning seeds are now "
                              f"{show(now)}. A grid changes before the choice, not after (delete {SELECTION_NAME} "
                              "only to choose again on purpose).")
        if arm in chosen and chosen[arm]["learning_rate"] != choice["learning_rate"]:
            raise ConfigError(f"{path}: {arm}'s recorded rate {choice['learning_rate']:g} differs from the "
                              f"{chosen[arm]['learning_rate']:g} its tuning rows give now; the rows changed after "
                              f"the choice (delete {SELECTION_NAME} only to choose again on purpose).")
    merged = {**recorded, **chosen}
    if write and chosen and merged != recorded:
        write_text(path, json.dumps({"rule": __doc__.split("The rule, exactly: ")[1].strip(),
                                     "tolerance": config.select_tolerance, "arms": merged}, indent=2))
    return merged


def resolve(specs: list[RunSpec], selection: dict[str, dict]) -> tuple[list[RunSpec], list[RunSpec]]:
    """The confirmatory runs with their arm's selected rate filled in, and those still waiting
    for their arm's tuning stage."""
    ready, waiting = [], []
    for spec in specs:
        if spec.select is None:
            continue
        if spec.select in selection:
            ready.append(dataclasses.replace(spec, train={**spec.train,
                                                          "learning_rate": selection[spec.select]["learning_rate"]}))
        else:
            waiting.append(spec)
    return ready, waiting


# ---------------------------------------------------------------- the report's tuned sections
def plot_curves(curves: dict[str, list[dict]], selection: dict[str, dict], root: Path, filename: str) -> str | None:
    """Validation accuracy and CE against the learning rate (log scale), a line per arm through
    the means over tuning seeds, each seed a small point, the selected rate ringed."""
    from ..utils.plotting import pyplot

    if not any(row["acc"] for rows in curves.values() for row in rows):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for index, (arm, rows) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        for ax, key, mean in ((axes[0], "acc", "mean_acc"), (axes[1], "ce", "mean_ce")):
            scale = 100 if key == "acc" else 1
            points = [(row["learning_rate"], row[mean] * scale) for row in rows if row[mean] is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], "-o", color=colour, label=arm, markersize=4)
            for row in rows:
                ax.scatter([row["learning_rate"]] * len(row[key]), [v * scale for v in row[key] if v is not None],
                           color=colour, s=8, alpha=0.5)
            if arm in selection and selection[arm].get(mean) is not None:
                ax.scatter([selection[arm]["learning_rate"]], [selection[arm][mean] * scale], s=160,
                           facecolors="none", edgecolors=colour, linewidths=1.5)
    rates = sorted({row["learning_rate"] for rows in curves.values() for row in rows})
    for ax, label in zip(axes, ("validation accuracy (%)", "validation CE of the gold answers (nats/token)")):
        ax.set_xscale("log")
        ax.set_xticks(rates, [f"{rate:.2g}" for rate in rates], rotation=45, fontsize=8)  # the grid's rates only
        ax.minorticks_off()
        ax.set_xlabel("learning rate (ringed: selected)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / filename, dpi=100)
    plt.close(fig)
    return filename


def grid_edge(choice: dict, rows: list[dict]) -> str:
    """``"; the top of its grid: ..."`` where the selected rate is the grid's largest (or smallest)
    rate, so the arm's best rate is not bracketed; else ``""``."""
    rates = sorted(row["learning_rate"] for row in rows)
    if len(rates) < 2 or rates[0] < choice["learning_rate"] < rates[-1]:
        return ""
    side, where = ("top", "higher") if choice["learning_rate"] == rates[-1] else ("bottom", "lower")
    return f"; the {side} of its grid: its best rate may lie {where}, not bracketed"


def rates_compared(selection: dict[str, dict]) -> list[str]:
    """Each arm's selected rate against the first arm's (a secondary question of the plan: does
    MoD's best rate sit lower than LoRA's?). Descriptive: a rate chosen over two tuning seeds on a
    coarse grid carries no interval."""
    if len(selection) < 2:
        return []
    (first, base), *others = selection.items()
    words = []
    for arm, choice in others:
        ratio = choice["learning_rate"] / base["learning_rate"]
        relation = "the same as" if ratio == 1 else "below" if ratio < 1 else "above"
        words.append(f"`{arm}` {choice['learning_rate']:g} is {relation} `{first}`'s {base['learning_rate']:g}"
                     + ("" if ratio == 1 else f" ({ratio:.2g}x)"))
    return [f"Selected rates against `{first}`'s: {'; '.join(words)}. A comparison of choices, not a test: each "
            "rate was picked on a coarse grid over the tuning seeds and carries no interval.", ""]


def tuning_section(config: ExperimentConfig, results: list[dict], root: Path) -> list[str]:
    """The whole accuracy-vs-rate curve of every arm (validation items only), the selection and its plot."""
    specs = tuned_runs(config)
    curves = tuning_curves(specs, results)
    selection = recorded_selection(root)
    lines = ["## Tuning stage: validation accuracy against the learning rate", "",
             f"Each arm at every rate of its grid over tuning seeds {', '.join(map(str, config.tune_seeds))}, scored on "
             f"the validation items only (`{config.tune_datasets}`, never the test items). Rule (PLAN.md): among the "
             f"rates whose mean validation accuracy is within {100 * config.select_tolerance:g} "
             f"point{'' if 100 * config.select_tolerance == 1 else 's'} of the arm's "
             "best, the lowest mean validation CE of the gold answers.", "",
             "| arm | rate | learning rate | seeds | val acc per seed (%) | mean val acc (%) | mean val CE | selected |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, rows in curves.items():
        for row in rows:
            mark = "**selected**" if arm in selection and selection[arm]["label"] == row["label"] else ""
            acc = ", ".join(f"{100 * a:.1f}" for a in row["acc"]) or "(no rows yet)"
            mean_acc = "" if row["mean_acc"] is None else f"{100 * row['mean_acc']:.1f}"
            mean_ce = "" if row["mean_ce"] is None else f"{row['mean_ce']:.4f}"
            lines.append(f"| {arm} | {row['label']} | {row['learning_rate']:g} | "
                         f"{', '.join(map(str, row['seeds']))} | {acc} | {mean_acc} | {mean_ce} | {mark} |")
    chosen = [f"`{arm}` {choice['learning_rate']:g} ({choice['label']}{grid_edge(choice, curves.get(arm, []))})"
              for arm, choice in selection.items()]
    lines += ["", f"Selected (`{SELECTION_NAME}`): {', '.join(chosen) if chosen else 'none yet'}.", ""]
    lines += rates_compared(selection)
    plot = plot_curves(curves, selection, root, "tuned-curves.png")
    return lines + ([f"![{plot}]({plot})", ""] if plot else [])


def _pair(test: str) -> tuple[str, str]:
    a, _, b = test.partition(":")
    return a, b


def tests_section(config: ExperimentConfig, results: list[dict]) -> list[str]:
    """The pre-registered primary tests at the selected rates over the confirmatory seeds: the
    difference tests (paired t over seeds, two-sided) and the equivalence tests (TOST at the
    margin), Holm-adjusted together; each with its 95% t-interval, sign test and MDE."""
    from ..utils.stats import holm, paired_t_p, tost
    from .comparisons import compare

    planned = len(config.seeds)
    tests = [("difference", t) for t in config.primary] + [("equivalence", t) for t in config.equivalence]
    measured = []
    for kind, test in tests:
        c = compare(results, *_pair(test))
        if c is None or c["seeds"] < planned:
            continue
        diffs = c["diffs"]
        p = paired_t_p(diffs) if kind == "difference" else tost(diffs, config.equivalence_margin)["p"]
        measured.append((kind, test, c, p, tost(diffs, config.equivalence_margin)))
    if not measured:
        return ["## Primary tests (PLAN.md)", "", f"No primary test has all its {planned} confirmatory seeds yet.", ""]
    adjusted = holm([m[3] for m in measured]) if len(measured) == len(tests) else [float("nan")] * len(measured)
    lines = ["## Primary tests (PLAN.md)", "",
             f"Each arm at its selected rate, paired over the {planned} confirmatory seeds on the same test items. "
             "Difference: two-sided paired t-test over seeds; equivalence: TOST at "
             f"±{100 * config.equivalence_margin:g} points (equivalent iff the 90% interval lies inside the margin). "
             "Holm's adjustment runs over all primary tests together (shown once all have their seeds).", "",
             "| test | A - B | Δ (pts) [95% t-CI] | 90% CI | seeds A better / worse | sign p | t p | TOST p | "
             "Holm p | MDE (pts) | reading |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (kind, test, c, _, eq), adj in zip(measured, adjusted):
        a, b = _pair(test)
        if kind == "difference":
            reading = ("A higher" if adj < 0.05 and c["mean"] > 0 else "A lower" if adj < 0.05
                       else "no difference detected")
        else:
            reading = "equivalent within the margin" if adj < 0.05 else "equivalence not shown"
        lines.append(f"| {kind} | `{a}` - `{b}` | {100 * c['mean']:+.2f} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}] | "
                     f"[{100 * eq['low90']:+.2f}, {100 * eq['high90']:+.2f}] | {c['n_pos']} / {c['n_neg']} | "
                     f"{c['sign_p']:.3f} | {paired_t_p(c['diffs']):.3f} | {eq['p']:.3f} | "
                     f"{'' if adj != adj else format(adj, '.3f')} | {100 * c['mde']:.2f} | {reading} |")
    return lines + [""]


def declared_secondaries(config: ExperimentConfig) -> tuple[tuple[str, str, str], ...]:
    """The tuned study's secondary comparisons: every arm against the first, arms of one preset
    against each other, each MoD arm's final member against its ensemble and against the first
    arm, and the primary tests again on the items with no seen equation (``P-unseen``)."""
    from ..mod.variants import parse_preset

    arms = [parse_arm(text, config.lr_grid) for text in config.arms]
    first = arms[0].name
    rows = [("S-arm", arm.name, first) for arm in arms[1:]]
    rows += [("S-pair", b.name, a.name) for i, a in enumerate(arms) for b in arms[i + 1:]
             if a.preset == b.preset and a.name != first]  # e.g. the two clip scopes of one preset
    mod = [arm.name for arm in arms if parse_preset(arm.preset).mod]
    rows += [("S-final", f"{name}:final", name) for name in mod]
    rows += [("S-final", f"{name}:final", first) for name in mod]
    rows += [("P-unseen", *_pair(test)) for test in (*config.primary, *config.equivalence)]
    return tuple(rows)

