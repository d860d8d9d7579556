"""A study's ``report.md``: accuracy with 95% Wilson intervals (and the majority-class and constant-answer
baselines), paired differences with McNemar's
test against the study's baseline (same items and seeds), pooled-over-seeds tests, answer collapse,
per-study sections and plots. ``report-<study>.md`` is the same text, kept when studies share a folder.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..utils.stats import (
    mcnemar,
    minimum_detectable_effect,
    over_seeds,
    paired_difference_ci,
    paired_over_seeds,
    wilson_interval,
)
from .comparisons import clip_rows, comparison_rows, final_member_rows, reproduction_rows, unseen_rows
from .plan import STUDY, ExperimentConfig, Study, arm_of, arms_vs_lora, is_baseline, smoke_settings
from .plots import plot_loss, plot_paired, plot_series
from .probe_table import probe_rows
from .tuning import tests_section, tuning_section

TOPK_SPEED_NAME = "topk_speed.json"  # written by benchmarks/bench_topk.py into the topk study's folder

def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _accuracy_rows(results: list[dict]) -> tuple[list[str], list[str]]:
    datasets = sorted({d for r in results for d in r.get("correct", {})})
    header = ["run", "trainable", "Δ% vs lora_notk", "train (min)", "val CE ens.", "val CE final"] + datasets + ["avg"]
    base = next((r for r in results if is_baseline(r)), None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_name = {r["name"]: r for r in results}
    for r in results:
        source = by_name.get(r.get("prefit_from") or "")  # a refitted adapter: its source run's parameters and time
        trainable = source["trainable"] if source else r["trainable"]
        delta = "" if base is None else f"{100 * (trainable - base['trainable']) / base['trainable']:+.2f}"
        minutes = f"{r['train_s'] / 60:.1f}" if "train_s" in r else ""
        if source:
            minutes = f"{source.get('train_s', 0) / 60:.1f} + {minutes}"
        cells = [r["name"], f"{trainable:,}" + (f" ({r['trainable']:,} refitted)" if source else ""), delta, minutes,
                 f"{r['val']['ensemble_ce']:.3f}", f"{r['val']['final_ce']:.3f}"]
        accs = []
        for d in datasets:
            flags = list(r.get("correct", {}).get(d, {}).values())
            if flags:
                acc, lo, hi = wilson_interval(sum(flags), len(flags))
                accs.append(acc)
                cells.append(f"{_pct(acc)} [{_pct(lo)}, {_pct(hi)}]")
            else:
                cells.append("")
        cells.append(_pct(statistics.mean(accs)) if accs else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += _baseline_rows(results, datasets, len(header) - len(datasets) - 1)
    if any(r.get("prefit_from") in by_name for r in results):
        lines += ["", "A run refitted from another (`mod_prefit`: its `lora_notk_mod` run of the same seed, router and "
                  "member norms fitted afterwards on the frozen members) counts that adapter's parameters (in brackets: "
                  "those the refit trains); its time is the source run's training + the refit."]
    return lines, datasets


def _baseline_rows(results: list[dict], datasets: list[str], blank: int) -> list[str]:
    """Two reference rows per accuracy table, from the runs' scored rows: the majority class
    (always the test set's most frequent gold answer: the best any constant answer can do) and
    the constant answer (always the answer the runs predict most often, pooled over runs)."""
    from collections import Counter

    from ..eval.results import read_results

    majority, constant = [], []
    for d in datasets:
        rows = {}
        predicted: Counter = Counter()
        for r in results:
            path = Path(r.get("eval_dir", "/nonexistent")) / f"{d}.jsonl"
            if path.exists():
                for row in read_results(path):
                    rows.setdefault(row["id"], str(row["gold"]))
                    predicted[str(row["extracted"])] += 1
        if not rows or not predicted:
            majority.append("")
            constant.append("")
            continue
        gold = Counter(rows.values())
        majority.append(_pct(gold.most_common(1)[0][1] / len(rows)))
        constant.append(_pct(gold.get(predicted.most_common(1)[0][0], 0) / len(rows)))
    if not any(majority):
        return []
    pad = [""] * (blank - 1)
    return ["| (majority class: most frequent gold answer) | " + " | ".join(pad + majority) + " | |",
            "| (constant answer: the runs' most frequent prediction) | " + " | ".join(pad + constant) + " | |"]


def _paired_rows(results: list[dict], datasets: list[str]) -> list[str]:
    """Each run vs the baseline (``lora_notk``, same seed): pooled over datasets, same items."""
    lines = ["| run | vs | items | Δ acc (pts) [95% CI] | only run / only base | McNemar p |", "|---|---|---|---|---|---|"]
    bases = {r["seed"]: r for r in results if is_baseline(r) and r.get("correct")}
    for r in results:
        base = bases.get(r["seed"])
        if base is None or r is base or not r.get("correct"):
            continue
        a, b = [], []
        for d in datasets:
            common = sorted(set(r["correct"].get(d, {})) & set(base["correct"].get(d, {})))
            a += [r["correct"][d][i] for i in common]
            b += [base["correct"][d][i] for i in common]
        if not a:
            continue
        diff, lo, hi = paired_difference_ci(a, b)
        only_base, only_run, p = mcnemar(a, b)
        verdict = "" if p < 0.05 else " (no significant difference)"
        lines.append(f"| {r['name']} | {base['name']} | {len(a)} | {100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                     f"{only_run} / {only_base} | {p:.3f}{verdict} |")
    return lines


def _pooled_rows(results: list[dict], datasets: list[str]) -> list[str]:
    """Variants run with several seeds vs ``lora_notk`` with the same seeds, all datasets
    pooled: per-item mean difference over seeds, bootstrap over items, exact sign test."""
    lines = []  # one group per arm (the run name without its seed: arms may share preset and MoD fields)
    for arm, pairs in arms_vs_lora(results, lambda r: r.get("correct")).items():
        if len(pairs) < 2:
            continue
        runs, bases = [r for r, _ in pairs], {r["seed"]: base for r, base in pairs}
        items = [(d, i) for d in datasets for i in sorted(set.intersection(
            *(set(x["correct"].get(d, {})) for r in runs for x in (r, bases[r["seed"]]))))]
        a = [[r["correct"][d][i] for d, i in items] for r in runs]
        b = [[bases[r["seed"]]["correct"][d][i] for d, i in items] for r in runs]
        diff, lo, hi, n_pos, n_neg, p = paired_over_seeds(a, b)
        verdict = "" if p < 0.05 else " (no significant difference)"
        seeds = over_seeds([sum(x) / len(x) for x in a], [sum(y) / len(y) for y in b])
        mde = minimum_detectable_effect(seeds["sd"], seeds["seeds"])
        reading = ("higher (interval above 0)" if seeds["low"] > 0 else "lower (interval below 0)"
                   if seeds["high"] < 0 else "no difference detected (interval spans 0)")
        lines.append(f"| {arm} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{len(items)} | {100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {n_pos} / {n_neg} | "
                     f"{p:.3f}{verdict} | {100 * seeds['mean']:+.1f} [{100 * seeds['low']:+.1f}, "
                     f"{100 * seeds['high']:+.1f}] | {seeds['n_pos']} / {seeds['n_neg']} | {seeds['sign_p']:.3f} | "
                     f"{100 * mde:.1f} | {reading} |")
    if not lines:
        return []
    return ["## Pooled over seeds", "", "Item-level (the first three result columns): per item, the difference in "
            "accuracy averaged over the seeds; 95% bootstrap interval over items (seeds kept together) and an exact "
            "sign test over the items where the variants differ on average. Training-seed variance is not in it. "
            "Over seeds (the last five; the seed is the unit): per seed, the accuracy difference on the same items; "
            "95% t-interval over the seeds, exact sign test over the seeds, the minimum detectable effect of a "
            "paired t-test at alpha 0.05 with power 0.8 for this many seeds, at the observed spread of the per-seed "
            "differences, and what the interval says (a difference smaller than the MDE may be there unseen).", "",
            "| variant vs lora_notk | seeds | items | item-level Δ acc (pts) [95% CI] | items better / worse | "
            "item sign test p | over seeds Δ (pts) [95% t-CI] | seeds better / worse | seed sign test p | MDE (pts) | "
            "over seeds, reading |", "|---|---|---|---|---|---|---|---|---|---|---|", *lines, ""]


def _test_ce_rows(results: list[dict]) -> list[str]:
    """The secondary metric: each run's mean teacher-forced CE of the gold responses of the test
    items (``test_ce.jsonl``; per item nats/token, averaged over items), and per arm vs
    ``lora_notk`` with the same seeds the paired difference over seeds (t-interval, sign test)."""
    runs = [r for r in results if r.get("test_ce")]
    bases = {r["seed"]: r for r in runs if is_baseline(r)}
    if not runs:
        return []
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(arm_of(r["name"]), []).append(r)
    lines = ["## Teacher-forced CE on the test items (secondary)", "",
             "Per run, the mean over test items of the gold response's cross-entropy (nats per token; lower is "
             "better). Against `lora_notk`: per seed the difference on the same items, 95% t-interval over seeds "
             "and the exact sign test over seeds.", "",
             "| arm | seeds | items | mean CE per run | Δ CE vs lora_notk [95% t-CI] | seeds lower / higher | sign p |",
             "|---|---|---|---|---|---|---|"]
    for arm, group in groups.items():
        means = [sum(r["test_ce"].values()) / len(r["test_ce"]) for r in group]
        cells = [arm, ", ".join(str(r["seed"]) for r in group), str(len(group[0]["test_ce"])),
                 " / ".join(f"{m:.4f}" for m in means)]
        paired = [r for r in group if r["seed"] in bases and r is not bases[r["seed"]]]
        if len(paired) >= 2:
            diffs = []
            for r in paired:
                common = sorted(set(r["test_ce"]) & set(bases[r["seed"]]["test_ce"]))
                diffs.append(sum(r["test_ce"][i] - bases[r["seed"]]["test_ce"][i] for i in common) / len(common))
            seeds = over_seeds(diffs, [0.0] * len(diffs))
            cells += [f"{seeds['mean']:+.4f} [{seeds['low']:+.4f}, {seeds['high']:+.4f}]",
                      f"{seeds['n_neg']} / {seeds['n_pos']}", f"{seeds['sign_p']:.3f}"]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _val_ce_rows(results: list[dict]) -> list[str]:
    """Validation CE (``val.json``: the same held-out training records per seed in every arm) per
    arm vs ``lora_notk`` of the same seed: mean difference, t-interval and sign test over seeds."""
    lines = []
    for arm, pairs in arms_vs_lora(results).items():
        cells = [arm, ", ".join(str(r["seed"]) for r, _ in pairs)]
        for key in ("ensemble_ce", "final_ce"):
            d = over_seeds([r["val"][key] for r, _ in pairs], [base["val"][key] for _, base in pairs])
            cells.append(f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] ({d['n_neg']} / {d['n_pos']}, "
                         f"p {d['sign_p']:.3f})")
        lines += [f"| {' | '.join(cells)} |"] if len(pairs) >= 2 else []
    return ["## Validation CE over seeds (secondary)", "", "Per seed, the arm's validation CE minus `lora_notk`'s "
            "(nats per answer token); 95% t-interval over seeds (seeds lower / higher, exact sign test p).", "",
            "| arm vs lora_notk | seeds | Δ ensemble CE | Δ final member CE |", "|---|---|---|---|", *lines,
            ""] if lines else []


def _collapse_rows(results: list[dict]) -> list[str]:
    """Per run and multiple-choice dataset, the share of the most frequent extracted answer
    (and the gold majority share): near 100% means a near-constant predictor whose accuracy
    is the label prior, not a skill."""
    from collections import Counter

    from ..eval.datasets import get_dataset
    from ..eval.results import read_results

    table, names = {}, []
    for r in results:
        for path in sorted(Path(r.get("eval_dir", "/nonexistent")).glob("*.jsonl")):
            if ".member" in path.name or get_dataset(path.stem).kind == "numeric":
                continue
            rows = read_results(path)
            top = Counter(str(row["extracted"]) for row in rows).most_common(1)[0][1] / len(rows)
            gold = Counter(str(row["gold"]) for row in rows).most_common(1)[0][1] / len(rows)
            table.setdefault(r["name"], {})[path.stem] = (top, gold)
            names.append(path.stem)
    if not table:
        return []
    names = sorted(set(names))
    first = next(iter(table.values()))
    lines = ["## Answer collapse", "", "Share (%) of the most frequent predicted answer per multiple-choice set; "
             "the last row is the most frequent gold answer's share. Near 100% means a near-constant predictor, "
             "whose accuracy measures the label prior rather than the task.", "",
             "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(_pct(row[n][0]) if n in row else "" for n in names) + " |")
    lines += ["| (gold majority) | " + " | ".join(_pct(first[n][1]) if n in first else "" for n in names) + " |", ""]
    return lines


def command_line(study: str, config: ExperimentConfig) -> str:
    """The ``modetune experiment`` command that reproduces ``config`` (non-default fields as flags)."""
    import shlex

    parts = ["modetune", "experiment", study] + (["--smoke"] if config.smoke else [])
    default = ExperimentConfig.from_dict(smoke_settings(study)) if config.smoke else ExperimentConfig()
    default, extra = default.to_dict(), {}
    for name, value in config.to_dict().items():
        invocation = name in ("only", "report_only", "smoke", "jobs")  # how this call ran, not what the study is
        if invocation or value == default.get(name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, dict):
            extra[name] = value
        elif isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            text = ",".join(map(str, value)) if isinstance(value, list) else "none" if value is None else str(value)
            parts += [flag, text]
    return shlex.join(parts) + (f"  # plus {extra}" if extra else "")


def _complete_comparisons(results: list[dict], missing: list[str]) -> str:
    """Which comparisons against ``lora_notk`` have all their planned runs (a missing run of the
    arm or of ``lora_notk`` leaves a comparison open)."""
    open_arms = {arm_of(m) for m in missing}
    done = [] if "lora_notk" in open_arms else [f"`{arm}` vs `lora_notk` ({len(pairs)} seed{'s' * (len(pairs) != 1)})"
                                                for arm, pairs in arms_vs_lora(results).items() if arm not in open_arms]
    rule = "The study's decision rules apply to a comparison once all its planned runs have rows"
    return f"{rule}; complete: {', '.join(done)}. The others are not read." if done else f"{rule}; none has yet."


@dataclass
class Context:
    """What a report section reads: the study's declaration, its settings, the runs' results, the folder."""

    study: Study
    config: ExperimentConfig
    results: list[dict]
    root: Path
    datasets: list[str]
    tuning: list[dict]  # a tuned study's tuning runs (validation items only); the other sections read results


def _runs_section(c: Context) -> list[str]:
    table, _ = _accuracy_rows(c.results)
    return ["## Runs", "", "Accuracy in % with 95% Wilson intervals; validation cross-entropy "
            "is teacher-forced, nats per answer token, on the held-out validation split.", "", *table, ""]


def _paired_section(c: Context) -> list[str]:
    paired = _paired_rows(c.results, c.datasets)
    return ["## Paired comparisons", "", *paired, ""] if len(paired) > 2 else []


def _pooled_section(c: Context) -> list[str]:
    pooled = _pooled_rows(c.results, c.datasets)
    if pooled and c.study.primary:  # the pre-registered reading (PLAN.md)
        pooled[2:2] = [c.study.primary.format(key_seeds=len(c.config.key_seeds), seeds=len(c.config.seeds)), ""]
    return pooled


SECTIONS = {  # a study's declared sections (plan.Study.sections), by name
    "runs": _runs_section,
    "paired": _paired_section,
    "pooled": _pooled_section,
    "comparisons": lambda c: comparison_rows(c.study.table_comparisons(c.config), c.results, c.study.holm,
                                             c.study.comparisons_title),
    "final_member": lambda c: final_member_rows(c.results),
    "unseen": lambda c: unseen_rows(c.study.comparisons_of(c.config), c.study.unseen, c.results, c.root),
    "tuning": lambda c: tuning_section(c.config, c.tuning, c.root),
    "tests": lambda c: tests_section(c.config, c.results),
    "reproduction": lambda c: reproduction_rows(c.results),
    "clipping": lambda c: clip_rows(c.results),
    "test_ce": lambda c: _test_ce_rows(c.results),
    "val_ce": lambda c: _val_ce_rows(c.results),
    "collapse": lambda c: _collapse_rows(c.results),
    "spread": lambda c: _spread_rows(c.results),
    "paper": lambda c: _paper_rows(c.study.paper),
    "sparsity": lambda c: _sparsity_rows(c.results, c.config.train.mod.k),
    "router_movement": lambda c: _router_movement_rows(c.results, c.config.train.mod.k),
    "probe": lambda c: probe_rows(c.results, c.root),
    "venn": lambda c: _motivation_venn(c.results, c.root),
    "topk_speed": lambda c: _topk_speed_rows(c.root),
}
SERIES = {"sparsity": "routing sparsity (share of weights < 1e-5)"}  # the per-step series a study may plot


def write_study_report(study: str, config: ExperimentConfig, results: list[dict], root: Path, seconds: float,
                       missing: list[str] | None = None) -> Path:
    """Write ``report.md`` (and ``report-<study>.md``) of a study into its folder ``root``: the
    sections its declaration names (``plan.STUDY[study]``), then its plots; ``missing`` names the
    planned runs without rows (the report then says it is partial)."""
    declared = STUDY[study]
    tuning = [r for r in results if r["name"].startswith("tune-")]
    lines = _header_lines(study, config, results, seconds)
    results = [r for r in results if not r["name"].startswith("tune-")]
    if missing:
        tune_missing = [m for m in missing if m.startswith("tune-")]
        other_missing = [m for m in missing if not m.startswith("tune-")]
        staged = bool(tuning or tune_missing)  # a study with a tuning stage counts its two stages apart
        counts = (f"{len(tuning)} of {len(tuning) + len(tune_missing)} tuning runs and " if staged else "") + \
            f"{len(results)} of {len(results) + len(other_missing)} {'confirmatory' if staged else 'planned'} runs"
        lines += [f"**Partial report: {counts} have rows.** {_complete_comparisons(results, other_missing)} "
                  f"Without rows yet: {', '.join(missing)}.", ""]
    context = Context(declared, config, results, root, _accuracy_rows(results)[1], tuning)
    plots = [plot_loss(results, root, f"{study}-loss.png"), plot_paired(results, root, f"{study}-paired.png")]
    plots += [plot_series(results, root, key, SERIES[key], f"{study}-{key}.png") for key in declared.plots]
    for name in declared.sections:
        lines += SECTIONS[name](context)
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots if p]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (root / f"report-{study}.md").write_text(path.read_text())  # kept when another study reuses the folder
    return path


def _header_lines(study: str, config: ExperimentConfig, results: list[dict], seconds: float) -> list[str]:
    train = config.train
    return [f"# Study: {study}{' (smoke setting)' if config.smoke else ''}", "",
            f"Command: `{command_line(study, config)}`; settings in `experiment.json`.",
            f"Model `{train.model}`; training data `{train.data}`; budget: {train.num_epochs:g} epoch(s)"
            f"{f', at most {train.max_steps} steps' if train.max_steps > 0 else ''}, global batch {train.batch_size},"
            f" lr {train.learning_rate:g}, cutoff {train.cutoff_len}, LoRA r={train.lora_r}; k={train.mod.k}; "
            f"MoD overrides {config.mod_overrides() or 'none'}.",
            (f"Evaluation: `{config.datasets}` (first {config.eval_limit or 'all'} items each), "
             f"{'greedy' if config.num_beams == 1 else f'beam search ({config.num_beams})'} decoding. "
             if any("correct" in r for r in results) else
             "No test item scored yet: the tuning stage scores validation items only. "
             if any(r["name"].startswith("tune-") for r in results) else
             "No test-set evaluation in this study (validation cross-entropy only). ") +
            f"Wall-clock: {sum(r.get('train_s', 0) for r in results) / 60:.1f} min of training and "
            f"{sum(r.get('eval_s', 0) for r in results) / 60:.1f} min of evaluation"
            f"{_final_minutes(results)} over these runs, as measured when each ran; {seconds / 60:.1f} min in this "
            "invocation.",
            *([f"Only these runs of the study: {', '.join(config.only)}.", ""] if config.only else [""])]


def _final_minutes(results: list[dict]) -> str:
    """The final-member evaluations' time, named apart from the ensemble's (when any ran)."""
    minutes = sum(r.get("eval_final_s", 0) for r in results) / 60
    return f" plus {minutes:.1f} min scoring the final member alone" if minutes else ""


def _spread_rows(results: list[dict]) -> list[str]:
    seeds = {}
    for r in results:  # by arm: arms may share preset and MoD fields (mod_prefit and lora_notk_mod)
        seeds.setdefault(arm_of(r["name"]), []).append(r)
    spread = [(arm, rs) for arm, rs in seeds.items() if len(rs) > 1 and all(x.get("correct") for x in rs)]
    if not spread:
        return []
    lines = ["## Spread across seeds", "", "| arm | seeds | mean avg acc | sd |", "|---|---|---|---|"]
    for arm, rs in spread:
        avgs = [statistics.mean(sum(f.values()) / len(f) for f in r["correct"].values()) for r in rs]
        lines.append(f"| {arm} | {len(rs)} | {_pct(statistics.mean(avgs))} | {_pct(statistics.stdev(avgs))} |")
    return lines + [""]


def _paper_rows(paper: dict | None) -> list[str]:
    if not paper:
        return []
    first = next(iter(paper.values()))
    lines = ["## The paper's numbers (LLaMA-7B, math_10k, beam search), for reference", "",
             "Arithmetic accuracy from the poster; it gives no per-dataset commonsense numbers.", "",
             "| variant | " + " | ".join(first) + " |", "|---|" + "---|" * len(first)]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row.values()) + " |" for name, row in paper.items()]
    return lines + [""]


def _sparsity_rows(results: list[dict], k: int) -> list[str]:
    lines = ["## Routing sparsity over training tokens", "", "| run | member | mean weight | sparsity |",
             "|---|---|---|---|"]
    for r in results:
        last = [row for row in r["log"] if "router_0" in row][-5:]
        for i in range(k):
            if last:
                w = statistics.mean(row[f"router_{i}"] for row in last)
                sp = statistics.mean(row[f"sparsity_{i}"] for row in last)
                lines.append(f"| {r['name']} | {i} (layer N-{k - 1 - i}) | {w:.3f} | {sp:.3f} |")
    return lines + [""]


def _router_movement_rows(results: list[dict], k: int) -> list[str]:
    """How far each run's router moved (means over its last five logged steps): mean weight per
    member, the entropy of the weights (log k = uniform), and the share of tokens on which a
    non-final member gets the largest weight."""
    lines = ["## Router movement (last five logged steps)", "",
             f"| run | val CE ens. | val CE final | mean weights (shallow -> final) | entropy (max {math.log(k):.3f}) | "
             "share non-final top |", "|---|---|---|---|---|---|"]
    for r in results:
        last = [row for row in r["log"] if "router_0" in row][-5:]
        if not last:
            continue
        def mean(key: str, last: list[dict] = last) -> float:
            values = [row[key] for row in last if key in row]
            return statistics.mean(values) if values else float("nan")

        weights = ", ".join(f"{mean(f'router_{i}'):.3f}" for i in range(k))
        lines.append(f"| {r['name']} | {r['val']['ensemble_ce']:.4f} | {r['val']['final_ce']:.4f} | [{weights}] | "
                     f"{mean('router_entropy'):.3f} | {mean('router_nonfinal_top'):.3f} |")
    return lines + [""]


def topk_speed_markdown(timings: dict[str, list[float]]) -> str:
    """The dense vs Top-K wall-clock table from ``{routing: (train step s, generation s)}``."""
    dense = timings["dense"]
    lines = ["| routing | train step (s) | dense / this | generation, 24 tokens (s) | dense / this |",
             "|---|---|---|---|---|"]
    for label, (step, gen) in timings.items():
        lines.append(f"| {label} | {step:.3f} | {dense[0] / step:.2f}x | {gen:.3f} | {dense[1] / gen:.2f}x |")
    return "\n".join(lines) + ("\n\nAcceleration ratio = wall-clock of dense routing / wall-clock of Top-K "
                               "routing on the same work. With the one-projection shortcut every member is "
                               "still computed, so Top-K routing is not expected to be faster here.")


def _topk_speed_rows(root: Path) -> list[str]:
    """The wall-clock section, when ``benchmarks/bench_topk.py`` has measured it into the study folder."""
    path = root / TOPK_SPEED_NAME
    if not path.exists():
        return []
    return ["## Dense vs Top-K routing: wall-clock", "", topk_speed_markdown(json.loads(path.read_text())), ""]


def _motivation_venn(results: list[dict], root: Path) -> list[str]:
    """The motivation figure: items solved with the loss on layer N, N-1, N-2 (3-way Venn)."""
    from ..eval.results import solved

    lines = ["## Solved items: loss on layer N, N-1, N-2", ""]
    runs = [r for r in results if r.get("eval_dir")][:3]
    labels = ["N" if r["preset"].endswith("_0") else f"N-{r['preset'].rsplit('_', 1)[-1]}" for r in runs]
    for dataset in sorted({d for r in runs for d in r.get("correct", {})}):
        paths = [Path(r["eval_dir"]) / f"{dataset}.jsonl" for r in runs]
        if len(paths) < 2 or not all(p.exists() for p in paths):
            continue
        result = solved(paths, labels=labels, dataset=dataset, output_dir=root / "venn")
        lines += [result["markdown"], ""]
        if "png" in result.get("files", {}):
            lines += [f"![{dataset}]({Path(result['files']['png']).relative_to(root)})", ""]
    return lines
