"""Evaluation runs: options (:class:`EvalConfig`) and the run folder (models load through :mod:`modetune.loading`).

:func:`run_eval` is the command line's ``eval``: it loads and checks every dataset, then the
model (:func:`modetune.loading.load_source`), then calls :func:`evaluate`, which writes ``run.json``, one
``<dataset>[.member<i>].jsonl`` per dataset and routing (:func:`evaluate_dataset`, appended
after every batch so an interrupted run resumes where it stopped) and the summary
(:mod:`modetune.eval.results`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from torch import nn

from ..data import parse_source, select_records
from ..data.chat import render_prompt
from ..data.contamination import eval_contamination
from ..loading import ModelSource, quiet_transformers
from ..utils.checks import differing_settings
from ..utils.config import Config
from ..utils.errors import ConfigError, DataError
from ..utils.integrity import read_json
from ..utils.outputs import check_output, staged, write_text
from ..utils.prompts import AUTO, resolve_style
from .datasets import get_dataset, parse_dataset_list
from .generation import generate_responses
from .members import describe_member, forced_member, member_index, parse_members, variant_name
from .protocol import item_id, score_response
from .results import (
    RUN_FILE,
    read_results,
    report_from_summaries,
    results_path,
    summarize_run,
    write_summary,
)
from .sources import load_test_items, resolve_data_dir


# ---------------------------------------------------------------------------- options
@dataclass
class EvalConfig(Config):
    """Options of an evaluation run; each field's meaning is its ``help``."""

    what: ClassVar[str] = "eval"

    batch_size: int = field(default=16, metadata={
        "min": 1, "help": "prompts per generate call; outputs do not depend on it"})
    max_new_tokens: int | None = field(default=None, metadata={"min": 1,
        "help": "generation budget (none: the reference's 256 arithmetic, 32 commonsense)"})
    num_beams: int = field(default=1, metadata={"min": 1, "help": "1 = greedy; the reference protocol uses 4"})
    prompt_style: str = field(default="auto", metadata={
        "help": "prompt template: auto (the adapter's training style, else alpaca), alpaca, llm-adapters (the "
                "reference's string, byte for byte) or chat (the tokenizer's chat template)"})
    limit: int | None = field(default=None, metadata={"min": 1, "help": "first N items of each dataset (none: all)"})
    members: list[int | None] | None = field(default=None, metadata={
        "help": "routings to evaluate: member indices and/or none (= the ensemble); none: the model as loaded"})
    stop_at_answer: bool = field(default=True, metadata={
        "help": "stop generating once the answer is settled (modetune.eval.protocol)"})
    cut_at_next_response: bool = field(default=True, metadata={
        "help": "score only the text before the first '### Response:' the model writes, as LLM-Adapters does "
                "(false: the whole generated text)"})
    sort_by_length: bool = field(default=True, metadata={
        "help": "batch prompts of similar length together (longest first)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar with items/s"})
    prefix_cache: bool = field(default=True, metadata={
        "help": "greedy only: compute the prompt template's shared header once per batch (same math)"})

    def validate(self) -> None:
        if self.prompt_style != AUTO:
            resolve_style(self.prompt_style, None)

    @property
    def decoding(self) -> str:
        """``"greedy"`` or ``"beam<n>"``: the label stored with every result."""
        return "greedy" if self.num_beams == 1 else f"beam{self.num_beams}"

    def settings(self) -> dict:
        """The options that change outputs (a resumed run must match them)."""
        return {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, "prompt_style": self.prompt_style,
                "stop_at_answer": self.stop_at_answer, "cut_at_next_response": self.cut_at_next_response,
                "decoding": self.decoding}


# ---------------------------------------------------------------------------- the run folder
# run.json keys a resumed run must match (a key an older run.json lacks is not compared)
RESUMED_IF_SAME = ("settings", "model", "adapter", "adapter_weights", "weights_dtypes")


def eval_inputs(adapter: str | Path | None, model: str | None, datasets, data_dir: str | Path | None = None) -> list:
    """What an evaluation reads, which its output must not touch: the adapter, the model folder, the
    ``--data-dir`` folder and every ``name=FILE`` test set (already loaded datasets name no file)."""
    loaded = isinstance(datasets, list) and datasets and isinstance(datasets[0], tuple)
    files = [] if loaded else [parse_source(spec)[0].partition("=")[2] or None for spec in parse_dataset_list(datasets)]
    return [adapter, model, resolve_data_dir(data_dir), *files]


