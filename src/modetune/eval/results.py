"""Evaluation results: the run folder's files, summaries, the paper's accuracy table, and
which items each run solved.

- :func:`read_results` reads one ``<dataset>[.member<i>].jsonl`` file (one row per item);
  :func:`results_path` names it.
- :func:`summarize_run` reads a run folder (``run.json`` + ``<dataset>[.member<i>].jsonl``)
  and recomputes every accuracy from the per-item rows.
- :func:`report` puts several runs side by side, one row per run and routing (ensemble,
  each member), one column per dataset in the paper's order, with an average per group
  (arithmetic, commonsense), as markdown and JSON (:func:`write_accuracy_report` saves it).
- :func:`solved` compares the items solved by 2+ runs on one dataset (per-run counts, every
  intersection, the 3-way Venn regions of the paper's motivation figure) and draws the
  Venn diagram (2 or 3 runs) as a PNG.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

from ..utils.errors import ConfigError, DataError
from ..utils.integrity import read_json, warn
from ..utils.outputs import check_outputs, staged, write_text
from ..utils.plotting import pyplot
from .datasets import ALL_DATASETS, ARITHMETIC, BUILTIN, COMMONSENSE, get_dataset

RESULTS_SUFFIX = ".jsonl"
RUN_FILE = "run.json"
GROUPS = {"arithmetic": ARITHMETIC, "commonsense": COMMONSENSE, "built-in": (BUILTIN.name,)}


# ---------------------------------------------------------------------------- one run
def results_path(output_dir: str | Path, dataset: str, member: int | None) -> Path:
    """``<out>/<dataset>.jsonl`` for the model as loaded, ``<out>/<dataset>.member<i>.jsonl`` for member ``i``."""
    suffix = "" if member is None else f".member{member}"
    return Path(output_dir) / f"{dataset}{suffix}{RESULTS_SUFFIX}"


def read_results(path: str | Path, quiet: bool = False) -> list[dict]:
    """Rows of a results JSONL file. A line that is not a JSON row (a partial last line from an
    interrupted write, or damage) is skipped with a warning naming the file and line, unless ``quiet``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Results file {path} not found.")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is damaged (not UTF-8 text: {error.reason}).") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif not quiet:
            cut = " (cut off mid-write)" if number == len(lines) else ""
            warn(f"{path}: line {number} is not a readable result row{cut}; skipped.")
    return rows


def _split_name(path: Path) -> tuple[str, str | None]:
    """``gsm8k.member1.jsonl`` -> ``("gsm8k", "member1")``; ``gsm8k.jsonl`` -> ``("gsm8k", None)``."""
    stem = path.name[: -len(RESULTS_SUFFIX)]
    name, _, member = stem.partition(".")
    return name, member or None


def run_info(run_dir: str | Path) -> dict:
    """``run.json`` of a run folder (label, model, adapter, settings, members)."""
    path = Path(run_dir) / RUN_FILE
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"Run folder {run_dir} does not exist.")
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an evaluation run folder ({RUN_FILE} is missing).")
    info = read_json(path)
    if not isinstance(info, dict):
        raise DataError(f"{path} is damaged (expected a JSON object).")
    return info


def summarize_run(run_dir: str | Path) -> dict:
    """Accuracy per dataset and routing of one run folder, recomputed from its JSONL rows.

    Returns ``{"label", "decoding", "run_dir", "results": [{"variant", "dataset", "n",
    "correct", "accuracy"}]}``; accuracy is a fraction (0..1).
    """
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    results = []
    for path in sorted(run_dir.glob(f"*{RESULTS_SUFFIX}")):
        name, member = _split_name(path)
        try:
            dataset = get_dataset(name).name
        except ConfigError:  # not a dataset's results file
            continue
        rows = read_results(path)
        if not rows:
            continue
        variant = rows[0].get("variant") or member or "model"
        correct = sum(bool(row.get("correct")) for row in rows)
        results.append({"variant": variant, "dataset": dataset, "n": len(rows), "correct": correct,
                        "accuracy": correct / len(rows)})
    order = list(ALL_DATASETS)
    results.sort(key=lambda r: (_variant_order(r["variant"]), order.index(r["dataset"])))
    summary = {"label": info.get("label") or run_dir.name, "decoding": info.get("settings", {}).get("decoding"),
               "run_dir": str(run_dir), "results": results}
    if "in_training" in info:  # the contamination guard's counts (modetune.data.contamination)
        summary["in_training"] = info["in_training"]
    return summary


