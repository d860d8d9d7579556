"""The committed results: every number that can be recomputed is recomputed and compared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_corrections_of_the_old_reports_recompute_from_their_tables():
    out = subprocess.run([sys.executable, str(RESULTS / "recompute_old_reports.py")], check=True,
                         capture_output=True, text=True).stdout
    assert out == (RESULTS / "corrections.md").read_text()
    # the numbers the issue names, recomputed: the over-seed interval and the majority baseline
    assert "**-0.24 [-1.58, +1.11]**" in out and "305/700 = 43.6%" in out
    assert "0.0 [0.0, 3.7]" in out and "[0.0, 0.0]" not in out  # Wilson at zero correct, not a collapsed interval


def test_router_sweep_report_regenerates_from_its_committed_rows(tmp_path):
    """The committed router-sweep report, table for table, from the committed rows alone (no adapters)."""
    import shutil

    from modetune.cli import main

    study = RESULTS / "router-sweep"
    rows = tmp_path / "router-sweep"
    shutil.copytree(study, rows, ignore=shutil.ignore_patterns("adapter", "checkpoint-*", "prefit-*"))
    assert not list(rows.rglob("*.safetensors"))
    argv = ["experiment", "router_sweep", "--data", "packaged:math-split/train.json", "--max-steps", "24",
            "--output-dir", str(rows), "--report-only"]
    assert main(argv) == 0
    tables = lambda path: path.read_text().split("## Runs", 1)[1]  # noqa: E731 (the header names the folder)
    assert tables(rows / "report.md") == tables(study / "report.md")
    assert "| rlr1x-warm0-s42 | 0.6043 | 0.6082 | [0.022, 0.021, 0.957] |" in tables(study / "report.md")


STUDY_ARGV = ["experiment", "mod_vs_lora", "--data", "builtin:arithmetic-tn:1000", "--val-size", "64", "--datasets",
              "builtin-tn", "--data-dir", "none", "--test-size", "600", "--eval-limit", "none", "--key-seeds",
              "42,43,44,45,46,47,48,49", "--seeds", "42,43,44,45", "--router-arm", "prefit", "--prefit-steps", "200",
              "--probe-records", "64"]


def test_mod_vs_lora_study_report_regenerates_from_its_committed_rows(tmp_path):
    """The pre-registered study's committed report, table for table, from its committed rows alone
    (no adapters, no checkpoints), with the command its PLAN.md registers; and each run's accuracy
    recounted by hand from its per-item rows."""
    import json
    import re
    import shutil

    from modetune.cli import main

    study = RESULTS / "study-mod-vs-lora"
    plan = " ".join((study / "PLAN.md").read_text().replace("\\\n", " ").split())
    assert "modetune " + " ".join(STUDY_ARGV) + " --output-dir docs/results/study-mod-vs-lora" in plan
    rows = tmp_path / "study"
    shutil.copytree(study, rows, ignore=shutil.ignore_patterns("adapter", "checkpoint-*", "*.png"))
    assert not list(rows.rglob("*.safetensors"))
    runs = sorted(p.parent for p in rows.glob("*/val.json"))
    assert runs, "no run of the study is committed"
    for run in runs:  # a committed run is complete: its rows of every step are there
        assert (run / "eval" / "summary.json").exists() and (run / "test_ce.jsonl").exists(), run.name
        assert (run / "probe" / "probe.json").exists() and (run / "train_config.json").exists(), run.name
    assert main([*STUDY_ARGV, "--output-dir", str(rows), "--report-only"]) == 0
    tables = lambda path: path.read_text().split("## Runs", 1)[1]  # noqa: E731 (the header names the folder)
    report = tables(study / "report.md")
    assert tables(rows / "report.md") == report
    figures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert figures and all((study / figure).exists() for figure in figures)  # every figure the report shows is committed
    for run in runs:  # accuracy recounted from the per-item rows
        items = [json.loads(line) for line in (run / "eval" / "builtin.jsonl").read_text().splitlines() if line]
        assert len(items) == 600 and len({item["id"] for item in items}) == 600
        accuracy = 100 * sum(bool(item["correct"]) for item in items) / len(items)
        row = next(line for line in report.splitlines() if line.startswith(f"| {run.name} |"))
        assert re.search(rf"\| {accuracy:.1f} \[", row), (run.name, accuracy, row)


CLIP_ARGV = ["experiment", "clip_control", "--data", "builtin:arithmetic-tn:1000", "--val-size", "64", "--datasets",
             "builtin-tn", "--data-dir", "none", "--test-size", "600", "--eval-limit", "none", "--key-seeds",
             "42,43,44,45,46,47,48,49", "--seeds", "42,43,44,45", "--baseline-dir", "../study-mod-vs-lora",
             "--final-member"]


def test_clip_control_report_regenerates_from_its_committed_rows(tmp_path):
    """The follow-up's committed report, table for table, from its committed rows and the first
    study's (its comparators), with the command its PLAN.md registers; its held-out file is the
    first study's, byte for byte; a rerun's responses equal the committed run's."""
    import shutil

    from modetune.cli import main

    study = RESULTS / "study-clip-control"
    plan = " ".join((study / "PLAN.md").read_text().replace("\\\n", " ").split())
    assert "modetune " + " ".join(CLIP_ARGV) + " --output-dir docs/results/study-clip-control" in plan
    assert (study / "builtin-tn-test-600.json").read_bytes() == \
        (RESULTS / "study-mod-vs-lora" / "builtin-tn-test-600.json").read_bytes()
    for name in ("study-clip-control", "study-mod-vs-lora"):
        shutil.copytree(RESULTS / name, tmp_path / name, ignore=shutil.ignore_patterns("adapter", "checkpoint-*", "*.png"))
    rows = tmp_path / "study-clip-control"
    assert main([*CLIP_ARGV, "--output-dir", str(rows), "--report-only"]) == 0
    tables = lambda path: path.read_text().split("## Runs", 1)[1]  # noqa: E731 (the header names the folder)
    assert tables(rows / "report.md") == tables(study / "report.md")
    report = tables(study / "report.md")
    assert "| (reference) | `lora_notk_mod` vs `lora_notk` | 42, 43, 44, 45, 46, 47, 48, 49 | 600 |" in report
    import json

    reruns = sorted(path.with_name("builtin.jsonl")  # evaluations that completed (summary.json is written last)
                    for path in study.glob("lora_notk_mod_rerun-s*/eval/summary.json"))
    assert reruns, "no rerun of the committed arm is committed"
    responses = lambda path: [json.loads(line)["response"] for line in path.read_text().splitlines() if line]  # noqa: E731
    for rerun in reruns:  # retraining a committed run reproduced it: every response, text for text
        seed = rerun.parts[-3].rsplit("-s", 1)[1]
        committed = RESULTS / "study-mod-vs-lora" / f"lora_notk_mod-s{seed}" / "eval" / "builtin.jsonl"
        assert responses(rerun) == responses(committed), seed