def adapter_weights(adapter: str | Path | None) -> str | None:
    """The first 16 hex digits of a sha256 over the adapter's weights files: an adapter trained again
    into the same folder is another run."""
    if adapter is None or not Path(adapter).is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(adapter).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def check_run_folder(output_dir: str | Path, run: dict, inputs=(), overwrite: bool = False) -> dict | None:
    """``output_dir`` under the one output policy (:mod:`modetune.utils.outputs`), before anything is
    written: refused when it is, holds or lies inside one of the ``inputs`` (always); an existing
    output resumes when its ``run.json`` records the same :data:`RESUMED_IF_SAME` as ``run``, is
    refused otherwise, and is replaced only with ``overwrite``. Returns the ``run.json`` to resume
    (``None``: a new or replaced folder)."""
    output_dir = Path(output_dir)
    check_output(output_dir, inputs, overwrite=True)
    if overwrite or not output_dir.exists() or output_dir.is_dir() and not any(output_dir.iterdir()):
        return None
    path = output_dir / RUN_FILE
    if not path.is_file():
        what = "is a file" if not output_dir.is_dir() else f"holds no evaluation run ({RUN_FILE} is missing)"
        raise ConfigError(f"--output {output_dir} {what}; pass --overwrite to replace it.")
    previous = read_json(path)
    if not isinstance(previous, dict):
        raise DataError(f"{path} is damaged (expected a JSON object); pass --overwrite to replace the run.")
    keys = [key for key in RESUMED_IF_SAME if key in previous and key in run]
    differ = differing_settings({k: previous[k] for k in keys}, {k: run[k] for k in keys})
    for key in [key for key in keys if key in differ][:1]:
        old, new = previous[key], run[key]
        shown = (", ".join(f"{k}: {old.get(k)} vs {new.get(k)}" for k in differing_settings(old, new))
                 if isinstance(old, dict) and isinstance(new, dict) else f"{old} vs {new}")
        raise ConfigError(f"--output {output_dir} holds a run with other {key} ({shown}); use another output "
                          "folder, or --overwrite to replace it.")
    return previous


def _open_run(output_dir: Path, run: dict, inputs=(), overwrite: bool = False) -> None:
    """:func:`check_run_folder`, then write ``run.json``: a new folder (or the one ``overwrite``
    replaces, whole) appears with it or not at all; a resumed one keeps its label and the
    ``in_training`` counts of datasets evaluated into it before."""
    previous = check_run_folder(output_dir, run, inputs, overwrite)
    if previous is not None:
        run["label"] = previous.get("label", run["label"])
        if "in_training" in run:
            run["in_training"] = {**previous.get("in_training", {}), **run["in_training"]}
    text = json.dumps(run, indent=2) + "\n"
    if previous is None and (overwrite or not output_dir.exists()):
        with staged(output_dir) as stage:
            (stage / RUN_FILE).write_text(text, encoding="utf-8")
    else:
        write_text(output_dir / RUN_FILE, text)


# ---------------------------------------------------------------------------- one dataset (resumable)
def _resume_rows(path: Path, ids: list[str]) -> dict[int, dict]:
    """Rows already written to ``path`` (for resuming), checked against the current items."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # a row cut off mid-write: dropped before appending
        os.truncate(path, data.rfind(b"\n") + 1)
    done = {}
    for row in read_results(path):
        index = row.get("index")
        if not isinstance(index, int) or index >= len(ids) or row.get("id") != ids[index]:
            raise ConfigError(f"{path} holds results for other items (item {index}); use another output folder.")
        done[index] = row
    return done


def _append_rows(path: Path, rows: list[dict]) -> None:
    """Append one batch's rows (a kill may cut the last one: :func:`_resume_rows` drops it)."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _write_sorted(path: Path, rows: dict[int, dict]) -> None:
    write_text(path, "".join(json.dumps(rows[index], ensure_ascii=False) + "\n" for index in sorted(rows)))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, dynamic_ncols=True)