def _variant_order(variant: str) -> tuple[int, int]:
    if variant.startswith("member") and variant[6:].isdigit():
        return (1, int(variant[6:]))
    return (0, 0)


def write_summary(summary: dict, run_dir: str | Path) -> None:
    """Write ``summary.json`` and ``summary.md`` (the table of :func:`report`) into ``run_dir``."""
    table = report_from_summaries([summary])
    write_text(Path(run_dir, "summary.json"), json.dumps({**summary, "table": table["rows"]}, indent=2) + "\n")
    write_text(Path(run_dir, "summary.md"), table["markdown"] + "\n")


# ---------------------------------------------------------------------------- several runs
def report(run_dirs: Sequence[str | Path]) -> dict:
    """The paper-shaped table of several run folders: see :func:`report_from_summaries`."""
    if not run_dirs:
        raise ConfigError("No run folder given.")
    return report_from_summaries([summarize_run(d) for d in run_dirs])


def write_accuracy_report(table: dict, prefix: str | Path, inputs: Sequence[str | Path] = (),
                          overwrite: bool = False) -> tuple[Path, Path]:
    """Write a :func:`report` table as ``PREFIX.md`` and ``PREFIX.json`` (existing files only with
    ``overwrite``; never inside one of the ``inputs``)."""
    prefix = Path(prefix)
    md, js = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".json")
    check_outputs([md, js], inputs, overwrite)
    write_text(md, table["markdown"] + "\n")
    write_text(js, json.dumps({k: v for k, v in table.items() if k != "markdown"}, indent=2) + "\n")
    return md, js


def report_from_summaries(summaries: Sequence[dict]) -> dict:
    """Rows = (run, routing), columns = datasets in the paper's order, plus ``Avg`` per group.

    Accuracies are percentages with one decimal. A group's ``Avg`` is the mean over the
    group's datasets that the row has; when a row lacks a dataset that another row has, its
    average is marked partial (``*`` in markdown, ``"partial": true`` in JSON), since it is
    then not comparable. The decoding (greedy/beamN) is a column of its own.
    Returns ``{"columns", "rows", "markdown"}``.
    """
    rows: dict[tuple[str, str], dict] = {}
    for summary in summaries:
        for result in summary["results"]:
            key = (summary["label"], result["variant"])
            name = summary["label"] if result["variant"] in ("model", "ensemble") else \
                f"{summary['label']} [{result['variant']}]"
            row = rows.setdefault(key, {"name": name, "run": summary["label"], "variant": result["variant"],
                                        "decoding": summary.get("decoding"), "scores": {}, "n": {}})
            row["scores"][result["dataset"]] = round(100 * result["accuracy"], 1)
            row["n"][result["dataset"]] = result["n"]
    present = {dataset for row in rows.values() for dataset in row["scores"]}
    columns = [name for name in ALL_DATASETS if name in present]
    for row in rows.values():
        row["avg"], row["partial"] = {}, {}
        for group, names in GROUPS.items():
            wanted = [n for n in names if n in present]
            have = [row["scores"][n] for n in wanted if n in row["scores"]]
            if have:
                row["avg"][group] = round(sum(have) / len(have), 1)
                row["partial"][group] = len(have) < len(wanted)
    ordered = list(rows.values())
    markdown = _markdown(columns, ordered)
    notes = [_in_training_note(summary) for summary in summaries]
    if any(notes):
        markdown += "\n\n" + "\n".join(note for note in notes if note)
    return {"columns": columns, "rows": ordered, "markdown": markdown}


def _in_training_note(summary: dict) -> str | None:
    """``"! <run>: items that were training questions: gsm8k 12 of 200"`` when any were."""
    counts = {name: n for name, n in (summary.get("in_training") or {}).items() if n}
    if not counts:
        return None
    sizes = {r["dataset"]: r["n"] for r in summary["results"]}
    listed = ", ".join(f"{ALL_DATASETS[name].display} {n} of {sizes.get(name, '?')}" for name, n in counts.items())
    return f"! {summary['label']}: items that were training questions (contamination): {listed}."


