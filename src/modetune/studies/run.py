"""Running a study: every run trains (resuming from its checkpoints), measures held-out
teacher-forced cross-entropy of the ensemble and of each member on the validation split, and
evaluates on the test sets (resuming from its rows); finished steps are skipped, so a study can
run in parts and be interrupted at any moment. The report is written by :mod:`.report`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from ..mod.config import MoDConfig
from ..mod.model import parameter_counts
from ..mod.variants import parse_preset
from ..train.config import TRAIN_CONFIG_NAME, TrainConfig
from ..utils.checks import differing_settings
from ..utils.errors import ConfigError, NonFiniteLossError
from ..utils.integrity import read_json
from ..utils.outputs import write_text
from .plan import ExperimentConfig, RunSpec, plan, run_train_config
from .report import write_study_report
from .tuning import SELECTION_NAME, VAL_CE_NAME, VAL_EVAL, recorded_selection, tune_datasets


def _device() -> str | None:
    return "cuda" if torch.cuda.is_available() else None


IGNORED_FIELDS = {"output_dir", "report_to", "save_steps", "save_total_limit", "logging_steps",
                  "contamination_warn_at"}


def _check_same_run(run_dir: Path, train_config: TrainConfig) -> None:
    """Refuse to reuse a run folder trained with other settings (studies share run folders
    when they share an ``output_dir``; a changed budget must not silently reuse old runs).
    MoD fields are ignored for presets without MoD (``lora_notk``, ``lora_all``)."""
    saved_path = run_dir / "adapter" / TRAIN_CONFIG_NAME
    if not saved_path.exists():
        saved_path = run_dir / TRAIN_CONFIG_NAME  # the committed copy (adapters are not committed)
    if not saved_path.exists():
        return
    saved, wanted = read_json(saved_path), train_config.to_dict()
    ignored = set(IGNORED_FIELDS)
    if not parse_preset(wanted["preset"]).mod:
        ignored |= {f.name for f in dataclasses.fields(MoDConfig)}
    differ = differing_settings(saved, wanted, TrainConfig().to_dict(), ignored)  # a newer field: its default
    if differ:
        detail = ", ".join(f"{key}: {saved.get(key)!r} != {wanted.get(key)!r}" for key in differ[:4])
        raise ConfigError(f"{run_dir} was trained with other settings ({detail}); use another --output-dir "
                         f"or delete that folder.")


def run_one(spec: RunSpec, config: ExperimentConfig, root: Path) -> dict:
    """Train, validate and evaluate one run, skipping whatever is already done."""
    from ..eval.runner import evaluate
    from ..loading import load_source
    from ..loading.adapter import check_adapter
    from ..train.trainer import train
    from ..train.validation import validation_metrics

    run_dir = spec.folder(root)
    adapter = run_dir / "adapter"
    train_config = run_train_config(spec, config, run_dir)
    if spec.rows_from:  # a comparator whose rows another study committed: read, never retrained
        return _committed_rows(spec, train_config, run_dir)
    if adapter.is_dir():  # a run's adapter is checked as a whole before the study reads or reuses any file of it
        check_adapter(adapter)
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    _check_same_run(run_dir, train_config)
    committed = collect_result(spec, run_dir)
    if committed is not None and is_complete(spec, committed, config):  # its rows are in: done, even in a
        return committed  # fresh clone without the adapter (never committed), whose absence would retrain it
    if spec.prefit_from is not None:
        _prefit(spec, config, train_config, root, timing)
    elif not (adapter / TRAIN_CONFIG_NAME).exists():
        start = time.perf_counter()
        resume = any(run_dir.glob("checkpoint-*"))
        try:
            summary = train(train_config, resume=resume, overwrite=not resume)  # no checkpoint: nothing to keep
        except NonFiniteLossError as error:
            if spec.stage != "tune":
                raise
            # a diverged rate is a tuning outcome (PLAN.md: accuracy 0, CE +inf), not a failure
            (run_dir / DIVERGED_NAME).write_text(json.dumps({"error": str(error)}, indent=2))
            return collect_result(spec, run_dir)
        timing["train_s"] = timing.get("train_s", 0.0) + time.perf_counter() - start
        timing["trainable"], timing["total"] = summary["trainable"], summary["total"]
    timing_path.write_text(json.dumps(timing, indent=2))
    if not (run_dir / TRAIN_CONFIG_NAME).exists():  # the run's settings beside its rows
        source = root / spec.prefit_from if spec.prefit_from is not None else adapter
        shutil.copyfile(source / TRAIN_CONFIG_NAME, run_dir / TRAIN_CONFIG_NAME)
    val_path = run_dir / "val.json"
    if not val_path.exists():
        val_path.write_text(json.dumps(validation_metrics(adapter, train_config), indent=2))
    result = collect_result(spec, run_dir)
    if "trainable" not in result:
        model, _, _ = load_source(config.train.model, adapter, trust_remote_code=config.train.trust_remote_code)
        result["trainable"], result["total"] = parameter_counts(model)
    if spec.evaluate:
        tune = spec.stage == "tune"  # a tuning run: scored on the validation items, never the test sets
        datasets = tune_datasets(config, root) if tune else eval_datasets(config, root)
        eval_dir = run_dir / (VAL_EVAL if tune else "eval")
        ce_path = run_dir / (VAL_CE_NAME if tune else TEST_CE_NAME)
        need_eval = not (eval_dir / "summary.json").exists()  # written when the evaluation completes
        need_ce = config.test_ce and not ce_path.exists()
        if need_eval or need_ce:  # one load serves both
            start = time.perf_counter()
            model, tokenizer, info = load_source(config.train.model, adapter, device=_device(),
                                                   trust_remote_code=config.train.trust_remote_code)
        if need_eval:
            evaluate(model, tokenizer, datasets, eval_config_of(config, limit=None if tune else config.eval_limit),
                     eval_dir, data_dir=config.data_dir, info=info, label=spec.name)
            timing["eval_s"] = timing.get("eval_s", 0.0) + time.perf_counter() - start
            timing_path.write_text(json.dumps(timing, indent=2))
        if need_ce:
            write_test_ce(model, tokenizer, train_config, config, datasets, None if tune else config.eval_limit,
                          ce_path)
        final_dir = run_dir / FINAL_EVAL
        if (not tune and config.final_member and parse_preset(spec.preset).mod
                and not (final_dir / "summary.json").exists()):
            start = time.perf_counter()
            model, tokenizer, info = load_source(config.train.model, adapter, device=_device(),
                                                   trust_remote_code=config.train.trust_remote_code)
            final = dataclasses.replace(eval_config_of(config), members=[model.mod_config.k - 1])
            evaluate(model, tokenizer, eval_datasets(config, root), final, final_dir, data_dir=config.data_dir,
                     info=info, label=f"{spec.name} (final member)")
            timing["eval_final_s"] = timing.get("eval_final_s", 0.0) + time.perf_counter() - start
            timing_path.write_text(json.dumps(timing, indent=2))
        if config.probe_records and not tune:
            run_study_probe(config, root, adapter, run_dir / "probe")
        result.update(collect_result(spec, run_dir))
    return result


FINAL_EVAL = "eval-final"  # the final member's evaluation, beside the ensemble's eval/


def eval_config_of(config: ExperimentConfig, limit: int | None = -1):
    """The evaluation settings every run of a study is scored with (``limit``: items per set, -1:
    ``eval_limit``)."""
    from ..eval.runner import EvalConfig

    return EvalConfig(batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
                      num_beams=config.num_beams, limit=config.eval_limit if limit == -1 else limit,
                      prompt_style=config.train.prompt_style,
                      progress=True, cut_at_next_response=config.cut_at_next_response)


def _committed_rows(spec: RunSpec, train_config: TrainConfig, run_dir: Path) -> dict:
    """The result of a run another study committed (``spec.rows_from``), after checking that it
    was trained with this study's settings."""
    _check_same_run(run_dir, train_config)
    result = collect_result(spec, run_dir)
    if result is None or "correct" not in result:
        raise ConfigError(f"{spec.name}: no committed rows under {run_dir} (val.json and eval/); check baseline_dir.")
    return result


