"""Reports (the paper's table) and solved-item analysis on hand-made results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modetune.analysis import report, solved, summarize_run


def _run(folder: Path, label: str, results: dict[str, list[bool]], variant: str = "ensemble",
         decoding: str = "greedy", ids: list[str] | None = None) -> Path:
    """A run folder with one JSONL per dataset; item i has id ``ids[i]`` (default ``q<i>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"label": label, "settings": {"decoding": decoding}}))
    for dataset, flags in results.items():
        suffix = "" if variant in ("ensemble", "model") else f".{variant}"
        rows = [{"index": i, "id": (ids or [f"q{j}" for j in range(len(flags))])[i], "dataset": dataset,
                 "variant": variant, "correct": flag} for i, flag in enumerate(flags)]
        (folder / f"{dataset}{suffix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_summary_recomputes_accuracy_from_rows(tmp_path):
    run = _run(tmp_path / "a", "A", {"gsm8k": [True, False, False, True], "boolq": [True] * 3})
    _run(run, "A", {"gsm8k": [False] * 4}, variant="member0")
    summary = summarize_run(run)
    got = {(r["variant"], r["dataset"]): (r["n"], r["correct"]) for r in summary["results"]}
    assert got == {("ensemble", "gsm8k"): (4, 2), ("ensemble", "boolq"): (3, 3), ("member0", "gsm8k"): (4, 0)}


def test_report_paper_shape_and_partial_averages(tmp_path):
    a = _run(tmp_path / "a", "lora_notk", {"gsm8k": [True, False], "AQuA": [True, True, False, False],
                                           "boolq": [True, False, False, False]})
    b = _run(tmp_path / "b", "lora_notk_mod", {"gsm8k": [True, True], "boolq": [True, True, False, False]},
             decoding="beam4")
    table = report([a, b])
    assert table["columns"] == ["AQuA", "gsm8k", "boolq"]  # the paper's order, not the input order
    rows = {r["name"]: r for r in table["rows"]}
    assert rows["lora_notk"]["scores"] == {"AQuA": 50.0, "gsm8k": 50.0, "boolq": 25.0}
    assert rows["lora_notk"]["avg"] == {"arithmetic": 50.0, "commonsense": 25.0}
    assert rows["lora_notk_mod"]["avg"] == {"arithmetic": 100.0, "commonsense": 50.0}
    assert rows["lora_notk_mod"]["partial"]["arithmetic"] and not rows["lora_notk"]["partial"]["arithmetic"]
    md = table["markdown"]
    assert "| Model | Decoding | AQuA | GSM8K | Avg |" in md
    assert "| lora_notk_mod | beam4 | – | 100.0 | 100.0* |" in md
    assert "| lora_notk | greedy | 50.0 | 50.0 | 50.0 |" in md
    assert "| Model | Decoding | BoolQ | Avg |" in md
    with pytest.raises(FileNotFoundError, match="run.json"):
        report([tmp_path])


def test_solved_three_way_counts_regions_and_venn(tmp_path):
    # items:          0      1      2      3      4      5      6
    layer_n = [True, True, True, False, False, False, False]
    layer_n1 = [True, True, False, True, False, False, False]
    layer_n2 = [True, False, False, True, True, False, False]
    files = [_run(tmp_path / name, name, {"AQuA": flags}) / "AQuA.jsonl"
             for name, flags in [("N", layer_n), ("N-1", layer_n1), ("N-2", layer_n2)]]
    result = solved(files, output_dir=tmp_path / "out")
    assert result["n"] == 7 and result["solved"] == {"N": 3, "N-1": 3, "N-2": 3}
    inter = {" & ".join(i["runs"]): i["count"] for i in result["intersections"]}
    assert inter == {"N & N-1": 2, "N & N-2": 1, "N-1 & N-2": 2, "N & N-1 & N-2": 1}
    assert result["regions"] == {"N": 1, "N-1": 0, "N-2": 1, "N & N-1": 1, "N & N-2": 0, "N-1 & N-2": 1,
                                 "N & N-1 & N-2": 1}
    assert result["union"] == 5 and result["none"] == 2
    assert sum(result["regions"].values()) == result["union"]
    png = tmp_path / "out" / "solved-AQuA.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    assert "| N ∩ N-1 ∩ N-2 | 1 | 14.3 |" in (tmp_path / "out" / "solved-AQuA.md").read_text()
    assert json.loads((tmp_path / "out" / "solved-AQuA.json").read_text())["items"]["N"] == ["q0", "q1", "q2"]


def test_solved_matches_items_by_id_and_rejects_mismatches(tmp_path):
    a = _run(tmp_path / "a", "a", {"gsm8k": [True, True, False]}, ids=["x", "y", "z"])
    b = _run(tmp_path / "b", "b", {"gsm8k": [True, False]}, ids=["y", "x"])  # other order, one item fewer
    result = solved([a, b], dataset="gsm8k")
    assert result["n"] == 2 and result["solved"] == {"a": 2, "b": 1}
    assert result["regions"] == {"a": 1, "b": 0, "a & b": 1}
    c = _run(tmp_path / "c", "c", {"gsm8k": [True]}, ids=["other"])
    with pytest.raises(ValueError, match="share no item"):
        solved([a, c], dataset="gsm8k")
    with pytest.raises(ValueError, match="at least two"):
        solved([a], dataset="gsm8k")
    with pytest.raises(ValueError, match="give --dataset"):
        solved([a, b])
    four = [_run(tmp_path / f"r{i}", f"r{i}", {"gsm8k": [True, i % 2 == 0, False]}, ids=["x", "y", "z"])
            for i in range(4)]
    result = solved(four, dataset="gsm8k", output_dir=tmp_path / "o4")
    assert result["regions"] == {} and "png" not in result["files"]  # a table only beyond 3 runs
    assert len(result["intersections"]) == 11