def _markdown(columns: list[str], rows: list[dict]) -> str:
    parts = []
    for group, names in GROUPS.items():
        cols = [c for c in columns if c in names]
        if not cols:
            continue
        header = ["Model", "Decoding", *[ALL_DATASETS[c].display for c in cols], "Avg"]
        lines = [f"**{group.capitalize()}** (accuracy %)", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) + 1)) + "|"]
        for row in rows:
            if not any(c in row["scores"] for c in cols):
                continue
            cells = [f"{row['scores'][c]:.1f}" if c in row["scores"] else "–" for c in cols]
            avg = row["avg"].get(group)
            avg_cell = "–" if avg is None else f"{avg:.1f}" + ("*" if row["partial"].get(group) else "")
            lines.append("| " + " | ".join([row["name"], str(row["decoding"] or "?"), *cells, avg_cell]) + " |")
        parts.append("\n".join(lines))
    if any(any(row["partial"].values()) for row in rows):
        parts.append("\\* average over fewer datasets than other rows: not comparable.")
    return "\n\n".join(parts) if parts else "(no results)"


# ---------------------------------------------------------------------------- solved items
def _load_solved(path: Path, dataset: str | None, variant: str | None) -> tuple[str, str, dict[str, bool]]:
    """``(dataset, label, {item id: correct})`` from a results file, or a run folder + dataset."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give results files or eval run folders).")
    if path.is_file() and not path.name.endswith(RESULTS_SUFFIX):
        raise ConfigError(f"{path} is not a results file (<dataset>[.member<i>]{RESULTS_SUFFIX}) or a run folder.")
    if path.is_dir():
        if dataset is None:
            raise ConfigError(f"{path} is a run folder: give --dataset (or pass result files).")
        member = None if variant in (None, "ensemble", "model") else variant
        name = get_dataset(dataset).name
        file = path / f"{name}{'' if member is None else '.' + member}{RESULTS_SUFFIX}"
        label = run_info(path).get("label") or path.name
    else:
        file = path
        name, member = _split_name(path)
        name = get_dataset(name).name if name else name
        info_path = path.parent / RUN_FILE
        label = (run_info(path.parent).get("label") if info_path.is_file() else None) or path.stem
    rows = read_results(file)
    if not rows:
        raise DataError(f"{file} holds no results.")
    if member:
        label = f"{label} [{member}]"
    return rows[0].get("dataset", name), label, {row["id"]: bool(row["correct"]) for row in rows}


def solved(results: Sequence[str | Path], labels: Sequence[str] | None = None, dataset: str | None = None,
           variant: str | None = None, output_dir: str | Path | None = None, overwrite: bool = False) -> dict:
    """Which items each run solved, and their overlaps, on one dataset.

    ``results``: 2+ results files (``<dataset>[.member<i>].jsonl``) or run folders (then
    ``dataset`` and optionally ``variant`` pick the file). Items are matched by id (a hash of
    the question) and only items present in every run count. Returns ``{"dataset", "labels",
    "n", "solved": {label: count}, "intersections": [{"runs", "count"}] (every subset of 2+
    runs: items solved by all of them), "none", "union", "regions"}``; ``regions`` (2 or 3
    runs) are the Venn diagram's exclusive regions, keyed by the runs that solved them. With
    ``output_dir``, writes ``solved-<dataset>.md``, ``.json`` and (2-3 runs) ``.png`` (existing
    files only with ``overwrite``; never into one of the ``results``).
    """
    if len(results) < 2:
        raise ConfigError("solved needs at least two results to compare.")
    loaded = [_load_solved(Path(r), dataset, variant) for r in results]
    datasets = {d for d, _, _ in loaded}
    if len(datasets) > 1:
        raise DataError(f"The results are on different datasets ({', '.join(sorted(datasets))}).")
    names = list(labels) if labels else [label for _, label, _ in loaded]
    if len(names) != len(loaded):
        raise ConfigError(f"Got {len(names)} labels for {len(loaded)} results.")
    if len(set(names)) != len(names):
        names = [f"{name} ({i + 1})" for i, name in enumerate(names)]
    common = set.intersection(*(set(items) for _, _, items in loaded))
    if not common:
        raise DataError("The results share no item: they are not on the same test set.")
    sets = {name: {i for i in common if items[i]} for name, (_, _, items) in zip(names, loaded)}
    intersections = []
    for size in range(2, len(names) + 1):
        for combo in combinations(names, size):
            intersections.append({"runs": list(combo), "count": len(set.intersection(*(sets[c] for c in combo)))})
    union = set.union(*sets.values())
    regions = {}
    if len(names) <= 3:
        for size in range(1, len(names) + 1):
            for combo in combinations(names, size):
                inside = set.intersection(*(sets[c] for c in combo))
                outside = set.union(set(), *(sets[c] for c in names if c not in combo))
                regions[" & ".join(combo)] = len(inside - outside)
    result = {"dataset": datasets.pop(), "labels": names, "n": len(common),
              "solved": {name: len(items) for name, items in sets.items()}, "intersections": intersections,
              "union": len(union), "none": len(common) - len(union), "regions": regions,
              "items": {name: sorted(items) for name, items in sets.items()}}
    result["markdown"] = solved_markdown(result)
    if output_dir is not None:
        write_solved(result, sets, output_dir, inputs=results, overwrite=overwrite)
    return result


def solved_markdown(result: dict) -> str:
    """The table of :func:`solved`: solved per run, every intersection, union and none."""
    n = result["n"]
    pct = lambda c: f"{100 * c / n:.1f}" if n else "0.0"
    lines = [f"**{ALL_DATASETS[result['dataset']].display if result['dataset'] in ALL_DATASETS else result['dataset']}**: "
             f"{n} items common to all runs", "", "| Items solved by | Count | % |", "|---|---:|---:|"]
    for name, count in result["solved"].items():
        lines.append(f"| {name} | {count} | {pct(count)} |")
    for inter in result["intersections"]:
        lines.append(f"| {' ∩ '.join(inter['runs'])} | {inter['count']} | {pct(inter['count'])} |")
    lines.append(f"| any (union) | {result['union']} | {pct(result['union'])} |")
    lines.append(f"| none | {result['none']} | {pct(result['none'])} |")
    if result["regions"]:
        lines += ["", "| Venn region (solved by exactly) | Count |", "|---|---:|"]
        lines += [f"| {region} | {count} |" for region, count in result["regions"].items()]
    return "\n".join(lines)


def write_solved(result: dict, sets: dict[str, set], output_dir: str | Path, inputs: Sequence[str | Path] = (),
                 overwrite: bool = False) -> dict[str, Path]:
    """Write ``solved-<dataset>.md``/``.json`` and, for 2 or 3 runs, the Venn diagram ``.png``
    (:func:`~modetune.utils.outputs.check_outputs` first, each file staged)."""
    stem = Path(output_dir) / f"solved-{result['dataset']}"
    paths = {"md": stem.with_suffix(".md"), "json": stem.with_suffix(".json")}
    if 2 <= len(sets) <= 3:
        paths["png"] = stem.with_suffix(".png")
    check_outputs(paths.values(), inputs, overwrite)
    write_text(paths["md"], result["markdown"] + "\n")
    write_text(paths["json"], json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2) + "\n")
    if "png" in paths:
        with staged(paths["png"], folder=False) as stage:
            draw_venn(sets, stage, title=f"{result['dataset']}: items solved ({result['n']} items)")
    result["files"] = {k: str(v) for k, v in paths.items()}
    return paths


def draw_venn(sets: dict[str, set], path: str | Path, title: str = "") -> None:
    """A 2- or 3-way Venn diagram of solved-item sets (matplotlib-venn), saved as PNG.

    Unweighted circles (every region drawn, labelled with its count), so empty regions and
    empty sets still give a readable figure.
    """
    plt = pyplot()  # the Agg backend is set before matplotlib_venn imports pyplot
    from matplotlib_venn import venn2, venn3
    from matplotlib_venn.layout import venn2 as layout2
    from matplotlib_venn.layout import venn3 as layout3

    names = list(sets)
    fig, ax = plt.subplots(figsize=(5, 5))
    if len(names) == 3:
        layout = layout3.DefaultLayoutAlgorithm(fixed_subset_sizes=(1,) * 7)
        venn3([sets[n] for n in names], set_labels=names, ax=ax, layout_algorithm=layout)
    else:
        layout = layout2.DefaultLayoutAlgorithm(fixed_subset_sizes=(1,) * 3)
        venn2([sets[n] for n in names], set_labels=names, ax=ax, layout_algorithm=layout)
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
