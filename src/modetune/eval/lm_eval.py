"""Evaluating a (MoD) model through EleutherAI's lm-evaluation-harness.

The MoD ensemble lives in hooks on the wrapped Hugging Face model, so lm-eval's ``HFLM``
can be handed our model object as it is: its log-likelihood requests (``model(ids).logits``)
and its generation requests (``model.generate``) both read the ensemble logits (or one
member's, with ``member``).

Task names:
- ``modetune_<dataset>_gen``: a generation task over one of the paper's datasets (the
  LLM-Adapters file from ``data_dir``: by default the packaged one; ``hub`` for the Hugging
  Face hub), prompted with our Alpaca prompt and scored by
  :func:`modetune.eval.protocol.score_response`: the same protocol as
  ``modetune eval`` (greedy, stopping at EOS only).
- ``modetune_<dataset>_mc``: a log-likelihood (multiple-choice) task: the answer keywords
  listed in the item ("Answer format: answer1/answer2/...") are scored as continuations of
  the prompt; accuracy is the share of items whose gold keyword has the highest
  log-likelihood (:func:`choice_loglikelihoods` is our own implementation of that scorer).
- anything else goes to lm-eval's task registry (``arc_easy``, ``hellaswag``, ...; those
  download their data), with ``include_path`` for your own YAML tasks.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.chat import render_prompt
from ..loading import ModelSource, quiet_transformers
from ..utils.config import Config
from ..utils.errors import ConfigError
from ..utils.outputs import check_output, write_text
from ..utils.prompts import AUTO, format_prompt, resolve_style
from .datasets import get_dataset
from .members import forced_member
from .protocol import score_response
from .sources import dataset_file, find_dataset_folder, load_test_items, resolve_data_dir

TASK_RE = re.compile(r"modetune_(?P<dataset>.+)_(?P<kind>gen|mc)")
ANSWER_FORMAT_RE = re.compile(r"Answer format:\s*(\S+)")


def answer_choices(dataset: str, record: dict) -> list[str]:
    """The candidate answers of an item, for log-likelihood scoring.

    Keyword datasets: the item's own ``Answer format: a/b/c`` list when present (so a
    3-option item is not scored against ``answer4``), else the dataset's keywords. AQuA:
    ``A``..``E``. Numeric datasets have no candidates (:class:`~modetune.utils.errors.ConfigError`).
    """
    info = get_dataset(dataset)
    if info.kind == "numeric":
        raise ConfigError(f"{info.name} is a numeric dataset: it has no answer choices for log-likelihood scoring.")
    match = ANSWER_FORMAT_RE.search(record.get("instruction", ""))
    if info.kind == "keyword" and match:
        listed = [c for c in match.group(1).split("/") if c in info.keywords]
        if listed:
            return listed
    return list(info.keywords)


def _split_context(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's convention: trailing whitespace of the context moves onto the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


@torch.no_grad()
def choice_loglikelihoods(model: nn.Module, tokenizer, context: str, choices: Sequence[str]) -> list[float]:
    """Sum of log-probabilities of each choice as a continuation of ``context``.

    Tokenised as lm-eval does: continuation tokens = tokens of ``context + choice`` after
    the tokens of ``context`` (trailing whitespace of the context moved to the
    continuation), no special tokens added. One forward pass per choice, float32 log-softmax.
    """
    device = next(model.parameters()).device
    scores = []
    for choice in choices:
        ctx, cont = _split_context(context, choice)
        whole = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
        n_ctx = len(tokenizer(ctx, add_special_tokens=False)["input_ids"])
        if n_ctx == 0:
            raise ValueError("The context is empty: there is no token to condition the choices on.")
        target = whole[n_ctx:]
        if not target:
            raise ValueError(f"Choice {choice!r} adds no token to the context.")
        ids = torch.tensor([whole], device=device)
        logits = model(input_ids=ids).logits[0, n_ctx - 1:-1].float()
        logprobs = logits.log_softmax(-1).gather(-1, torch.tensor(target, device=device)[:, None])
        scores.append(float(logprobs.sum()))
    return scores


def loglikelihood_accuracy(model: nn.Module, tokenizer, dataset: str, records: Sequence[dict],
                           prompt_style: str = "alpaca", member: int | None = None) -> dict:
    """Our own multiple-choice scorer: the share of items whose gold answer has the highest
    log-likelihood among :func:`answer_choices` (ties: the first choice). Returns ``{"acc",
    "n", "items": [{"loglikelihoods", "choices", "pred", "gold", "correct"}]}``."""
    items = []
    with forced_member(model, member):
        for record in records:
            choices = answer_choices(dataset, record)
            prompt = format_prompt(record["instruction"], record.get("input") or "", prompt_style)
            lls = choice_loglikelihoods(model, tokenizer, prompt, choices)
            pred = choices[max(range(len(lls)), key=lambda i: (lls[i], -i))]
            gold = str(record["answer"]).strip()
            items.append({"loglikelihoods": lls, "choices": choices, "pred": pred, "gold": gold, "correct": pred == gold})
    n = len(items)
    return {"acc": sum(i["correct"] for i in items) / n if n else 0.0, "n": n, "items": items}


def task_config(dataset: str, kind: str, data_file: str | Path, prompt_style: str = "alpaca",
                max_gen_toks: int | None = None, name: str | None = None, tokenizer=None) -> dict:
    """An lm-eval task (a config dict) over an LLM-Adapters JSON file.

    ``kind="gen"``: ``generate_until`` (greedy, EOS only, ``max_gen_toks`` default = the
    dataset's budget), metric ``acc`` = our protocol. ``kind="mc"``: ``multiple_choice`` over
    :func:`answer_choices` with no delimiter between prompt and answer, metric ``acc``.
    ``prompt_style="chat"`` renders with ``tokenizer``'s chat template.
    """
    info = get_dataset(dataset)
    if kind not in ("gen", "mc"):
        raise ConfigError(f"Task kind must be 'gen' or 'mc', got {kind!r}.")
    if prompt_style == "chat" and tokenizer is None:
        raise ConfigError("prompt_style chat renders with a tokenizer's chat template: pass the tokenizer.")
    if kind == "mc" and info.kind == "numeric":
        raise ConfigError(f"{info.name} is numeric: only modetune_{info.name}_gen exists.")
    config: dict[str, Any] = {
        "task": name or f"modetune_{info.name}_{kind}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": lambda doc: render_prompt(tokenizer, doc["instruction"], doc.get("input") or "", prompt_style),
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    if kind == "gen":
        def process_results(doc: dict, results: list[str]) -> dict:
            return {"acc": float(score_response(info.name, results[0], doc["answer"])[1])}

        config.update({"output_type": "generate_until", "doc_to_target": lambda doc: str(doc["answer"]),
                       "generation_kwargs": {"until": [], "do_sample": False,
                                             "max_gen_toks": max_gen_toks or info.default_max_new_tokens},
                       "process_results": process_results})
    else:
        config.update({"output_type": "multiple_choice", "target_delimiter": "",
                       "doc_to_choice": lambda doc: answer_choices(info.name, doc),
                       "doc_to_target": lambda doc: answer_choices(info.name, doc).index(str(doc["answer"]).strip())})
    return config


def resolve_tasks(tasks: str | Sequence[str], data_dir: str | Path | None = None, prompt_style: str = "alpaca",
                  max_gen_toks: int | None = None, workdir: str | Path | None = None, tokenizer=None) -> list[str | dict]:
    """Task names -> lm-eval task specs: ``modetune_<dataset>_<gen|mc>`` become config dicts
    (data from ``data_dir``, :func:`~modetune.eval.sources.resolve_data_dir`: by default the packaged
    files; items from the hub are written to ``workdir`` as JSON); others stay names."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise ConfigError("No lm-eval task given.")
    out: list[str | dict] = []
    for name in names:
        match = TASK_RE.fullmatch(name)
        if not match:
            out.append(name)
            continue
        info = get_dataset(match.group("dataset"))
        records = load_test_items(info.name, data_dir=data_dir)
        folder = resolve_data_dir(data_dir)
        if folder is not None and find_dataset_folder(folder, info.name) is not None:
            path = dataset_file(info.name, folder)
        else:
            folder = Path(workdir or tempfile.mkdtemp(prefix="modetune-lm-eval-"))
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{info.name}.json"
            path.write_text(json.dumps(records))
        out.append(task_config(info.name, match.group("kind"), path, prompt_style, max_gen_toks, name=name,
                               tokenizer=tokenizer))
    return out


def make_lm(model: nn.Module, tokenizer, batch_size: int = 8, max_length: int | None = None):
    """lm-eval's ``HFLM`` around our model object (MoD, peft or plain); its logits are ours."""
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)