PROBE_FILES = ("probe.json", "probe.md", "probe.png")


def run_study_probe(config: ExperimentConfig, root: Path, adapter: Path | None, output: Path) -> None:
    """``modetune probe`` of one run's adapter (``None``: the base model) on ``probe_records``
    records of the study's probe data, written to ``output``; skipped when it is there."""
    from ..eval.probe import ProbeConfig, run_probe

    if all((output / name).exists() for name in PROBE_FILES):
        return
    if config.probe_data is None and "builtin-tn" not in [e.strip() for e in config.datasets.split(",")]:
        raise ConfigError("probe_records needs probe_data, or the datasets entry 'builtin-tn' (its held-out file).")
    eval_datasets(config, root)  # writes the held-out file when it is not there yet
    data = config.probe_data or str(held_out_path(config, root))
    train = config.train
    print(f"[modetune experiment] probe of {adapter or 'the base model'} -> {output}", flush=True)
    run_probe(ProbeConfig.from_dict(dict(
        model=train.model, adapter=None if adapter is None else str(adapter), data=data, records=config.probe_records,
        num_members=train.mod.k, cutoff_len=train.cutoff_len, prompt_style=train.prompt_style, output=str(output),
        overwrite=True)))


def _prefit(spec: RunSpec, config: ExperimentConfig, train_config: TrainConfig, root: Path, timing: dict) -> None:
    """A post-hoc router arm: the adapter of run ``spec.prefit_from`` (same seed, trained
    before it in the plan) with its router and member norms fitted on frozen members
    (:func:`modetune.train.fit_router.fit_router`, task objective, ``config.prefit_steps``
    steps) on the run's own training records; its validation split is the base run's."""
    from ..train.fit_router import FIT_NAME, FitRouterConfig, fit_router

    adapter = root / spec.name / "adapter"
    if (adapter / FIT_NAME).exists():
        return
    base = root / spec.prefit_from / "adapter"
    if not (base / TRAIN_CONFIG_NAME).exists():
        raise ConfigError(f"{spec.name} fits the router of {spec.prefit_from}, which has no trained adapter yet "
                          f"(run it first).")
    start = time.perf_counter()
    fit = FitRouterConfig.from_dict(dict(model=train_config.model, adapter=str(base), data=train_config.data,
                          max_records=train_config.max_records, val_size=train_config.val_size,
                          cutoff_len=train_config.cutoff_len, prompt_style=train_config.prompt_style,
                          steps=config.prefit_steps, objective="task", seed=spec.seed, output=str(adapter),
                          trust_remote_code=train_config.trust_remote_code, overwrite=True))
    model, _ = fit_router(fit)
    shutil.copyfile(adapter / FIT_NAME, root / spec.name / FIT_NAME)  # the before/after CE beside the rows
    timing["train_s"] = time.perf_counter() - start
    timing["trainable"] = sum(t.numel() for t in model.mod_state_dict().values())  # what fit-router trains
    timing["total"] = parameter_counts(model)[1]