TUNED_ARGV = ["experiment", "tuned", "--data", "builtin:arithmetic-tn:1000", "--val-size", "64", "--datasets",
              "builtin-tn", "--data-dir", "none", "--test-size", "600", "--eval-limit", "none", "--seeds",
              "42,43,44,45,46,47,48,49", "--tune-seeds", "1,2", "--lr-grid", "0.5,1,2,3,4,6", "--tune-size", "300",
              "--select-tolerance", "0.01", "--equivalence-margin", "0.015", "--final-member", "--jobs", "2"]


def test_tuned_report_regenerates_from_its_committed_rows(tmp_path):
    """The tuned study's committed report (partial while its runs come in), section for section,
    from its committed rows with the command its run.sh registers; the primary tests repeated on
    the items with no seen equation appear on those items only (not, mislabelled, on all 600)."""
    import shutil

    from modetune.cli import main

    study = RESULTS / "study-tuned"
    registered = " ".join((study / "run.sh").read_text().replace("\\\n", " ").split())
    assert " ".join(TUNED_ARGV) + " --output-dir docs/results/study-tuned" in registered
    rows = tmp_path / "study-tuned"
    shutil.copytree(study, rows, ignore=shutil.ignore_patterns("adapter", "checkpoint-*", "*.png"))
    assert main([*TUNED_ARGV, "--output-dir", str(rows), "--report-only"]) == 0
    partial = (study / "report.md").read_text()  # the partial header counts the committed runs
    assert (rows / "report.md").read_text().replace(str(rows), "docs/results/study-tuned") == partial
    secondary = partial.split("## Secondary comparisons", 1)[1].split("\n## ", 1)[0]
    assert "| S-arm |" in secondary and "P-unseen" not in secondary
    unseen = partial.split("## Items with no seen equation", 1)[1].split("\n## ", 1)[0]
    assert "| P-unseen | `mod_global` vs `lora_notk` |" in unseen