def run_lm_eval(model: nn.Module, tokenizer, tasks: Sequence[str | dict], batch_size: int = 8,
                limit: int | float | None = None, num_fewshot: int | None = None, include_path: str | None = None,
                member: int | None = None, log_samples: bool = False) -> dict:
    """Run lm-eval's ``simple_evaluate`` on a loaded model; returns lm-eval's results dict.

    ``member``: evaluate one ensemble member alone (router forced to it).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = make_lm(model, tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else None
    with forced_member(model, member):
        results = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                  task_manager=manager, log_samples=log_samples, batch_size=batch_size)
    if results is None:
        raise ValueError("lm-eval returned no results.")
    return results


@dataclass
class LmEvalConfig(Config):
    """A run through lm-evaluation-harness (:func:`lm_eval_source`); every field is a ``modetune lm-eval`` flag."""

    what: ClassVar[str] = "lm-eval"

    source: ModelSource = field(default_factory=ModelSource, metadata={"help": "the model and adapter"})
    tasks: str = field(default="", metadata={"help": "comma-separated task names", "required": True})
    data_dir: str | None = field(default=None, metadata={
        "help": "test sets of modetune_* tasks: a folder, packaged:math-split, packaged:llm-adapters or hub (none: "
                "the packaged LLM-Adapters sets)"})
    include_path: str | None = field(default=None, metadata={"help": "folder of extra lm-eval task YAML files"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "requests per model call"})
    limit: float | None = field(default=None, metadata={"gt": 0, "help": "items per task (a fraction if < 1; none: all)"})
    num_fewshot: int | None = field(default=None, metadata={
        "min": 0, "help": "few-shot examples (none: the task's default)"})
    member: int | None = field(default=None, metadata={
        "range_note": "-k to k-1, the model\'s members", "help": "evaluate ensemble member i alone (none: as loaded)"})
    prompt_style: str = field(default="auto", metadata={
        "help": "prompt template: auto (the adapter's training style, else alpaca), alpaca, llm-adapters or chat"})
    max_gen_toks: int | None = field(default=None, metadata={
        "min": 1, "help": "for modetune_*_gen tasks (none: per dataset)"})
    output: str | None = field(default=None, metadata={"help": "write the results as JSON to this file (none: print)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output file (off: refuse it)"})

    def validate(self) -> None:
        if not self.tasks.strip():
            raise ConfigError("tasks must name at least one task.")
        if self.prompt_style != AUTO:
            resolve_style(self.prompt_style, None)  # refuses an unknown style


def check_task_names(tasks: str, include_path: str | None = None) -> None:
    """Refuse task names lm-eval does not know (``modetune_*`` names and YAML files aside), in one
    line, before any model loads (lm-eval itself raises a ``KeyError`` mid-run)."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    others = [n for n in names if not TASK_RE.fullmatch(n) and not Path(n).is_file()]
    if not others:
        return
    from lm_eval.tasks import TaskManager

    known = TaskManager(include_path=include_path).all_tasks
    unknown = [n for n in others if n not in known]
    if unknown:
        raise ConfigError(f"Unknown lm-eval task(s): {', '.join(unknown)} (modetune_<dataset>_gen|mc, or a task "
                          "from `lm_eval --tasks list`).")


