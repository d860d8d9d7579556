"""Tuned baselines (``modetune experiment tuned``): validation items disjoint from train and test,
the pre-registered selection rule, the recorded choice, TOST and Holm, and the study end to end
on the tiny setting."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from modetune.cli import main
from modetune.data.builtin import builtin_arithmetic, template_key
from modetune.studies.plan import ExperimentConfig, plan
from modetune.studies.tuning import (
    builtin_val_items,
    grid_edge,
    parse_arm,
    rates_compared,
    select_rate,
    select_rates,
    tune_datasets,
)
from modetune.utils.errors import ConfigError
from modetune.utils.stats import holm, paired_t_p, tost

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_validation_items_share_no_key_with_training_or_test_items():
    val = builtin_val_items(300, 600)
    test = builtin_arithmetic(600, 0, "test", "template")
    train = builtin_arithmetic(1000, 0, "train", "template")  # the study's training source
    keys = lambda records: {template_key(r["instruction"]) for r in records}  # noqa: E731
    assert len(val) == 300 and len(keys(val)) == 300
    assert not keys(val) & keys(test) and not keys(val) & keys(train)
    assert all(r["answer"] and r["output"] for r in val)


def test_the_study_files_are_generated_as_committed(tmp_path):
    """The test items the tuned study scores are the committed studies' byte for byte, and its
    validation file is written once and reused."""
    config = ExperimentConfig(datasets="builtin-tn", test_size=600, tune_size=300)
    from modetune.studies.run import eval_datasets

    eval_datasets(config, tmp_path)
    assert (tmp_path / "builtin-tn-test-600.json").read_bytes() == \
        (RESULTS / "study-mod-vs-lora" / "builtin-tn-test-600.json").read_bytes()
    assert tune_datasets(config, tmp_path) == f"builtin={tmp_path / 'builtin-tn-val-300.json'}"
    written = (tmp_path / "builtin-tn-val-300.json").stat().st_mtime_ns
    tune_datasets(config, tmp_path)
    assert (tmp_path / "builtin-tn-val-300.json").stat().st_mtime_ns == written


def _row(label, lr, acc, ce):
    return {"label": label, "learning_rate": lr, "seeds": [1, 2], "acc": [acc, acc], "ce": [ce, ce],
            "mean_acc": acc, "mean_ce": ce}


def test_the_selection_rule():
    rows = [_row("lr1x", 3e-4, 0.50, 0.40), _row("lr2x", 6e-4, 0.555, 0.38), _row("lr4x", 1.2e-3, 0.56, 0.41)]
    chosen = select_rate(rows, 0.01)  # 2x and 4x within a point of the best: the lower CE wins
    assert chosen["label"] == "lr2x" and chosen["candidates"] == ["lr2x", "lr4x"]
    assert select_rate(rows, 0.0)["label"] == "lr4x"  # no tolerance: the best accuracy
    no_ce = [{**row, "mean_ce": None} for row in rows]
    assert select_rate(no_ce, 0.01)["label"] == "lr2x"  # without CE rows: the smallest candidate
    diverged = [*rows, _row("lr8x", 2.4e-3, 0.0, float("inf"))]
    assert select_rate(diverged, 0.01)["label"] == "lr2x"


def test_the_report_says_when_a_selected_rate_is_unbracketed():
    rows = [_row("lr1x", 3e-4, 0.50, 0.40), _row("lr2x", 6e-4, 0.555, 0.38), _row("lr4x", 1.2e-3, 0.56, 0.37)]
    top = select_rate(rows, 0.01)
    assert top["label"] == "lr4x" and "top of its grid" in grid_edge(top, rows) and "higher" in grid_edge(top, rows)
    inside = select_rate(rows[:2] + [_row("lr4x", 1.2e-3, 0.40, 0.50)], 0.01)
    assert inside["label"] == "lr2x" and grid_edge(inside, rows) == ""
    bottom = select_rate([_row("lr1x", 3e-4, 0.6, 0.3), *rows[1:]], 0.01)
    assert "bottom of its grid" in grid_edge(bottom, rows) and "lower" in grid_edge(bottom, rows)
    said = rates_compared({"lora": top, "mod": inside, "other": top})[0]
    assert "`mod` 0.0006 is below `lora`'s 0.0012 (0.5x)" in said and "`other` 0.0012 is the same as" in said
    assert rates_compared({"lora": top}) == []


def test_a_grid_changed_after_the_choice_is_refused(tmp_path):
    def rows_for(config):
        specs = plan("tuned", config)
        results = [{"name": spec.name, "correct_val": {"builtin": {"a": spec.train["learning_rate"] > 5e-4, "b": True}},
                    "val_item_ce": [(1.0 / spec.train["learning_rate"], 10)]} for spec in specs if spec.stage == "tune"]
        return specs, results

    config = ExperimentConfig(seeds=[42], tune_seeds=[1], lr_grid=[1, 2], arms=["lora_notk", "mod=lora_notk_mod"],
                              primary=["mod:lora_notk"], equivalence=[])
    chosen = select_rates(*rows_for(config), config, tmp_path)
    assert {arm: c["label"] for arm, c in chosen.items()} == {"lora_notk": "lr2x", "mod": "lr2x"}
    assert select_rates(*rows_for(config), config, tmp_path) == chosen  # the same grid: the recorded choice
    for changed in ({"lr_grid": [1, 2, 4]}, {"tune_seeds": [1, 2]}):
        other = dataclasses.replace(config, **changed)
        with pytest.raises(ConfigError, match="grid or tuning seeds are now"):
            select_rates(*rows_for(other), other, tmp_path)


def test_arms_grids_and_seeds_are_checked():
    arm = parse_arm("mod=lora_notk_mod+clip_scope=per_group+distill_lambda=0.1+lr_grid=1/2", [0.5, 1])
    assert (arm.preset, arm.train, arm.mod, arm.lr_grid) == ("lora_notk_mod", {"clip_scope": "per_group"},
                                                             {"distill_lambda": 0.1}, (1.0, 2.0))
    assert parse_arm("lora_all", [1.0]).name == "lora_all"
    for bad, match in [("x=no_such_preset", "Unknown preset"), ("a-b=lora_notk", "name"),
                       ("a=lora_notk+learning_rate=1", "unknown field"), ("a=lora_notk+lr_grid=0", "positive"),
                       ("a=lora_notk+clip_scope", "FIELD=VALUE")]:
        with pytest.raises(ConfigError, match=match):
            parse_arm(bad, [1.0])
    with pytest.raises(ConfigError, match="disjoint"):
        plan("tuned", ExperimentConfig(seeds=[1, 42], tune_seeds=[1, 2]))
    with pytest.raises(ConfigError, match="Test"):
        plan("tuned", ExperimentConfig(seeds=[42], primary=["nope:lora_notk"]))
    specs = plan("tuned", ExperimentConfig(seeds=[42, 43], tune_seeds=[1, 2], lr_grid=[0.5, 4]))
    tune = [s for s in specs if s.stage == "tune"]
    assert len(tune) == 4 * 2 * 2 and {s.train["learning_rate"] for s in tune} == {1.5e-4, 1.2e-3}
    assert [s.name for s in specs if s.select] == [f"{a}-s{s}" for s in (42, 43)
                                                   for a in ("lora_notk", "lora_all", "mod_global", "mod_pergroup")]


def test_tost_holm_and_the_t_test_against_scipy():
    from scipy import stats

    diffs = [0.004, -0.002, 0.006, 0.001, 0.003, -0.001, 0.005, 0.002]
    assert paired_t_p(diffs) == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue, rel=1e-6)
    result = tost(diffs, 0.015)
    low = stats.ttest_1samp(diffs, -0.015, alternative="greater").pvalue
    high = stats.ttest_1samp(diffs, 0.015, alternative="less").pvalue
    assert result["p"] == pytest.approx(max(low, high), rel=1e-6)
    assert -0.015 < result["low90"] < result["high90"] < 0.015 and result["p"] < 0.05
    assert tost(diffs, 0.001)["p"] > 0.05  # a margin inside the spread: not equivalent
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])


@pytest.mark.slow
def test_tuned_study_smoke_end_to_end(tiny_model_dir, tmp_path, capsys):
    """Tuning runs scored on validation items only, the choice recorded and then frozen, the
    confirmatory runs at the chosen rate with their final members, the report's sections; a
    rerun does nothing; changed tuning rows are refused."""
    out = tmp_path / "tuned"
    argv = ["experiment", "tuned", "--smoke", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    assert main([*argv, "--only", "tune-lora_notk-lr1x-s1"]) == 0  # one tuning run first: a partial report
    partial = (out / "report.md").read_text()
    assert "**Partial report: 1 of 4 tuning runs and 0 of 4 confirmatory runs have rows.**" in partial
    assert "No test item scored yet: the tuning stage scores validation items only." in partial
    assert main([*argv, "--jobs", "2"]) == 0
    selection = json.loads((out / "selection.json").read_text())["arms"]
    assert set(selection) == {"lora_notk", "mod"}
    for arm, choice in selection.items():
        assert json.loads((out / f"{arm}-s42" / "train_config.json").read_text())["learning_rate"] == \
            choice["learning_rate"]
    tune = out / "tune-mod-lr4x-s1"
    assert (tune / "eval-val" / "builtin.jsonl").exists() and (tune / "val_ce.jsonl").exists()
    assert not (tune / "eval").exists() and not (tune / "eval-final").exists()  # never the test items
    val_items = {json.loads(line)["id"] for line in (tune / "eval-val" / "builtin.jsonl").read_text().splitlines()}
    test_items = {json.loads(line)["id"] for line in (out / "mod-s42" / "eval" / "builtin.jsonl").read_text().splitlines()}
    assert len(val_items) == 4 and not val_items & test_items
    assert (out / "mod-s43" / "eval-final" / "builtin.member2.jsonl").exists()
    assert not (out / "lora_notk-s43" / "eval-final").exists()
    assert (tune / "run.log").stat().st_size > 0  # a pooled run's output went to its log
    report = (out / "report.md").read_text()
    for section in ("## Tuning stage", "## Primary tests", "## Secondary comparisons", "## The final member alone"):
        assert section in report
    assert "| difference | `mod` - `lora_notk` |" in report and (out / "tuned-curves.png").exists()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    assert main(argv) == 0  # done: nothing runs again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")} == before
    for folder in [*out.glob("*/adapter"), *out.glob("*/checkpoint-*")]:  # a fresh clone: rows only
        shutil.rmtree(folder)
    assert main([*argv, "--jobs", "2"]) == 0  # committed rows are done: nothing is retrained or rescored
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")} == before
    assert not list(out.glob("*/adapter"))
    assert "lora_notk: selected learning rate" in capsys.readouterr().out
    copy = tmp_path / "copy"  # --report-only names the rule's pick without recording it
    shutil.copytree(out, copy)
    (copy / "selection.json").unlink()
    assert main([*argv[:-1], str(copy), "--report-only"]) == 0
    said = capsys.readouterr().out
    assert "lora_notk: the rule picks (not in selection.json: --report-only writes none) learning rate" in said
    assert "selected learning rate" not in said and not (copy / "selection.json").exists()
    # a tuning row changed after the choice: refused, naming selection.json
    row = tune / "eval-val" / "builtin.jsonl"
    rows = [json.loads(line) for line in row.read_text().splitlines()]
    flipped = selection["mod"]["label"] != "lr4x"
    rows = [{**r, "correct": flipped} for r in rows]
    row.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for other in out.glob("tune-mod-lr1x-s1/eval-val/builtin.jsonl"):
        other.write_text("".join(json.dumps({**json.loads(line), "correct": not flipped}) + "\n"
                                 for line in other.read_text().splitlines()))
    capsys.readouterr()
    assert main([*argv, "--report-only"]) == 1
    assert "selection.json" in capsys.readouterr().err


def test_smoke_is_beneath_what_the_user_sets(tmp_path, monkeypatch):
    """``--smoke`` sets the tiny budget, but a field given by flag or ``--config`` keeps its value
    (the study runs the user's grid and seeds), and the report's command line names it."""
    from modetune.studies.report import command_line

    ran = {}
    monkeypatch.setattr("modetune.studies.run.run_study", lambda study, config: ran.update(config=config))
    (tmp_path / "c.yaml").write_text("tune_size: 6\n")
    assert main(["experiment", "tuned", "--smoke", "--config", str(tmp_path / "c.yaml"), "--lr-grid", "1,2",
                 "--seeds", "7,8", "--max-steps", "3"]) == 0
    config = ran["config"]
    assert (config.lr_grid, config.seeds, config.train.max_steps, config.tune_size) == ([1.0, 2.0], [7, 8], 3, 6)
    assert (config.test_size, config.train.lora_r, config.tune_seeds) == (4, 4, [1])  # the smoke setting beneath
    line = command_line("tuned", config)
    assert line == "modetune experiment tuned --smoke --max-steps 3 --seeds 7,8 --lr-grid 1.0,2.0 --tune-size 6", line
    assert main(["experiment", "tuned", "--lr-grid", "1,2"]) == 0
    assert ran["config"].train.max_steps != 2 and ran["config"].seeds == ExperimentConfig().seeds  # no smoke: none
