"""Copy a study folder's report and small result files (no weights) into docs/results/.

    python experiments/export_results.py runs/experiments/commonsense docs/results/commonsense

Copies report.md and report-<study>.md, experiment.json, topk_speed.json, the plots (also venn/), and per run:
val.json, timing.json, log.jsonl, eval/summary.json, and the per-item correctness flags of
the evaluation (eval/correct.json: {dataset: {item id: correct}}) so that every paired test
in the report can be recomputed without the generated texts.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from modetune.studies.run import correct_flags


def export(root: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in ("report*.md", "experiment.json", "topk_speed.json", "*.png", "venn/*.png", "venn/*.md"):
        for path in root.glob(pattern):
            (dest / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / path.relative_to(root))
    for run in sorted(p for p in root.iterdir() if (p / "val.json").exists()):
        out = dest / "runs" / run.name
        out.mkdir(parents=True, exist_ok=True)
        for name in ("val.json", "timing.json", "log.jsonl", "eval/summary.json"):
            if (run / name).exists():
                shutil.copy2(run / name, out / name.replace("/", "-"))
        if (run / "eval").is_dir():
            (out / "eval-correct.json").write_text(json.dumps(correct_flags(run / "eval"), sort_keys=True) + "\n")


if __name__ == "__main__":
    export(Path(sys.argv[1]), Path(sys.argv[2]))