def collect_result(spec: RunSpec, run_dir: Path) -> dict | None:
    """One run's result from its rows alone: ``val.json``, ``log.jsonl``, ``timing.json`` and the
    evaluation's per-item ``eval/*.jsonl`` (what a study commits; adapters and checkpoints are
    not needed). ``None`` when the run has no ``val.json`` yet."""
    from ..train.summary import read_log

    val_path = run_dir / "val.json"
    if (run_dir / DIVERGED_NAME).exists():  # a tuning run whose loss became non-finite
        return {"name": spec.name, "preset": spec.preset, "seed": spec.seed, "mod": spec.mod, "log": [],
                "diverged": read_json(run_dir / DIVERGED_NAME)["error"], "correct_val": {}, "val_item_ce": []}
    if not val_path.exists():
        return None
    timing_path = run_dir / "timing.json"
    result = {"name": spec.name, "preset": spec.preset, "seed": spec.seed, "mod": spec.mod, "prefit_from": spec.prefit_from,
              "val": read_json(val_path), "log": read_log(run_dir),
              **(read_json(timing_path) if timing_path.exists() else {})}
    eval_dir = run_dir / "eval"
    if spec.evaluate and (eval_dir / "summary.json").exists():
        result["eval_dir"] = str(eval_dir)
        result["correct"] = correct_flags(eval_dir)
    val_dir = run_dir / VAL_EVAL
    if (val_dir / "summary.json").exists():  # a tuning run's validation items
        result["correct_val"] = correct_flags(val_dir)
    if (run_dir / VAL_CE_NAME).exists():
        rows = [json.loads(line) for line in (run_dir / VAL_CE_NAME).read_text().splitlines() if line.strip()]
        result["val_item_ce"] = [(row["ce"], row["tokens"]) for row in rows]
    final_dir = run_dir / FINAL_EVAL
    if (final_dir / "summary.json").exists():  # the final member alone: <dataset>.member<k-1>.jsonl
        result["final_eval_dir"] = str(final_dir)
        result["correct_final"] = correct_flags(final_dir, members=True)
    if (run_dir / "probe" / "probe.json").exists():
        result["probe"] = read_json(run_dir / "probe" / "probe.json")
    if (run_dir / TEST_CE_NAME).exists():
        rows = [json.loads(line) for line in (run_dir / TEST_CE_NAME).read_text().splitlines() if line.strip()]
        result["test_ce"] = {(row["dataset"], row["id"]): row["ce"] for row in rows}
    return result


