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