def lm_eval_source(config: LmEvalConfig) -> dict:
    """Load a model (and adapter) and run lm-eval (the CLI's ``lm-eval``). Writes the results
    (without per-sample logs) to ``output`` as JSON when given; returns them with a
    ``"table"`` entry (lm-eval's markdown table)."""
    c = config
    folder = resolve_data_dir(c.data_dir)
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f"Data folder {c.data_dir} does not exist.")
    if c.output and Path(c.output).is_dir():
        raise ConfigError(f"Output {c.output} is a folder; give a file name for the JSON results.")
    if c.output:
        check_output(c.output, [c.source.adapter, c.source.model, folder, c.include_path], c.overwrite)
    style = resolve_style(c.prompt_style, c.source.adapter)
    check_task_names(c.tasks, c.include_path)  # before the model loads
    with tempfile.TemporaryDirectory(prefix="modetune-lm-eval-") as workdir:  # hub items, removed at the end
        resolve_tasks(c.tasks, data_dir=c.data_dir, max_gen_toks=c.max_gen_toks, workdir=workdir)  # bad names fail
        quiet_transformers()                                                          # before the model loads
        loaded, tokenizer, info = c.source.load()
        specs = resolve_tasks(c.tasks, data_dir=c.data_dir, prompt_style=style, max_gen_toks=c.max_gen_toks,
                              workdir=workdir, tokenizer=tokenizer)
        limit = int(c.limit) if c.limit is not None and c.limit >= 1 else c.limit
        results = run_lm_eval(loaded, tokenizer, specs, batch_size=c.batch_size, limit=limit,
                              num_fewshot=c.num_fewshot, include_path=c.include_path, member=c.member)
    from lm_eval.utils import make_table

    summary = {"model": info, "member": c.member, "results": results.get("results", {}),
               "n_samples": results.get("n-samples", {}), "table": make_table(results)}
    if c.output:
        write_text(c.output, json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2,
                                        default=str) + "\n")
    return summary