TEST_CE_NAME = "test_ce.jsonl"
DIVERGED_NAME = "diverged.json"  # a tuning run whose training loss became non-finite


def is_complete(spec: RunSpec, result: dict, config: ExperimentConfig) -> bool:
    """Whether a run has every row its study asks for (a run still being evaluated has only some):
    evaluation rows, test CE, the final member's rows and the probe, as configured."""
    if spec.stage == "tune":
        if "diverged" in result or not spec.evaluate:
            return True
        return "correct_val" in result and (not config.test_ce or "val_item_ce" in result)
    if spec.evaluate and "correct" not in result:
        return False
    if spec.rows_from:  # another study's committed rows: complete by that study's plan
        return True
    if spec.evaluate and config.test_ce and "test_ce" not in result:
        return False
    if spec.evaluate and config.final_member and parse_preset(spec.preset).mod and "correct_final" not in result:
        return False
    return not (spec.evaluate and config.probe_records and "probe" not in result)


def write_test_ce(model, tokenizer, train_config: TrainConfig, config: ExperimentConfig, datasets: str,
                  limit: int | None, path: Path) -> None:
    """The secondary metric: per test item, the teacher-forced cross-entropy (nats per token) of
    its gold response (``output``) under the trained adapter (``model``), ensemble and members;
    one JSON row per item (``dataset``, ``id``, ``tokens``, ``ce``, ``member_ce``), the same
    items the evaluation scores (``eval_limit`` of each set)."""
    from ..data import tokenize_record
    from ..eval.protocol import item_id
    from ..eval.runner import load_datasets
    from ..train.validation import teacher_forced_ce

    lines = []
    for name, records in load_datasets(datasets, config.data_dir):
        kept, rows = [], []
        for record in records[: limit or None]:
            tok = tokenize_record(record, tokenizer, train_config.cutoff_len, False, train_config.prompt_style)
            if record.get("output") and any(label != -100 for label in tok.labels[1:]):  # (kept whole or not at all)
                kept.append(record)
                rows.append({"input_ids": tok.input_ids, "labels": tok.labels})
        if not rows:
            continue
        measured = teacher_forced_ce(model, rows, per_row=True)["rows"]
        records = kept
        lines += [json.dumps({"dataset": name, "id": item_id(r), **m}) for r, m in zip(records, measured)]
    write_text(path, "".join(line + "\n" for line in lines))  # whole or absent


def held_out_path(config: ExperimentConfig, root: Path) -> Path:
    """The study's held-out built-in file (datasets entry ``builtin-tn``)."""
    return root / f"builtin-tn-test-{config.test_size}.json"


def eval_datasets(config: ExperimentConfig, root: Path) -> str:
    """``config.datasets`` with the entry ``builtin-tn`` replaced by ``builtin=FILE``: the study's
    held-out built-in items by template and numbers (``test_size`` of them), written once into
    ``root`` so every run is scored on the same file."""
    entries = [entry.strip() for entry in config.datasets.split(",")]
    if "builtin-tn" not in entries:
        return config.datasets
    from ..data.builtin import builtin_arithmetic

    path = held_out_path(config, root)
    if not path.exists():
        path.write_text(json.dumps(builtin_arithmetic(config.test_size, 0, "test", "template"), indent=1))
    return ",".join(f"builtin={path}" if entry == "builtin-tn" else entry for entry in entries)