def evaluate_dataset(model: nn.Module, tokenizer, dataset: str, records: list[dict], config: EvalConfig,
                     output_dir: str | Path) -> dict[str, dict]:
    """Evaluate ``records`` of ``dataset`` for every routing in ``config.members``.

    One pass over the data: items are sorted by prompt length and batched once, and each
    batch is generated for every routing in turn (member texts diverge, so each routing
    needs its own generation). Rows are appended to ``<dataset>[.member<i>].jsonl`` after every batch, so
    an interrupted run resumes where it stopped; at the end each file is rewritten in item
    order. Returns ``{variant: {n, correct, accuracy, items_per_s, ...}}``.
    """
    info = get_dataset(dataset)
    output_dir = Path(output_dir)
    members = config.members if config.members is not None else [None]
    for member in members:
        if member is not None:
            member_index(model, member)
    max_new = config.max_new_tokens or info.default_max_new_tokens
    ids = [item_id(r) for r in records]  # all items: a file may hold rows beyond this run's limit
    records = records[: config.limit] if config.limit else records
    prompts = [render_prompt(tokenizer, r["instruction"], r.get("input") or "", config.prompt_style) for r in records]
    paths = {m: results_path(output_dir, info.name, m) for m in members}
    done = {m: _resume_rows(paths[m], ids) for m in members}
    todo = [i for i in range(len(records)) if any(i not in done[m] for m in members)]
    if config.sort_by_length:
        lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
        todo.sort(key=lambda i: (-lengths[i], i))
    pending = sum(1 for i in todo for m in members if i not in done[m])
    generated, started = 0, time.perf_counter()
    with _progress(pending, info.name, config.progress) as bar:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            for member in members:
                items = [i for i in batch if i not in done[member]]
                if not items:
                    continue
                with forced_member(model, member):
                    responses = generate_responses(model, tokenizer, [prompts[i] for i in items], info.name, max_new,
                                                   config.num_beams, config.stop_at_answer, config.prefix_cache,
                                                   config.cut_at_next_response)
                rows = []
                for i, response in zip(items, responses):
                    extracted, correct = score_response(info.name, response, records[i]["answer"],
                                                        config.cut_at_next_response)
                    rows.append({"index": i, "id": ids[i], "dataset": info.name, "variant": variant_name(model, member),
                                 "decoding": config.decoding, "prompt": prompts[i], "response": response,
                                 "extracted": extracted, "gold": records[i]["answer"], "correct": correct})
                _append_rows(paths[member], rows)
                done[member].update({row["index"]: row for row in rows})
                generated += len(rows)
                bar.update(len(rows))
    seconds = time.perf_counter() - started
    summary = {}
    for member in members:
        _write_sorted(paths[member], done[member])
        rows = [row for index, row in done[member].items() if index < len(records)]
        correct = sum(bool(row["correct"]) for row in rows)
        summary[variant_name(model, member)] = {
            "dataset": info.name, "n": len(rows), "correct": correct, "accuracy": correct / len(rows) if rows else 0.0,
            "file": paths[member].name, "decoding": config.decoding,
            "generated": generated, "seconds": round(seconds, 3),
            "items_per_s": round(generated / seconds, 3) if generated and seconds > 0 else None,
        }
    return summary


# ---------------------------------------------------------------------------- a run
def load_datasets(datasets: str | Sequence[str] | list[tuple[str, list[dict]]], data_dir: str | Path | None = None
                  ) -> list[tuple[str, list[dict]]]:
    """``[(name, records)]`` for dataset names/``name=path`` specs, every one loaded and
    validated (so bad input fails before any model is loaded). Already loaded pairs pass."""
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], tuple):
        return datasets
    loaded = []
    for spec in parse_dataset_list(datasets):
        spec, options = parse_source(spec)
        name, _, path = spec.partition("=")
        records = select_records(load_test_items(name, data_dir=data_dir, path=path or None), options)
        loaded.append((get_dataset(name).name, records))
    return loaded


