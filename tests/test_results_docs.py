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