def correct_flags(eval_dir: Path, members: bool = False) -> dict[str, dict[str, bool]]:
    """``{dataset: {item id: correct}}`` from an eval folder's JSONL rows: the model as loaded
    (``<dataset>.jsonl``), or with ``members`` the one member evaluated there (``<dataset>.member<i>.jsonl``)."""
    from ..eval.results import read_results

    flags = {}
    for path in sorted(eval_dir.glob("*.jsonl")):
        if (".member" in path.name) != members:
            continue
        flags[path.name.split(".")[0]] = {row["id"]: bool(row["correct"]) for row in read_results(path)}
    return flags


# ---------------------------------------------------------------- the study
def check_plan_fits(specs: list[RunSpec], config: ExperimentConfig, root: Path) -> None:
    """Refuse, before anything trains, a run whose ensemble cannot exist on the study's model
    (``k`` of a MoD run not below its layer count); reads only the model's ``config.json``."""
    from transformers import AutoConfig

    from ..mod.surgery import check_members
    from ..utils.models import model_error, resolve_model

    mod_runs = [run_train_config(s, config, s.folder(root)) for s in specs if not s.rows_from]
    mod_runs = [c for c in mod_runs if parse_preset(c.preset).mod]
    if not mod_runs:
        return
    try:
        model_config = AutoConfig.from_pretrained(resolve_model(config.train.model),
                                                  trust_remote_code=config.train.trust_remote_code)
    except (OSError, ValueError) as error:
        raise model_error(config.train.model, error) from error
    layers = getattr(model_config, "num_hidden_layers", None)
    for run in mod_runs if layers else []:
        check_members(run.mod.k, layers)


def _run_logged(spec: RunSpec, config: ExperimentConfig, root: Path, threads: int) -> dict:
    """One run in a worker process of a ``jobs`` pool: ``threads`` torch threads, its output
    (Python's and the libraries' own) appended to ``<run>/run.log``."""
    import os
    import sys

    torch.set_num_threads(threads)
    run_dir = spec.folder(root)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "run.log", "a") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        return run_one(spec, config, root)