def evaluate(model: nn.Module, tokenizer, datasets: str | Sequence[str] | list[tuple[str, list[dict]]],
             config: EvalConfig,
             output_dir: str | Path, data_dir: str | Path | None = None, info: dict | None = None,
             label: str | None = None, overwrite: bool = False) -> dict:
    """Evaluate a loaded model on several datasets; write results, ``run.json`` and the summary.

    ``output_dir`` follows the one output policy (:func:`check_run_folder`: never an input, resumed
    only when it holds a run of the same settings, replaced only with ``overwrite``). ``datasets``:
    names (``"gsm8k,svamp"``, ``"all"``), ``name=path.json`` entries, or the output of
    :func:`load_datasets`. Every dataset is loaded and validated before any generation starts. When
    the adapter's run folder recorded its training questions (:mod:`modetune.data.contamination`),
    ``run.json`` and the summary get ``in_training``: per dataset, the evaluated items that were
    training questions (a warning when any). Returns the summary (:func:`modetune.eval.results.summarize_run`).
    """
    from ..utils.version import __version__

    output_dir = Path(output_dir)
    loaded = load_datasets(datasets, data_dir)
    info = dict(info or {})
    config = dataclasses.replace(config, prompt_style=resolve_style(config.prompt_style, info.get("adapter")))
    members = config.members if config.members is not None else [None]
    run = {"label": label or _default_label(info), "model": info.get("model"), "adapter": info.get("adapter"),
           "adapter_weights": adapter_weights(info.get("adapter")), "kind": info.get("kind"),
           "weights_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()}),
           "settings": config.settings(),
           "members": {variant_name(model, m): (describe_member(model, member_index(model, m)) if m is not None
                                                else variant_name(model, None)) for m in members},
           "modetune_version": __version__}
    in_training = eval_contamination(info.get("adapter"), [(name, records[: config.limit] if config.limit else records)
                                                           for name, records in loaded])
    if in_training is not None:  # the adapter's run recorded its training questions
        run["in_training"] = in_training
    _open_run(output_dir, run, eval_inputs(info.get("adapter"), info.get("model"), datasets, data_dir), overwrite)
    timings = {}
    for name, records in loaded:
        timings[name] = evaluate_dataset(model, tokenizer, name, records, config, output_dir)
    summary = summarize_run(output_dir)
    summary["timings"] = timings
    write_summary(summary, output_dir)
    summary["markdown"] = report_from_summaries([summary])["markdown"]
    return summary


def _default_label(info: dict) -> str:
    if info.get("adapter"):
        path = Path(info["adapter"]).resolve()
        return path.parent.name if path.name == "adapter" else path.name  # runs/NAME/adapter -> NAME
    return Path(str(info.get("model") or "model")).name


def evaluate_model(source: ModelSource, datasets: str | Sequence[str], options: EvalConfig | None = None,
                   output: str | Path | None = None, *, data_dir: str | None = None, label: str | None = None,
                   member: int | None = None, members: str | None = None, overwrite: bool = False) -> dict:
    """Load ``source`` (a model, and an adapter on it), evaluate it on ``datasets`` and return the
    summary. ``output`` (:func:`default_output` when none) is checked before anything loads
    (:func:`check_run_folder`: never an input; a folder holding another run is refused, or replaced
    with ``overwrite``; one with the same settings resumes). ``member`` (one member alone) or
    ``members`` (``"all"``, ``"0,2,ensemble"``) choose the routings. Every dataset is loaded and
    checked before the model loads."""
    from ..utils.models import base_model_for

    if member is not None and members is not None:
        raise ConfigError("Give member or members, not both.")
    config = options or EvalConfig()
    config = dataclasses.replace(config, prompt_style=resolve_style(config.prompt_style, source.adapter))
    model = base_model_for(source.model, source.adapter)
    source = dataclasses.replace(source, model=model)
    output = Path(output) if output is not None else default_output(source.adapter, model, config.decoding)
    run = {"settings": config.settings(), "model": model, "adapter_weights": adapter_weights(source.adapter),
           "adapter": None if source.adapter is None else str(Path(source.adapter))}
    check_run_folder(output, run, eval_inputs(source.adapter, model, datasets, data_dir), overwrite)
    data = load_datasets(datasets, data_dir)  # bad names, files, records fail before the model loads
    quiet_transformers()
    loaded, tokenizer, info = source.load()
    config = dataclasses.replace(config, members=parse_members(member, members, loaded))
    return evaluate(loaded, tokenizer, data, config, output, data_dir, info=info, label=label, overwrite=overwrite)


def default_output(adapter: str | Path | None, model: str, decoding: str) -> Path:
    """Beside the adapter, never inside it: ``RUN/eval-<decoding>`` for a training run's ``RUN/adapter``,
    else ``ADAPTER-eval-<decoding>``; ``eval/<model>-<decoding>`` for the base model alone."""
    if adapter is None:
        return Path("eval") / f"{Path(model).name}-{decoding}"
    path = Path(adapter).resolve()
    return path.parent / (f"eval-{decoding}" if path.name == "adapter" else f"{path.name}-eval-{decoding}")
