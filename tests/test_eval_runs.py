"""Evaluation runs (rows, resume, limits, members in one pass) and their results: run
summaries, the paper-shaped report, and solved-item analysis on hand-made results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_fixtures import make_mod_model, make_records, write_json
from modetune.eval.protocol import is_correct
from modetune.eval.results import read_results, report, solved, summarize_run, write_accuracy_report
from modetune.eval.runner import EvalConfig, evaluate
from modetune.eval.sources import load_test_items
from modetune.utils.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest.py)


@pytest.fixture(scope="module")
def mod_model(tokenizer):
    return make_mod_model(tokenizer)


# ---------------------------------------------------------------------------- runs
def test_evaluate_writes_rows_summary_and_resumes(tokenizer, mod_model, tmp_path, monkeypatch):
    import modetune.eval.runner as runner

    files = {"gsm8k": write_json(tmp_path / "d" / "gsm8k.json", make_records(6)),
             "boolq": write_json(tmp_path / "d" / "boolq.json", make_records(5, "boolq"))}
    specs = [f"{name}={path}" for name, path in files.items()]
    config = EvalConfig(batch_size=4, max_new_tokens=6, progress=False)
    full = evaluate(mod_model, tokenizer, specs, config, tmp_path / "full", info={"model": "tiny"})
    rows = read_results(tmp_path / "full" / "gsm8k.jsonl")
    assert [r["index"] for r in rows] == list(range(6))
    assert set(rows[0]) >= {"prompt", "response", "extracted", "gold", "correct", "decoding", "variant", "id"}
    for row in rows:
        assert row["correct"] == is_correct("gsm8k", row["extracted"], row["gold"])
        assert row["decoding"] == "greedy" and row["variant"] == "ensemble"
    assert {(r["dataset"], r["n"]) for r in full["results"]} == {("gsm8k", 6), ("boolq", 5)}
    assert (tmp_path / "full" / "summary.md").read_text().count("GSM8K") == 1
    assert json.loads((tmp_path / "full" / "run.json").read_text())["settings"]["decoding"] == "greedy"

    # an interrupted run: 2 rows written, the third cut off mid-line
    part = tmp_path / "part"
    part.mkdir()
    (part / "run.json").write_text((tmp_path / "full" / "run.json").read_text())
    lines = (tmp_path / "full" / "gsm8k.jsonl").read_text().splitlines(keepends=True)
    (part / "gsm8k.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    generated = []
    original = runner.generate_responses
    monkeypatch.setattr(runner, "generate_responses", lambda m, t, prompts, *a, **k: generated.extend(prompts) or
                        original(m, t, prompts, *a, **k))
    evaluate(mod_model, tokenizer, [specs[0]], config, part, info={"model": "tiny"})
    assert len(generated) == 4  # only the missing items
    assert (part / "gsm8k.jsonl").read_text() == (tmp_path / "full" / "gsm8k.jsonl").read_text()

    with pytest.raises(ValueError, match="other settings"):
        evaluate(mod_model, tokenizer, [specs[0]], EvalConfig(num_beams=2, progress=False), part,
                 info={"model": "tiny"})


def test_a_smaller_limit_keeps_earlier_rows(tokenizer, mod_model, tmp_path):
    spec = [f"gsm8k={write_json(tmp_path / 'g.json', make_records(5))}"]
    evaluate(mod_model, tokenizer, spec, EvalConfig(max_new_tokens=3, progress=False), tmp_path / "r")
    summary = evaluate(mod_model, tokenizer, spec, EvalConfig(max_new_tokens=3, progress=False, limit=2),
                       tmp_path / "r")
    assert summary["timings"]["gsm8k"]["ensemble"]["n"] == 2  # this call's items
    assert len(read_results(tmp_path / "r" / "gsm8k.jsonl")) == 5  # nothing lost
    write_json(tmp_path / "g.json", make_records(5, "SVAMP")[::-1])
    with pytest.raises(ValueError, match="results for other items"):
        evaluate(mod_model, tokenizer, spec, EvalConfig(max_new_tokens=3, progress=False), tmp_path / "r")


def test_batch_size_does_not_change_results(tokenizer, mod_model, tmp_path):
    spec = [f"gsm8k={write_json(tmp_path / 'g.json', make_records(7))}"]
    for bs in (1, 3):
        evaluate(mod_model, tokenizer, spec, EvalConfig(batch_size=bs, max_new_tokens=5, progress=False),
                 tmp_path / f"bs{bs}")
    assert (tmp_path / "bs1" / "gsm8k.jsonl").read_text() == (tmp_path / "bs3" / "gsm8k.jsonl").read_text()


def test_members_all_in_one_pass(tokenizer, mod_model, tmp_path):
    spec = [f"boolq={write_json(tmp_path / 'b.json', make_records(4, 'boolq'))}"]
    config = EvalConfig(batch_size=4, max_new_tokens=4, progress=False, members=[0, 1, 2, None])
    summary = evaluate(mod_model, tokenizer, spec, config, tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run").glob("*.jsonl"))
    assert names == ["boolq.jsonl", "boolq.member0.jsonl", "boolq.member1.jsonl", "boolq.member2.jsonl"]
    assert [r["variant"] for r in summary["results"]] == ["ensemble", "member0", "member1", "member2"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["members"]["member2"] == "member2 = layer 5 of 5 (N)"
    single = tmp_path / "single"
    evaluate(mod_model, tokenizer, spec, EvalConfig(batch_size=2, max_new_tokens=4, progress=False, members=[1]),
             single)
    assert (single / "boolq.member1.jsonl").read_text() == (tmp_path / "run" / "boolq.member1.jsonl").read_text()


@pytest.mark.slow
def test_default_model_on_real_gsm8k(tokenizer, packaged_data, default_model_dir, tmp_path):
    """The embedded model, real items: batch 4 equals batch 1 and the rows are scored."""
    from modetune.loading import load_source

    model, tok, info = load_source(str(default_model_dir))
    records = load_test_items("gsm8k", data_dir=packaged_data / "math-split")[:4]
    outs = {}
    for bs in (1, 4):
        outs[bs] = evaluate(model, tok, [("gsm8k", records)], EvalConfig(batch_size=bs, max_new_tokens=24,
                                                                          progress=False), tmp_path / str(bs), info=info)
    assert (tmp_path / "1" / "gsm8k.jsonl").read_text() == (tmp_path / "4" / "gsm8k.jsonl").read_text()
    rows = read_results(tmp_path / "4" / "gsm8k.jsonl")
    assert all(r["response"] for r in rows) and all(r["variant"] == "model" for r in rows)


def test_eval_config_rejects_bad_options():
    for bad in ({"batch_size": 0}, {"num_beams": 0}, {"max_new_tokens": 0}, {"limit": 0}, {"prompt_style": "x"}):
        with pytest.raises(ConfigError):
            EvalConfig(**bad)


# ---------------------------------------------------------------------------- summaries, report, solved sets
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


def test_bad_result_files_raise_data_errors(tmp_path, capsys):
    run = _run(tmp_path / "a", "A", {"gsm8k": [True, False]})
    (run / "gsm8k.jsonl").write_text('{"index": 0}\nnot json\n{"index": 1}\n{"index": 2')
    assert [row["index"] for row in read_results(run / "gsm8k.jsonl")] == [0, 1]  # every unreadable row is warned about
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "gsm8k.jsonl: line 2 is not a readable result row" in err[0]
    assert "line 4 is not a readable result row (cut off mid-write)" in err[1]
    (run / "gsm8k.jsonl").write_text("")
    with pytest.raises(DataError, match="holds no results"):
        solved([run, run], dataset="gsm8k")
    with pytest.raises(ConfigError, match="No run folder"):
        report([])


def test_write_accuracy_report(tmp_path):
    table = report([_run(tmp_path / "a", "A", {"gsm8k": [True, False]})])
    md, js = write_accuracy_report(table, tmp_path / "out" / "table")
    assert md.read_text() == table["markdown"] + "\n"
    assert json.loads(js.read_text())["columns"] == ["gsm8k"] and "markdown" not in json.loads(js.read_text())
