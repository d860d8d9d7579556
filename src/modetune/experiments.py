"""The paper's studies as one command each: `modetune experiment STUDY [--smoke] [--config X.yaml]`.

Each study is a list of runs (a preset plus MoD overrides and a seed). Every run trains
(resuming from its checkpoints), measures held-out teacher-forced cross-entropy of the
ensemble and of each member on the validation split, and evaluates on the test sets
(resuming from its rows); finished steps are skipped, so a study can run in parts and be
interrupted at any moment. ``report.md`` (and ``report-<study>.md``, which survives when
studies share a folder) collects tables (accuracy with 95% bootstrap
intervals, paired differences with McNemar's test against the study's baseline, same
items and seeds) and plots.

Studies (SPEC.md, "Measurements the paper reports"): ``variants``, ``motivation``,
``sparsity``, ``topk``, ``ablations``, and ``sweep`` (settle the MoD defaults on the
validation split before the main study).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import MoDConfig
from .stats import accuracy_ci, mcnemar, paired_difference_ci, paired_over_seeds

STUDIES = ("variants", "motivation", "sparsity", "topk", "ablations", "sweep")
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


@dataclass
class ExperimentConfig:
    """The budget and data of a study; every field is a YAML key and a CLI flag."""

    model: str = "default"
    data: str = "../shared/data/math-split/train.json"
    num_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    micro_batch_size: int = 4
    learning_rate: float = 3e-4
    warmup_steps: int = 10
    cutoff_len: int = 256
    val_size: int = 64
    lora_r: int = 32
    lora_alpha: int = 64
    k: int = 3
    seeds: list[int] = field(default_factory=lambda: [42])
    key_seeds: list[int] = field(default_factory=lambda: [42, 43, 44])  # lora_notk vs lora_notk_mod
    k_values: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])  # the topk study's ensemble sizes
    datasets: str = "gsm8k,SVAMP,MultiArith,AddSub,SingleEq,AQuA"
    data_dir: str | None = "../shared/data/math-split"
    eval_limit: int | None = 200
    eval_batch_size: int = 16
    max_new_tokens: int | None = None
    num_beams: int = 1
    bf16: bool = False
    only: list[str] | None = None  # run only these runs of the study (by name), e.g. to run it in parts
    mod: dict = field(default_factory=dict)  # MoD fields for every MoD run (e.g. the sweep's choice)
    output_dir: str | None = None  # default runs/experiments/<study>

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown experiment field(s): {', '.join(unknown)}.")
        return cls(**data)


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


def plan(study: str, config: ExperimentConfig) -> list[RunSpec]:
    """The runs of a study, baseline first."""
    k = config.k
    if study == "variants":
        runs = []
        for preset in ("lora_notk", "lora_notk_mod", "lora_all", "lora_all_mod", "mod_only"):
            seeds = config.key_seeds if preset in ("lora_notk", "lora_notk_mod") else config.seeds[:1]
            runs += [RunSpec(f"{preset}-s{seed}", preset, seed) for seed in seeds]
        return runs
    if study == "motivation":
        return [RunSpec(f"lora_layer_{j}-s{s}", f"lora_layer_{j}", s) for j in range(3) for s in config.seeds]
    if study == "sparsity":
        return [RunSpec(f"{p}-s{s}", p, s, evaluate=False) for p in ("lora_notk_mod", "lora_all_mod")
                for s in config.seeds]
    if study == "topk":
        seed = config.seeds[0]
        runs = [RunSpec(f"lora_notk-s{seed}", "lora_notk", seed), RunSpec(f"lora_notk_mod-s{seed}", "lora_notk_mod", seed)]
        runs += [RunSpec(f"topk{K}-s{seed}", "lora_notk_mod", seed, {"top_k": K}) for K in range(1, k)]  # K = k: dense
        runs += [RunSpec(f"k{kk}-s{seed}", "lora_notk_mod", seed, {"k": kk}) for kk in config.k_values if kk != k]
        return runs
    if study == "ablations":
        seed = config.seeds[0]
        return [RunSpec(f"lora_notk-s{seed}", "lora_notk", seed), RunSpec(f"lora_notk_mod-s{seed}", "lora_notk_mod", seed),
                RunSpec(f"no_distill-s{seed}", "lora_notk_mod", seed, {"distill_lambda": 0.0}),
                RunSpec(f"no_member_norms-s{seed}", "lora_notk_mod", seed, {"member_norms": False})]
    if study == "sweep":
        seed = config.seeds[0]
        runs = [RunSpec(f"lora_notk-s{seed}", "lora_notk", seed, evaluate=False)]
        for lam in (0.0, 0.1, 1.0):
            for init in ("uniform", "final"):
                for body in ((True,) if lam == 0 else (True, False)):
                    name = f"lam{lam:g}-{init}-{'body' if body else 'normsonly'}-s{seed}"
                    runs.append(RunSpec(name, "lora_notk_mod", seed, {"distill_lambda": lam, "router_init": init,
                                                                       "distill_through_body": body}, False))
        return runs
    raise ValueError(f"Unknown study {study!r}; choose one of {', '.join(STUDIES)}.")


# ---------------------------------------------------------------- one run
def _device() -> str | None:
    return "cuda" if torch.cuda.is_available() else None


def _train_config(spec: RunSpec, config: ExperimentConfig, run_dir: Path):
    from .training import TrainConfig

    mod = {"k": config.k, **config.mod, **spec.mod}
    return TrainConfig.from_dict({
        "model": config.model, "preset": spec.preset, "data": config.data, "num_epochs": config.num_epochs,
        "max_steps": config.max_steps, "batch_size": config.batch_size, "micro_batch_size": config.micro_batch_size,
        "learning_rate": config.learning_rate, "warmup_steps": config.warmup_steps, "cutoff_len": config.cutoff_len,
        "val_size": config.val_size, "lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "seed": spec.seed,
        "output_dir": str(run_dir), "report_to": ["none"], "save_steps": 20, "bf16": config.bf16, **mod})


def validation_metrics(adapter: Path, train_config) -> dict:
    """Held-out teacher-forced cross-entropy (nats/token) of the ensemble and of each member
    on the run's validation split: the cheap primary metric for sweeps."""
    from .data import load_training_records, split_validation, tokenize_records
    from .evaluation import load_for_eval

    records = load_training_records(train_config.data, train_config.max_records, train_config.seed)
    _, val = split_validation(records, train_config.val_size, train_config.seed)
    model, tokenizer, info = load_for_eval(train_config.model, adapter, device=_device())
    rows = tokenize_records(val, tokenizer, train_config.cutoff_len, train_config.train_on_inputs,
                            train_config.prompt_style)
    total, ensemble, members = 0, 0.0, None
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=model.device)
            labels = torch.tensor([row["labels"]], device=model.device)
            out = model(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            total += n
            ensemble += float(out.loss if getattr(out, "task_loss", None) is None else out.task_loss) * n
            ce = getattr(out, "member_ce", None)
            if ce is not None:
                members = [m + float(c) * n for m, c in zip(members or [0.0] * len(ce), ce)]
    result = {"tokens": total, "ensemble_ce": ensemble / total}
    result["member_ce"] = [m / total for m in members] if members else None
    result["final_ce"] = result["member_ce"][-1] if members else result["ensemble_ce"]
    return result


IGNORED_FIELDS = {"output_dir", "report_to", "save_steps", "save_total_limit", "logging_steps"}


def _check_same_run(run_dir: Path, train_config) -> None:
    """Refuse to reuse a run folder trained with other settings (studies share run folders
    when they share an ``output_dir``; a changed budget must not silently reuse old runs).
    MoD fields are ignored for presets without MoD (``lora_notk``, ``lora_all``)."""
    from .variants import parse_preset

    saved_path = run_dir / "adapter" / "train_config.json"
    if not saved_path.exists():
        return
    saved, wanted = json.loads(saved_path.read_text()), train_config.to_dict()
    ignored = set(IGNORED_FIELDS)
    if not parse_preset(wanted["preset"]).mod:
        ignored |= {f.name for f in dataclasses.fields(MoDConfig)}
    differ = sorted(key for key in set(saved) | set(wanted)
                    if key not in ignored and saved.get(key) != wanted.get(key))
    if differ:
        detail = ", ".join(f"{key}: {saved.get(key)!r} != {wanted.get(key)!r}" for key in differ[:4])
        raise ValueError(f"{run_dir} was trained with other settings ({detail}); use another --output-dir "
                         f"or delete that folder.")


def run_one(spec: RunSpec, config: ExperimentConfig, root: Path) -> dict:
    """Train, validate and evaluate one run, skipping whatever is already done."""
    from .evaluation import EvalConfig, evaluate, load_for_eval
    from .model import parameter_counts
    from .training import read_log, train

    run_dir = root / spec.name
    adapter = run_dir / "adapter"
    train_config = _train_config(spec, config, run_dir)
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    _check_same_run(run_dir, train_config)
    if not (adapter / "train_config.json").exists():
        start = time.perf_counter()
        resume = any(run_dir.glob("checkpoint-*"))
        summary = train(train_config, resume=resume)
        timing["train_s"] = timing.get("train_s", 0.0) + time.perf_counter() - start
        timing["trainable"], timing["total"] = summary["trainable"], summary["total"]
        timing_path.write_text(json.dumps(timing, indent=2))
    val_path = run_dir / "val.json"
    if not val_path.exists():
        val_path.write_text(json.dumps(validation_metrics(adapter, train_config), indent=2))
    result = {"name": spec.name, "preset": spec.preset, "seed": spec.seed, "mod": spec.mod,
              "val": json.loads(val_path.read_text()), "log": read_log(run_dir), **timing}
    if "trainable" not in result:
        model, _, _ = load_for_eval(config.model, adapter)
        result["trainable"], result["total"] = parameter_counts(model)
    if spec.evaluate:
        eval_dir = run_dir / "eval"
        if not (eval_dir / "summary.json").exists():  # written when the evaluation completes
            start = time.perf_counter()
            model, tokenizer, info = load_for_eval(config.model, adapter, device=_device())
            eval_config = EvalConfig(batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
                                     num_beams=config.num_beams, limit=config.eval_limit, progress=True)
            evaluate(model, tokenizer, config.datasets, eval_config, eval_dir, data_dir=config.data_dir, info=info,
                     label=spec.name)
            timing["eval_s"] = timing.get("eval_s", 0.0) + time.perf_counter() - start
            timing_path.write_text(json.dumps(timing, indent=2))
        result["eval_dir"] = str(eval_dir)
        result["correct"] = _correct_flags(eval_dir)
    return result


def _correct_flags(eval_dir: Path) -> dict[str, dict[str, bool]]:
    """``{dataset: {item id: correct}}`` from an eval folder's JSONL rows."""
    from .evaluation import read_results

    flags = {}
    for path in sorted(eval_dir.glob("*.jsonl")):
        if ".member" in path.name:
            continue
        flags[path.stem] = {row["id"]: bool(row["correct"]) for row in read_results(path)}
    return flags


# ---------------------------------------------------------------- study + report
def run_study(study: str, config: ExperimentConfig, smoke: bool = False) -> Path:
    """Run (or resume) every run of a study and write ``report.md``; returns the study folder."""
    if smoke:
        config = ExperimentConfig.from_dict({**dataclasses.asdict(config), **SMOKE})
    root = Path(config.output_dir or f"runs/experiments/{study}{'-smoke' if smoke else ''}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.json").write_text(json.dumps({"study": study, "smoke": smoke,
                                                       "config": dataclasses.asdict(config)}, indent=2))
    started = time.perf_counter()
    results = []
    specs = plan(study, config)
    if config.only:
        unknown = sorted(set(config.only) - {spec.name for spec in specs})
        if unknown:
            raise ValueError(f"No run named {', '.join(unknown)} in study {study}; "
                             f"its runs: {', '.join(spec.name for spec in specs)}.")
        specs = [spec for spec in specs if spec.name in config.only]
    for index, spec in enumerate(specs, 1):
        print(f"[modetune experiment {study}] run {index}/{len(specs)}: {spec.name}", flush=True)
        results.append(run_one(spec, config, root))
    extra = measure_topk_speed(config, root) if study == "topk" else None
    write_report(study, config, results, root, time.perf_counter() - started, smoke, extra)
    print(f"[modetune experiment {study}] report: {root / 'report.md'}")
    return root


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _accuracy_rows(results: list[dict]) -> tuple[list[str], list[str]]:
    datasets = sorted({d for r in results for d in r.get("correct", {})})
    header = ["run", "trainable", "Δ% vs lora_notk", "train (min)", "val CE ens.", "val CE final"] + datasets + ["avg"]
    base = next((r for r in results if r["preset"] == "lora_notk"), None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        delta = "" if base is None else f"{100 * (r['trainable'] - base['trainable']) / base['trainable']:+.2f}"
        minutes = f"{r['train_s'] / 60:.1f}" if "train_s" in r else ""
        cells = [r["name"], f"{r['trainable']:,}", delta, minutes, f"{r['val']['ensemble_ce']:.3f}",
                 f"{r['val']['final_ce']:.3f}"]
        accs = []
        for d in datasets:
            flags = list(r.get("correct", {}).get(d, {}).values())
            if flags:
                acc, lo, hi = accuracy_ci(flags)
                accs.append(acc)
                cells.append(f"{_pct(acc)} [{_pct(lo)}, {_pct(hi)}]")
            else:
                cells.append("")
        cells.append(_pct(statistics.mean(accs)) if accs else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines, datasets


def _paired_rows(results: list[dict], datasets: list[str]) -> list[str]:
    """Each run vs the baseline (``lora_notk``, same seed): pooled over datasets, same items."""
    lines = ["| run | vs | items | Δ acc (pts) [95% CI] | only run / only base | McNemar p |", "|---|---|---|---|---|---|"]
    bases = {r["seed"]: r for r in results if r["preset"] == "lora_notk" and r.get("correct")}
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
    bases = {r["seed"]: r for r in results if r["preset"] == "lora_notk" and r.get("correct")}
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r["preset"] != "lora_notk" and r.get("correct") and r["seed"] in bases:
            groups.setdefault(r["preset"] + json.dumps(r["mod"], sort_keys=True), []).append(r)
    lines = []
    for runs in groups.values():
        if len(runs) < 2:
            continue
        items = [(d, i) for d in datasets for i in sorted(set.intersection(
            *(set(x["correct"].get(d, {})) for r in runs for x in (r, bases[r["seed"]]))))]
        a = [[r["correct"][d][i] for d, i in items] for r in runs]
        b = [[bases[r["seed"]]["correct"][d][i] for d, i in items] for r in runs]
        diff, lo, hi, n_pos, n_neg, p = paired_over_seeds(a, b)
        verdict = "" if p < 0.05 else " (no significant difference)"
        lines.append(f"| {runs[0]['preset']} {runs[0]['mod'] or ''} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{len(items)} | {100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {n_pos} / {n_neg} | "
                     f"{p:.3f}{verdict} |")
    if not lines:
        return []
    return ["## Pooled over seeds", "", "Per item, the difference in accuracy averaged over the seeds; 95% bootstrap "
            "interval over items (seeds kept together) and an exact sign test over the items where the variants "
            "differ on average.", "", "| variant vs lora_notk | seeds | items | Δ acc (pts) [95% CI] | items better / "
            "worse | sign test p |", "|---|---|---|---|---|---|", *lines, ""]


def _collapse_rows(results: list[dict]) -> list[str]:
    """Per run and multiple-choice dataset, the share of the most frequent extracted answer
    (and the gold majority share): near 100% means a near-constant predictor whose accuracy
    is the label prior, not a skill."""
    from collections import Counter

    from .evaluation import get_dataset, read_results

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


def _plot(results: list[dict], root: Path, key: str, ylabel: str, filename: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(r["name"], [(row["step"], row[key]) for row in r["log"] if key in row]) for r in results]
    series = [(name, points) for name, points in series if points]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series:
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / filename, dpi=100)
    plt.close(fig)
    return filename


def command_line(study: str, config: ExperimentConfig, smoke: bool = False) -> str:
    """The ``modetune experiment`` command that reproduces ``config`` (non-default fields as flags)."""
    import shlex

    parts = ["modetune", "experiment", study] + (["--smoke"] if smoke else [])
    default = ExperimentConfig()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "mod" or value == getattr(default, f.name) or (smoke and f.name in SMOKE):
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else "none" if value is None else str(value)
        parts += ["--" + f.name.replace("_", "-"), text]
    return shlex.join(parts) + (f"  # plus MoD fields {config.mod}" if config.mod else "")


def write_report(study: str, config: ExperimentConfig, results: list[dict], root: Path, seconds: float,
                 smoke: bool, extra: dict | None = None) -> Path:
    lines = [f"# Study: {study}{' (smoke setting)' if smoke else ''}", "",
             f"Command: `{command_line(study, config, smoke)}`; settings in `experiment.json`.",
             f"Model `{config.model}`; training data `{config.data}`; budget: {config.num_epochs:g} epoch(s)"
             f"{f', at most {config.max_steps} steps' if config.max_steps > 0 else ''}, global batch {config.batch_size},"
             f" lr {config.learning_rate:g}, cutoff {config.cutoff_len}, LoRA r={config.lora_r}; k={config.k}; "
             f"MoD overrides {config.mod or 'none'}.",
             (f"Evaluation: `{config.datasets}` (first {config.eval_limit or 'all'} items each), "
              f"{'greedy' if config.num_beams == 1 else f'beam search ({config.num_beams})'} decoding. "
              if any("correct" in r for r in results) else "No test-set evaluation in this study (validation "
              "cross-entropy only). ") +
             f"Wall-clock: {sum(r.get('train_s', 0) for r in results) / 60:.1f} min of training and "
             f"{sum(r.get('eval_s', 0) for r in results) / 60:.1f} min of evaluation over these runs, as measured "
             f"when each ran; {seconds / 60:.1f} min in this invocation.",
             *([f"Only these runs of the study: {', '.join(config.only)}.", ""] if config.only else [""])]
    table, datasets = _accuracy_rows(results)
    lines += ["## Runs", "", "Accuracy in % with 95% bootstrap intervals over items; validation cross-entropy "
              "is teacher-forced, nats per answer token, on the held-out validation split.", "", *table, ""]
    paired = _paired_rows(results, datasets)
    if len(paired) > 2:
        lines += ["## Paired comparisons", "", *paired, ""]
    lines += _pooled_rows(results, datasets)
    lines += _collapse_rows(results)
    seeds = {}
    for r in results:
        seeds.setdefault(r["preset"] + json.dumps(r["mod"], sort_keys=True), []).append(r)
    spread = [(key, rs) for key, rs in seeds.items() if len(rs) > 1 and all(x.get("correct") for x in rs)]
    if spread:
        lines += ["## Spread across seeds", "", "| variant | seeds | mean avg acc | sd |", "|---|---|---|---|"]
        for _, rs in spread:
            avgs = [statistics.mean(sum(f.values()) / len(f) for f in r["correct"].values()) for r in rs]
            lines.append(f"| {rs[0]['preset']} {rs[0]['mod'] or ''} | {len(rs)} | {_pct(statistics.mean(avgs))} | "
                         f"{_pct(statistics.stdev(avgs))} |")
        lines.append("")
    if study == "variants":
        lines += ["## The paper's numbers (LLaMA-7B, math_10k, beam search), for reference", "",
                  "Arithmetic accuracy from the poster; it gives no per-dataset commonsense numbers.", "",
                  "| variant | " + " | ".join(PAPER_LLAMA7B["lora_notk"]) + " |",
                  "|---|" + "---|" * len(PAPER_LLAMA7B["lora_notk"])]
        lines += [f"| {name} | " + " | ".join(str(v) for v in row.values()) + " |" for name, row in PAPER_LLAMA7B.items()]
        lines.append("")
    plots = [_plot(results, root, "loss", "training loss", f"{study}-loss.png")]
    if study in ("sparsity", "variants", "ablations", "topk", "sweep"):
        plots.append(_plot(results, root, "sparsity", "routing sparsity (share of weights < 1e-5)",
                           f"{study}-sparsity.png"))
    if study == "sparsity":
        lines += ["## Routing sparsity over training tokens", "", "| run | member | mean weight | sparsity |",
                  "|---|---|---|---|"]
        for r in results:
            last = [row for row in r["log"] if "router_0" in row][-5:]
            for i in range(config.k):
                if last:
                    w = statistics.mean(row[f"router_{i}"] for row in last)
                    sp = statistics.mean(row[f"sparsity_{i}"] for row in last)
                    lines.append(f"| {r['name']} | {i} (layer N-{config.k - 1 - i}) | {w:.3f} | {sp:.3f} |")
        lines.append("")
    if study == "motivation":
        lines += _motivation_venn(results, root)
    if extra:
        lines += ["## Dense vs Top-K routing: wall-clock", "", extra["markdown"], ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots if p]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (root / f"report-{study}.md").write_text(path.read_text())  # kept when another study reuses the folder
    return path


def _motivation_venn(results: list[dict], root: Path) -> list[str]:
    """The motivation figure: items solved with the loss on layer N, N-1, N-2 (3-way Venn)."""
    from .analysis import solved

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


def measure_topk_speed(config: ExperimentConfig, root: Path, repeats: int = 3) -> dict:
    """Wall-clock of dense vs Top-K routing on the same training step and the same generation.

    The acceleration ratio is ``time(dense) / time(Top-K)``. With the one-projection
    shortcut the ensemble costs one head projection whatever K is, so Top-K saves only the
    member norms it could skip (it does not skip them: every member is computed); with
    lambda > 0 the distillation needs every member's logits anyway. Measured, not assumed.
    """
    from .models import load_model
    from .variants import build_variant

    timings = {}
    for label, top_k in [("dense", None)] + [(f"top{K}", K) for K in range(1, config.k)]:
        base, tokenizer = load_model(config.model)
        model = build_variant(base, "lora_notk_mod", MoDConfig(**{"k": config.k, **config.mod, "top_k": top_k}),
                              lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0)
        ids = torch.randint(100, base.config.vocab_size, (config.micro_batch_size, 128),
                            generator=torch.Generator().manual_seed(0))
        model.train()
        steps = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            if i:
                steps.append(time.perf_counter() - start)
        model.eval()
        gens = []
        with torch.no_grad():
            for i in range(repeats + 1):
                start = time.perf_counter()
                model.generate(ids[:1, :16], max_new_tokens=24, min_new_tokens=24, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
                if i:
                    gens.append(time.perf_counter() - start)
        timings[label] = (statistics.median(steps), statistics.median(gens))
    dense = timings["dense"]
    lines = ["| routing | train step (s) | dense / this | generation, 24 tokens (s) | dense / this |",
             "|---|---|---|---|---|"]
    for label, (step, gen) in timings.items():
        lines.append(f"| {label} | {step:.3f} | {dense[0] / step:.2f}x | {gen:.3f} | {dense[1] / gen:.2f}x |")
    markdown = "\n".join(lines) + ("\n\nAcceleration ratio = wall-clock of dense routing / wall-clock of Top-K "
                                   "routing on the same work. With the one-projection shortcut every member is "
                                   "still computed, so Top-K routing is not expected to be faster here.")
    (root / "topk_speed.json").write_text(json.dumps(timings, indent=2))
    return {"timings": timings, "markdown": markdown}