def execute(specs: list[RunSpec], config: ExperimentConfig, root: Path, study: str) -> list[dict]:
    """Run ``specs`` (plan order kept in the results): one after another in this process, or with
    ``config.jobs`` > 1 that many at a time, each in a fresh process with ``cores // jobs`` torch
    threads and its output in ``<run>/run.log``. A run that fails is named with its log and the
    others go on; the study then stops with an error listing the failures."""
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    tag = f"[modetune experiment {study}]"
    if config.jobs == 1 or len(specs) < 2:
        results = []
        for index, spec in enumerate(specs, 1):
            print(f"{tag} run {index}/{len(specs)}: {spec.name}", flush=True)
            results.append(run_one(spec, config, root))
        return results
    pooled = [spec for spec in specs if spec.prefit_from is None]  # a refit waits for its source run
    threads = max(1, (os.cpu_count() or 1) // config.jobs)
    done: dict[str, dict] = {}
    failed = []
    print(f"{tag} {len(pooled)} runs, {config.jobs} at a time with {threads} thread(s) each; "
          f"each run's output: <run>/run.log", flush=True)
    with ProcessPoolExecutor(config.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        started = time.perf_counter()
        futures = {pool.submit(_run_logged, spec, config, root, threads): spec for spec in pooled}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                done[spec.name] = future.result()
            except Exception as error:  # noqa: BLE001 - reported with its log, the other runs go on
                failed.append(f"{spec.name} ({type(error).__name__}: {error}; log: {spec.folder(root) / 'run.log'})")
                print(f"{tag} FAILED {failed[-1]}", flush=True)
                continue
            print(f"{tag} done {len(done)}/{len(pooled)}: {spec.name} "
                  f"({(time.perf_counter() - started) / 60:.1f} min since start)", flush=True)
    if failed:
        raise ConfigError(f"{len(failed)} run(s) of study {study} failed: {'; '.join(failed)}")
    for spec in specs:
        if spec.prefit_from is not None:
            done[spec.name] = run_one(spec, config, root)
    return [done[spec.name] for spec in specs]


def _rows_of(specs: list[RunSpec], config: ExperimentConfig, root: Path) -> list[dict]:
    """The complete results of ``specs`` read from their rows (settings checked)."""
    for spec in specs:
        _check_same_run(spec.folder(root), run_train_config(spec, config, spec.folder(root)))
    return [result for spec in specs if (result := collect_result(spec, spec.folder(root))) is not None
            and is_complete(spec, result, config)]


def run_study(study: str, config: ExperimentConfig) -> Path:
    """Run (or resume) every run of a study and write ``report.md``; returns the study folder.
    ``config.smoke`` marks the tiny setting (its folder and report say so); build such a config with
    ``ExperimentConfig.from_dict({**smoke_settings(study), **yours, "smoke": True})``.

    A study with a tuning stage (``tuned``) runs it first, records each arm's selected rate in
    ``selection.json`` (:mod:`.tuning`), then runs the confirmatory stage at those rates; an arm
    whose tuning runs are not all done (``--only``, another process) waits, and a later call
    goes on from there."""
    from .tuning import resolve, select_rates

    root = Path(config.output_dir or f"runs/experiments/{study}{'-smoke' if config.smoke else ''}")
    planned = plan(study, config)
    tuned = any(spec.select for spec in planned)
    if config.only:
        unknown = sorted(set(config.only) - {spec.name for spec in planned})
        if unknown:
            raise ConfigError(f"No run named {', '.join(unknown)} in study {study}; "
                             f"its runs: {', '.join(spec.name for spec in planned)}.")

    def chosen(specs: list[RunSpec]) -> list[RunSpec]:
        return [spec for spec in specs if not config.only or spec.name in config.only]

    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir {root} is a file, not a folder.")
    if config.report_only:  # reads the study folder, never creates or rewrites it
        if not root.is_dir():
            raise ConfigError(f"No study folder {root}: --report-only reports the rows of runs that exist.")
    else:
        check_plan_fits(chosen(planned), config, root)  # every run's k fits the model, before the first one trains
        root.mkdir(parents=True, exist_ok=True)
        recorded = {**config.to_dict(), "only": None, "report_only": False, "jobs": 1, "smoke": False}  # not the call
        (root / "experiment.json").write_text(json.dumps({"study": study, "smoke": config.smoke, "config": recorded},
                                                         indent=2))
    started = time.perf_counter()
    first = [spec for spec in planned if spec.select is None]  # every run of a study without tuning
    results = [] if config.report_only else execute(chosen(first), config, root, study)
    waiting: list[RunSpec] = []
    if tuned:
        tuning_rows = _rows_of([spec for spec in first if spec.stage == "tune"], config, root)
        selection = select_rates(planned, tuning_rows, config, root, write=not config.report_only)
        ready, waiting = resolve(planned, selection)
        recorded = recorded_selection(root)
        for arm, choice in selection.items():
            verb = "selected" if arm in recorded else f"the rule picks (not in {SELECTION_NAME}: --report-only writes none)"
            print(f"[modetune experiment {study}] {arm}: {verb} learning rate {choice['learning_rate']:g} "
                  f"({choice['label']}; validation accuracy {100 * choice['mean_acc']:.1f}%)", flush=True)
        if waiting:
            print(f"[modetune experiment {study}] waiting for their arm's tuning runs: "
                  f"{', '.join(spec.name for spec in waiting)}", flush=True)
        if not config.report_only:
            execute(chosen(ready), config, root, study)
        planned = [spec for spec in first] + ready
        results = _rows_of(planned, config, root)  # the report reads every run with rows, whoever ran it
    elif config.report_only:  # the report from the committed rows; nothing trains or evaluates
        results = _rows_of(chosen(planned), config, root)
    if config.report_only:
        done = {result["name"] for result in results}
        missing = [spec.name for spec in chosen(planned) if spec.name not in done]
        if missing:
            print(f"[modetune experiment {study}] no rows yet for: {', '.join(missing)}", flush=True)
        if not results:
            raise ConfigError(f"No run of study {study} has rows (val.json) under {root}.")
    if config.probe_records and not config.report_only:
        run_study_probe(config, root, None, root / "probe-base")
    seconds = 0.0 if config.report_only else time.perf_counter() - started
    done = {result["name"] for result in results}
    missing = [s.name for s in planned if s.name not in done] + [s.name for s in waiting]
    write_study_report(study, config, results, root, seconds, missing)
    print(f"[modetune experiment {study}] report: {root / 'report.md'}")
    return root
