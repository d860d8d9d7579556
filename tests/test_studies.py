"""`modetune experiment` (modetune.studies): study plans, smoke runs end to end, resume, reports."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from modetune.cli import main
from modetune.studies.plan import STUDIES, ExperimentConfig, plan

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_report_pools_seeds_against_the_same_seed_baseline():
    from modetune.studies.report import _pooled_rows

    def run(preset, seed, flags):
        return {"name": f"{preset}-s{seed}", "preset": preset, "seed": seed, "mod": {},
                "correct": {"boolq": {str(i): f for i, f in enumerate(flags)}}}

    base = [True] * 10 + [False] * 10
    better = [True] * 18 + [False] * 2  # right on 8 more items with every seed
    results = [run("lora_notk", s, base) for s in (1, 2, 3)] + [run("lora_notk_mod", s, better) for s in (1, 2, 3)]
    rows = "\n".join(_pooled_rows(results, ["boolq"]))
    assert "| lora_notk_mod | 1, 2, 3 | 20 | +40.0 [" in rows and "| 8 / 0 | 0.008 |" in rows  # p = 2 / 2**8
    assert _pooled_rows(results[:4], ["boolq"]) == []  # one seed of MoD: nothing to pool
    # over seeds, beside it: every seed +40 points, so a zero-width t-interval; 3 / 0 seeds, p = 2 / 2**3
    assert "| +40.0 [+40.0, +40.0] | 3 / 0 | 0.250 | 0.0 | higher (interval above 0) |" in rows
    assert "item-level" in rows
    noisy = results[:3] + [run("lora_notk_mod", s, flags) for s, flags in
                           ((1, better), (2, base), (3, [True] * 12 + [False] * 8))]
    row = [line for line in _pooled_rows(noisy, ["boolq"]) if line.startswith("| lora_notk_mod")][0]
    # per-seed differences 40, 0, 10 points: mean 16.7, t-interval 16.7 ± 4.303 * 20.8 / sqrt(3)
    assert "| +16.7 [-35.0, +68.4] | 2 / 0 | 0.500 |" in row and row.endswith("(interval spans 0) |")
    # two arms with one preset and no MoD overrides (mod_router differs in router_lr): one group each
    router = [{**run("lora_notk_mod", s, base), "name": f"mod_router-s{s}"} for s in (1, 2, 3)]
    rows = _pooled_rows(results + router, ["boolq"])
    assert any(line.startswith("| lora_notk_mod | 1, 2, 3 | 20 | +40.0") for line in rows)
    assert any(line.startswith("| mod_router | 1, 2, 3 | 20 | +0.0") for line in rows)
    from modetune.studies.report import _spread_rows, _val_ce_rows

    val = lambda r, ce: {**r, "val": {"ensemble_ce": ce, "final_ce": ce + 0.01}}  # noqa: E731
    rows = _val_ce_rows([val(r, 0.5) for r in results[:3]] + [val(r, 0.5 - r["seed"] / 100) for r in results[3:]])
    # per-seed differences -0.01, -0.02, -0.03: mean -0.02, t-interval -0.02 ± 4.303 * 0.01 / sqrt(3)
    assert "| lora_notk_mod | 1, 2, 3 | -0.0200 [-0.0448, +0.0048] (3 / 0, p 0.250) |" in "\n".join(rows)
    spread = _spread_rows(results + router)  # by arm too: not one lora_notk_mod group of six seeds
    assert "| lora_notk_mod | 3 | 90.0 | 0.0 |" in spread and "| mod_router | 3 | 50.0 | 0.0 |" in spread


def test_paired_plot_draws_each_arm_with_two_paired_seeds(tmp_path):
    from modetune.studies.plots import plot_paired

    def run(name, seed, flags):
        return {"name": f"{name}-s{seed}", "preset": "lora_notk" if name == "lora_notk" else "lora_notk_mod",
                "seed": seed, "correct": {"builtin": {str(i): f for i, f in enumerate(flags)}}}

    base = [run("lora_notk", s, [True, False] * 5) for s in (1, 2)]
    assert plot_paired(base + [run("lora_notk_mod", 1, [True] * 10)], tmp_path, "p.png") is None  # one seed only
    assert not (tmp_path / "p.png").exists()
    mod = [run("lora_notk_mod", s, [True] * 10) for s in (1, 2)]
    assert plot_paired(base + mod, tmp_path, "p.png") == "p.png" and (tmp_path / "p.png").stat().st_size > 0


def test_report_compares_test_ce_over_seeds():
    from modetune.studies.report import _test_ce_rows

    def run(name, seed, ces):
        return {"name": f"{name}-s{seed}", "preset": "lora_notk" if name == "lora_notk" else "lora_notk_mod",
                "seed": seed, "mod": {}, "test_ce": {("builtin", str(i)): c for i, c in enumerate(ces)}}

    results = [run("lora_notk", s, [1.0, 2.0]) for s in (1, 2, 3)]
    results += [run("mod", s, [1.0 - d, 2.0 - d]) for s, d in ((1, 0.1), (2, 0.2), (3, 0.3))]
    rows = "\n".join(_test_ce_rows(results))
    # per-seed differences -0.1, -0.2, -0.3: mean -0.2, t-interval -0.2 ± 4.303 * 0.1 / sqrt(3); 3 seeds lower
    assert "| mod | 1, 2, 3 | 2 | 1.4000 / 1.3000 / 1.2000 | -0.2000 [-0.4484, +0.0484] | 3 / 0 | 0.250 |" in rows


def test_accuracy_table_has_wilson_intervals_and_baselines(tmp_path):
    from modetune.studies.report import _accuracy_rows

    def run(name, predictions):
        folder = tmp_path / name
        folder.mkdir()
        gold = ["A"] * 6 + ["B"] * 3 + ["C"]
        rows = [{"id": str(i), "gold": g, "extracted": p, "correct": g == p}
                for i, (g, p) in enumerate(zip(gold, predictions))]
        (folder / "AQuA.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"name": name, "preset": "lora_notk", "seed": 1, "mod": {}, "trainable": 10, "eval_dir": str(folder),
                "val": {"ensemble_ce": 1.0, "final_ce": 1.0}, "correct": {"AQuA": {r["id"]: r["correct"] for r in rows}}}

    lines, _ = _accuracy_rows([run("none", ["E"] * 10), run("bees", ["B"] * 9 + ["C"]), run("more", ["B"] * 10)])
    text = "\n".join(lines)
    assert "| 0.0 [0.0, 27.8] |" in text  # Wilson at 0/10, where a bootstrap collapses to [0, 0]
    assert "| (majority class: most frequent gold answer) |" in text and "| 60.0 |" in text
    # the runs predict B most often (19 of 30 rows): answering B everywhere scores 3/10
    assert [line for line in lines if line.startswith("| (constant answer")][0].split("|")[-3].strip() == "30.0"


def test_report_flags_answer_collapse(tmp_path):
    from modetune.studies.report import _collapse_rows

    rows = [{"extracted": "true", "gold": "true" if i < 7 else "false", "correct": i < 7} for i in range(10)]
    (tmp_path / "boolq.jsonl").write_text("".join(json.dumps({"id": str(i), **r}) + "\n" for i, r in enumerate(rows)))
    lines = _collapse_rows([{"name": "constant", "eval_dir": str(tmp_path)}])
    assert "| constant | 100.0 |" in lines and "| (gold majority) | 70.0 |" in lines


def test_plans_cover_the_studies():
    config = ExperimentConfig()
    names = {study: [run.name for run in plan(study, config)] for study in STUDIES}
    variants = plan("variants", config)
    assert [r.seed for r in variants if r.preset == "lora_notk_mod"] == [42, 43, 44]
    assert {r.preset for r in variants} == {"lora_notk", "lora_notk_mod", "lora_all", "lora_all_mod", "mod_only"}
    assert [r.preset for r in plan("motivation", config)] == ["lora_layer_0", "lora_layer_1", "lora_layer_2"]
    assert {r.mod.get("top_k") for r in plan("topk", config)} == {None, 1, 2}  # K = 3 = k is the dense run
    assert {r.mod.get("k") for r in plan("topk", config)} >= {1, 2, 4, 5}
    assert len(names["sweep"]) == 1 + 2 + 4 + 4  # baseline; lambda 0 x 2 inits; lambda 0.1 and 1 x 2 x 2
    assert {"no_distill-s42", "no_member_norms-s42"} <= set(names["ablations"])
    with pytest.raises(ValueError, match="Unknown study"):
        plan("everything", config)


def test_variants_smoke_runs_end_to_end_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "variants"
    argv = ["experiment", "variants", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    start = time.perf_counter()
    assert main(argv) == 0
    first = time.perf_counter() - start
    report = (out / "report.md").read_text()
    for name in ("lora_notk-s42", "lora_notk_mod-s42", "lora_all-s42", "lora_all_mod-s42", "mod_only-s42"):
        assert f"| {name} |" in report
        assert (out / name / "eval" / "builtin.jsonl").exists()
        val = json.loads((out / name / "val.json").read_text())
        assert val["tokens"] > 0 and val["ensemble_ce"] > 0
    assert "McNemar" in report and "The paper's numbers" in report and (out / "variants-loss.png").exists()
    assert (out / "report-variants.md").read_text() == report
    assert f"Command: `modetune experiment variants --smoke --model {tiny_model_dir} --output-dir {out}`" in report
    mod_val = json.loads((out / "lora_notk_mod-s42" / "val.json").read_text())
    assert len(mod_val["member_ce"]) == 3
    # a rerun finds everything done: no training, no generation
    stamp = (out / "lora_notk-s42" / "adapter" / "adapter_model.safetensors").stat().st_mtime
    start = time.perf_counter()
    assert main(argv) == 0
    assert (out / "lora_notk-s42" / "adapter" / "adapter_model.safetensors").stat().st_mtime == stamp
    assert time.perf_counter() - start < first


def test_motivation_smoke_draws_venn(tiny_model_dir, tmp_path):
    out = tmp_path / "motivation"
    assert main(["experiment", "motivation", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "N ∩ N-1 ∩ N-2" in report and (out / "venn" / "solved-builtin.png").exists()


def test_only_selects_runs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "part"
    assert main(["experiment", "ablations", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out),
                 "--only", "lora_notk-s42,no_distill-s42"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["lora_notk-s42", "no_distill-s42"]
    assert main(["experiment", "ablations", "--smoke", "--only", "nope"]) == 1
    assert "No run named nope in study ablations" in capsys.readouterr().err


def test_studies_share_runs_but_refuse_other_settings(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "shared"
    common = ["--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    assert main(["experiment", "ablations", *common, "--only", "lora_notk_mod-s42"]) == 0
    stamp = (out / "lora_notk_mod-s42" / "adapter" / "adapter_model.safetensors").stat().st_mtime
    assert main(["experiment", "sparsity", *common, "--only", "lora_notk_mod-s42"]) == 0  # reused, not retrained
    assert (out / "lora_notk_mod-s42" / "adapter" / "adapter_model.safetensors").stat().st_mtime == stamp
    assert main(["experiment", "sparsity", *common, "--only", "lora_notk_mod-s42", "--learning-rate", "0.5"]) == 1
    assert "was trained with other settings (learning_rate: 0.0003 != 0.5)" in capsys.readouterr().err
    # a run trained before a field existed had that field's default: still the same run, unless it is set otherwise
    saved = out / "lora_notk_mod-s42" / "adapter" / "train_config.json"
    config = json.loads(saved.read_text())
    del config["row_block"]
    saved.write_text(json.dumps(config))
    assert main(["experiment", "sparsity", *common, "--only", "lora_notk_mod-s42"]) == 0
    assert main(["experiment", "sparsity", *common, "--only", "lora_notk_mod-s42", "--row-block", "4"]) == 1
    assert "row_block: None != 4" in capsys.readouterr().err


# ---------------------------------------------------------------- ExperimentConfig is built on TrainConfig
def test_experiment_config_is_built_on_train_config():
    import dataclasses

    from modetune.studies.plan import run_train_config
    from modetune.studies.spec import RUN_FIELDS, RunSpec
    from modetune.train.config import TrainConfig
    from modetune.utils.errors import ConfigError

    study_fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert study_fields & {f.name for f in dataclasses.fields(TrainConfig)} == {"output_dir"}  # the study folder
    config = ExperimentConfig()
    assert config.train == TrainConfig(data="packaged:math-split/train.json", warmup_steps=10, val_size=64)
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert not set(RUN_FIELDS) & set(config.to_dict()) - {"output_dir"}
    with pytest.raises(ConfigError, match="Unknown experiment field"):
        ExperimentConfig.from_dict({"preset": "lora_all"})
    # older YAML groups MoD fields under `mod:`; flat keys work too
    grouped = ExperimentConfig.from_dict({"mod": {"distill_lambda": 0.1}, "k": 4, "learning_rate": 1e-3})
    assert (grouped.train.mod.distill_lambda, grouped.train.mod.k, grouped.train.learning_rate) == (0.1, 4, 1e-3)
    assert grouped.mod_overrides() == {"distill_lambda": 0.1}
    # each run's TrainConfig is exactly what the study copied field by field before
    spec = RunSpec("topk1-s43", "lora_notk_mod", 43, {"top_k": 1})
    old = TrainConfig.from_dict({
        "model": "m", "preset": spec.preset, "data": "d.json", "num_epochs": 2.0, "max_steps": 7, "batch_size": 8,
        "micro_batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 10, "cutoff_len": 128, "val_size": 64,
        "lora_r": 8, "lora_alpha": 16, "seed": 43, "output_dir": "root/topk1-s43", "report_to": ["none"],
        "save_steps": 20, "bf16": False, "k": 4, "distill_lambda": 0.1, "top_k": 1})
    study = ExperimentConfig.from_dict({"model": "m", "data": "d.json", "num_epochs": 2.0, "max_steps": 7,
                                        "batch_size": 8, "micro_batch_size": 2, "learning_rate": 1e-3,
                                        "cutoff_len": 128, "lora_r": 8, "lora_alpha": 16, "k": 4,
                                        "mod": {"distill_lambda": 0.1}})
    assert run_train_config(spec, study, Path("root/topk1-s43")) == old


def test_shipped_experiment_config_and_command_line_round_trip(tmp_path):
    import shlex

    from modetune.cli import build_parser
    from modetune.cli.flags import config_from_args, load_yaml_config
    from modetune.studies.report import command_line

    root = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    config = ExperimentConfig.from_dict(load_yaml_config(root / "commonsense.yaml"))
    assert config.train.data.startswith("packaged:llm-adapters/ARC-Challenge/train.json?n=64")
    assert (config.eval_limit, config.output_dir, config.train.val_size) == (100, "runs/experiments/commonsense", 64)
    config = ExperimentConfig.from_dict({**config.to_dict(), "bf16": True, "member_norms": False, "only": ["a-s42"]})
    argv = shlex.split(command_line("variants", config))[1:]
    assert "--bf16" in argv and "--no-member-norms" in argv
    assert "--only" not in argv  # the command reproduces the whole study, not one invocation's part of it
    assert config_from_args(build_parser().parse_args(argv), ExperimentConfig) == dataclasses.replace(config, only=None)


def test_topk_report_shows_the_benchmarks_timings(tmp_path):
    from modetune.studies.report import TOPK_SPEED_NAME, _topk_speed_rows

    assert _topk_speed_rows(tmp_path) == []  # not measured: no section
    results = Path(__file__).resolve().parents[1] / "docs" / "results" / "commonsense"
    (tmp_path / TOPK_SPEED_NAME).write_text((results / TOPK_SPEED_NAME).read_text())
    section = "\n".join(_topk_speed_rows(tmp_path))
    assert section.startswith("## Dense vs Top-K routing: wall-clock")
    assert section in (results / "report-topk.md").read_text()  # the committed report, byte for byte


def test_router_sweep_and_mod_vs_lora_plans():
    config = ExperimentConfig.from_dict({"key_seeds": list(range(42, 50)), "seeds": [42, 43, 44, 45],
                                         "router_arm_lr": 9e-3, "router_arm_warmup": 10})
    runs = plan("mod_vs_lora", config)
    arms = {}
    for run in runs:
        arms.setdefault(run.name.rsplit("-s", 1)[0], []).append(run.seed)
    assert arms == {"lora_notk": list(range(42, 50)), "lora_notk_mod": list(range(42, 50)),
                    "mod_uniform": [42, 43, 44, 45], "mod_router": [42, 43, 44, 45]}
    router = next(r for r in runs if r.name == "mod_router-s42")
    assert router.train == {"router_lr": 9e-3, "router_warmup_steps": 10} and all(r.evaluate for r in runs)
    assert next(r for r in runs if r.name == "mod_uniform-s43").mod == {"router_init": "uniform",
                                                                          "distill_through_body": False}
    from modetune.studies.plan import run_train_config

    train = run_train_config(router, config, Path("x"))
    assert (train.router_lr, train.router_warmup_steps, train.seed) == (9e-3, 10, 42)
    sweep = plan("router_sweep", ExperimentConfig())
    assert [(r.train["router_lr"], r.train["router_warmup_steps"]) for r in sweep] == [
        (f * 3e-4, w) for f in (1.0, 10.0, 30.0, 100.0) for w in (0, 10)]
    assert not any(r.evaluate for r in sweep)


@pytest.mark.slow
def test_mod_vs_lora_smoke_runs_end_to_end(tiny_model_dir, tmp_path):
    from modetune.data.builtin import builtin_arithmetic, template_key

    out = tmp_path / "mod_vs_lora"
    assert main(["experiment", "mod_vs_lora", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)]) == 0
    for name in ("lora_notk-s42", "lora_notk_mod-s42", "mod_uniform-s42", "mod_router-s42"):
        rows = (out / name / "eval" / "builtin.jsonl").read_text().splitlines()
        assert len(rows) == 4, name  # the study's own held-out file, test_size 4 in the smoke setting
    saved = json.loads((out / "mod_router-s42" / "adapter" / "train_config.json").read_text())
    assert (saved["router_lr"], saved["router_warmup_steps"], saved["data"]) == (1e-2, 1, "builtin:arithmetic-tn:40")
    assert json.loads((out / "mod_uniform-s42" / "adapter" / "mod_config.json").read_text())["router_init"] == "uniform"
    held_out = json.loads((out / "builtin-tn-test-4.json").read_text())
    train_keys = {template_key(r["instruction"]) for r in builtin_arithmetic(40, 42, "train", "template")}
    assert not {template_key(r["instruction"]) for r in held_out} & train_keys
    report = (out / "report.md").read_text()
    assert "modetune experiment mod_vs_lora --smoke" in report and "(majority class" in report
    ce_rows = [json.loads(line) for line in (out / "lora_notk-s42" / "test_ce.jsonl").read_text().splitlines()]
    assert len(ce_rows) == 4 and all(row["tokens"] > 0 and row["ce"] > 0 for row in ce_rows)
    assert len(json.loads((out / "mod_router-s42" / "test_ce.jsonl").read_text().splitlines()[0])["member_ce"]) == 3
    assert "## Teacher-forced CE on the test items" in report
    for name in ("lora_notk-s42", "lora_notk_mod-s42", "mod_router-s42"):  # the probe of every evaluated run
        assert {p.name for p in (out / name / "probe").iterdir()} == {"probe.json", "probe.md", "probe.png"}, name
    probe = json.loads((out / "lora_notk_mod-s42" / "probe" / "probe.json").read_text())
    assert probe["records"] == 4 and probe["config"]["data"] == str(out / "builtin-tn-test-4.json")
    assert probe["ensemble_ce"] is not None and len(probe["router_mean_weights"]) == 3
    assert json.loads((out / "lora_notk-s42" / "probe" / "probe.json").read_text())["ensemble_ce"] is None  # no MoD
    base = json.loads((out / "probe-base" / "probe.json").read_text())
    assert base["config"]["adapter"] is None and base["tokens"] == probe["tokens"]  # the same records
    assert "## Headroom and the routers" in report and "| base model (untrained) | 1 |" in report
    assert f"| lora_notk_mod | 1 | {probe['member_ce'][-1]:.3f} | {probe['ensemble_ce']:.3f} |" in report

    # every table regenerates from the rows alone: no adapters, no checkpoints
    rows = tmp_path / "rows-only"
    shutil.copytree(out, rows, ignore=shutil.ignore_patterns("adapter", "checkpoint-*"))
    assert not list(rows.rglob("*.safetensors"))
    assert (rows / "lora_notk-s42" / "train_config.json").exists()
    argv = ["experiment", "mod_vs_lora", "--smoke", "--model", str(tiny_model_dir), "--report-only"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    assert main([*argv, "--output-dir", str(rows)]) == 0
    tables = lambda path: path.read_text().split("## Runs", 1)[1]  # noqa: E731 (the header names the folder)
    assert tables(rows / "report.md") == tables(out / "report.md")
    assert "report-only" not in (rows / "report.md").read_text()
    assert json.loads((rows / "experiment.json").read_text())["config"]["report_only"] is False
    assert "Partial report" not in (out / "report.md").read_text()
    shutil.rmtree(rows / "mod_router-s42")  # a study with a run still missing says so in its report
    assert main([*argv, "--output-dir", str(rows)]) == 0
    partial = (rows / "report.md").read_text()
    assert "**Partial report: 3 of 4 planned runs have rows.**" in partial
    assert "Without rows yet: mod_router-s42." in partial
    assert "complete: `lora_notk_mod` vs `lora_notk` (1 seed), `mod_uniform` vs `lora_notk` (1 seed)." in partial
    shutil.rmtree(rows / "lora_notk-s42")  # without the baseline no comparison is complete
    assert main([*argv, "--output-dir", str(rows)]) == 0
    assert "none has yet. Without rows yet: lora_notk-s42, mod_router-s42." in (rows / "report.md").read_text()


def test_report_only_without_rows_is_one_line(tmp_path, capsys):
    """No study folder: refused, and none is created; an empty one: no run has rows, and nothing is written."""
    assert main(["experiment", "router_sweep", "--report-only", "--output-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No study folder" in err and not (tmp_path / "none").exists()
    (tmp_path / "empty").mkdir()
    assert main(["experiment", "router_sweep", "--report-only", "--output-dir", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip()
    assert "has rows" in err.splitlines()[-1] and not any((tmp_path / "empty").iterdir())


def test_mod_vs_lora_prefit_arm_fits_the_router_of_the_same_seed(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "prefit"
    argv = ["experiment", "mod_vs_lora", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out),
            "--router-arm", "prefit", "--prefit-steps", "3"]
    assert main([*argv, "--only", "mod_prefit-s42"]) == 1  # its base run has not trained yet: one line, nothing run
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["lora_notk-s42", "lora_notk_mod-s42", "mod_prefit-s42", "mod_uniform-s42", "probe-base"]
    fitted, base = out / "mod_prefit-s42", out / "lora_notk_mod-s42"
    fit = json.loads((fitted / "adapter" / "fit_router.json").read_text())
    assert fit["config"]["adapter"] == str(base / "adapter") and fit["config"]["objective"] == "task"
    assert len(fit["losses"]) == 3 and json.loads((fitted / "fit_router.json").read_text()) == fit  # a row, committed
    lora_a, lora_b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (fitted, base))
    assert lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)  # LoRA frozen
    mod_a, mod_b = (load_file(str(d / "adapter" / "mod_model.safetensors")) for d in (fitted, base))
    assert not torch.equal(mod_a["router.weight"], mod_b["router.weight"])  # the router was fitted
    assert (fitted / "eval" / "builtin.jsonl").exists() and (fitted / "test_ce.jsonl").exists()
    assert json.loads((fitted / "train_config.json").read_text()) == json.loads((base / "train_config.json").read_text())
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| mod_prefit-s42 |"))
    base_row = next(line for line in report.splitlines() if line.startswith("| lora_notk_mod-s42 |"))
    fitted_count = json.loads((fitted / "timing.json").read_text())["trainable"]
    # the refitted adapter counts lora_notk_mod's parameters (and names the refit's), not 0.05% of them
    assert row.split(" | ")[1] == f"{base_row.split(' | ')[1]} ({fitted_count:,} refitted)"
    assert row.split(" | ")[2] == base_row.split(" | ")[2] and " + " in row.split(" | ")[3]
    probed = json.loads((fitted / "probe" / "probe.json").read_text())  # the fitted router is the one probed
    assert probed["config"]["adapter"] == str(fitted / "adapter") and probed["ensemble_ce"] is not None
    assert main(argv) == 0  # a rerun finds it done
    assert json.loads((fitted / "adapter" / "fit_router.json").read_text())["losses"] == fit["losses"]


@pytest.mark.slow
def test_clip_control_smoke_reads_committed_rows_and_scores_the_final_member(tiny_model_dir, tmp_path, capsys):
    """The follow-up study end to end: per-group clipping in its arm, the lr arms, the final member
    scored beside the ensemble, the rerun checked against its committed run, and the comparators
    read from another study's committed rows (no adapters) with the same report."""
    argv = ["experiment", "clip_control", "--smoke", "--model", str(tiny_model_dir)]  # key seeds 42, 43
    base = tmp_path / "base"
    assert main([*argv, "--output-dir", str(base)]) == 0
    saved = lambda run: json.loads((base / run / "train_config.json").read_text())  # noqa: E731
    assert saved("mod_pergroup-s42")["clip_scope"] == "per_group" and saved("lora_notk_mod-s42")["clip_scope"] == "global"
    assert saved("lora_lr2x-s42")["learning_rate"] == 6e-4 and saved("lora_lr2x-s42")["preset"] == "lora_notk"
    log = [json.loads(line) for line in (base / "mod_pergroup-s42" / "log.jsonl").read_text().splitlines()]
    assert all("grad_norm_lora" in row and "grad_norm_mod" in row for row in log if "loss" in row)
    for run in ("mod_pergroup-s42", "lora_notk_mod_rerun-s42"):
        assert len((base / run / "eval-final" / "builtin.member2.jsonl").read_text().splitlines()) == 4, run
    assert not (base / "lora_lr2x-s42" / "eval-final").exists()  # no ensemble, no final member to score apart
    report = (base / "report.md").read_text()
    assert "| C1 | `mod_pergroup` vs `lora_notk` | 42, 43 | 4 |" in report
    assert "| C2 | `mod_pergroup` vs `lora_notk_mod` | 42, 43 | 4 |" in report
    assert "| lora_notk_mod_rerun-s42 | lora_notk_mod-s42 | 2 of 2 (of 2) | 4 of 4 |" in report  # seeded: identical
    assert "## The final member alone" in report and "| mod_pergroup-s43 | 4 |" in report

    # the comparators as committed rows of another study: read, not retrained, and the same report
    committed, follow = tmp_path / "committed", tmp_path / "follow"
    keep = shutil.ignore_patterns("adapter", "checkpoint-*")
    for run in ("lora_notk-s42", "lora_notk-s43", "lora_notk_mod-s42", "lora_notk_mod-s43"):
        shutil.copytree(base / run, committed / run, ignore=keep)
    dropped = ("adapter", "checkpoint-", "lora_notk-s", "lora_notk_mod-s")
    shutil.copytree(base, follow, ignore=lambda d, names: [n for n in names if n.startswith(dropped)])
    assert main([*argv, "--output-dir", str(follow), "--baseline-dir", "../committed", "--report-only"]) == 0
    tables = lambda path: path.read_text().split("## Runs", 1)[1]  # noqa: E731 (the header names the folder)
    assert tables(follow / "report.md") == tables(base / "report.md")
    # committed rows trained with other settings are refused, in one line, before anything runs
    assert main([*argv, "--output-dir", str(follow), "--baseline-dir", "../committed", "--cutoff-len", "128",
                 "--only", "lora_notk-s42"]) == 1
    assert "trained with other settings" in capsys.readouterr().err


def test_saved_probe_and_fit_router_configs_of_the_committed_studies_still_read():
    """probe.json and fit_router.json hold their config flat (model, adapter, ... beside the rest);
    the configs now nest ``source: ModelSource``, and every committed file still reads, to the
    same flat mapping."""
    from modetune.eval.probe import ProbeConfig
    from modetune.train.fit_router import FitRouterConfig

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    files = [(ProbeConfig, p) for p in sorted(results.rglob("probe.json"))]
    files += [(FitRouterConfig, p) for p in sorted(results.rglob("fit_router.json"))]
    assert len(files) >= 20
    for cls, path in files:
        saved = json.loads(path.read_text())["config"]
        config = cls.from_dict(saved)
        assert config.source.adapter == saved.get("adapter") and config.source.model == saved.get("model"), path
        migrated = {cls.renamed.get(key, key): value for key, value in saved.items()}  # older field names
        assert {key: value for key, value in config.to_dict().items() if key in migrated} == migrated, path
