"""The `modetune` command line: the subcommands and their arguments; every command calls the library.

Errors a user can cause (:class:`~modetune.errors.UserError`: bad fields, bad values, bad data; a
missing or unreadable file; malformed JSON or YAML) print one line and exit 1; set
``MODETUNE_DEBUG=1`` for the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import UserError, first_line
from .flags import HelpFormatter, add_config_flags, config_from_args

BAD_INPUT = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
             json.JSONDecodeError)


# ---------------------------------------------------------------- training commands
def _add_train(sub) -> None:
    from ..train.config import TrainConfig

    p = sub.add_parser("train", help="train a MoD / LoRA variant (the main job)", formatter_class=HelpFormatter,
                       description="Train a variant. Defaults: configs/default.yaml values; every field is a flag.")
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in output_dir (default: start afresh)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an output_dir that holds a run, removing it first, checkpoints included "
                   "(default: such a folder is refused)")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=_run_train)


def _run_train(args) -> None:
    from ..train.config import TrainConfig
    from ..train.trainer import train

    train(config_from_args(args, TrainConfig), resume=args.resume, overwrite=args.overwrite)


def _add_params(sub) -> None:
    p = sub.add_parser("params", help="count total and trainable parameters of a variant (no weights needed)",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", default="default", help="model name, folder, or folder holding only config.json")
    p.add_argument("--preset", default="lora_notk_mod", help="variant preset")
    p.add_argument("--k", type=int, default=3, help="members of the MoD ensemble")
    p.add_argument("--lora-r", type=int, default=32, help="LoRA rank")
    p.add_argument("--lora-targets", default=None, help="comma-separated module names (none: per architecture)")
    p.add_argument("--json", action="store_true", help="print a JSON object (default: a table)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run the model folder's own code (default: refuse such a model)")
    p.set_defaults(func=_run_params)


def _run_params(args) -> None:
    from ..train.params import count_parameters, format_parameter_table

    targets = args.lora_targets.split(",") if args.lora_targets else None
    result = count_parameters(args.model, args.preset, k=args.k, lora_r=args.lora_r, lora_targets=targets,
                              trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_parameter_table(result))


def _add_fit_router(sub) -> None:
    from ..train.fit_router import FitRouterConfig

    p = sub.add_parser("fit-router", help="fit only the router and member norms on frozen members (a MoD adapter)",
                       formatter_class=HelpFormatter,
                       description="Fit a MoD router and member norms for a base model or an existing adapter, "
                       "every other weight frozen; writes a MoD adapter and fit_router.json.")
    p.add_argument("--config", help="YAML file of fit-router fields (flags override it)")
    add_config_flags(p, FitRouterConfig)
    p.set_defaults(func=_run_fit_router)


def _run_fit_router(args) -> None:
    from ..train.fit_router import FitRouterConfig, fit_router, format_fit

    _, result = fit_router(config_from_args(args, FitRouterConfig))
    print(format_fit(result))


# ---------------------------------------------------------------- evaluation commands
# (eval, report, solved, lm-eval are registered here)
def _add_model_flags(p) -> None:
    p.add_argument("--model", default=None, help="base model: 'default' (embedded SmolLM2-135M-Instruct), "
                   "a local folder or a hub name (none: the one the adapter was trained on, else default)")
    p.add_argument("--adapter", help="MoD folder (mod_config.json) or LoRA-only folder (adapter_config.json); "
                   "none: the base model alone")
    p.add_argument("--dtype", default="float32", help="weights dtype (a torch dtype name: float32, bfloat16, float16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (none: where the model loads)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run the model folder's own code (default: refuse such a model)")
    p.add_argument("--ignore-base-mismatch", action="store_true",
                   help="load an adapter recorded for another base model anyway, with a warning (default: refuse)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate on the paper's reasoning datasets (LLM-Adapters protocol)",
                       formatter_class=HelpFormatter,
                       description="Generate answers for LLM-Adapters test sets and score them with the reference "
                       "protocol (see modetune.eval.protocol). Writes <dataset>[.member<i>].jsonl, run.json, "
                       "summary.md/json into the output folder; an interrupted run resumes there.")
    _add_model_flags(p)
    p.add_argument("--datasets", default="all", help="comma-separated names (gsm8k,SVAMP,boolq,...), 'all', "
                   "'arithmetic', 'commonsense', or name=path/to/test.json")
    p.add_argument("--data-dir", help="where test sets come from: a folder holding <Name>/test.json (LLM-Adapters "
                   "layout), packaged:math-split (the clean split's test halves), packaged:llm-adapters, or hub "
                   "(the Hugging Face hub) (default: the packaged LLM-Adapters sets)")
    p.add_argument("--output", help="run folder (none: ADAPTER/eval-<decoding>, or eval/<model>-<decoding>)")
    p.add_argument("--label", help="name of this run in tables (none: the adapter or model folder name)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call; outputs do not depend on it")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget (none: 256 arithmetic, 32 commonsense)")
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy; the reference protocol uses 4")
    p.add_argument("--prompt-style", default="alpaca", choices=["alpaca", "llm-adapters", "chat"],
                   help="prompt template; llm-adapters is the reference's string, byte for byte; chat is the "
                   "tokenizer's chat template (for adapters trained with prompt_style chat)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each dataset (none: all)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--member", type=int, default=None,
                       help="evaluate ensemble member i alone (0 = shallowest, k-1 = final; -1 = final; "
                       "none: the model as loaded)")
    group.add_argument("--members", default=None,
                       help="'all' (every member and the ensemble) or a list like 0,2,ensemble (none: the model "
                       "as loaded)")
    p.add_argument("--no-stop-at-answer", dest="stop_at_answer", action="store_false",
                   help="generate to EOS/max-new-tokens (default: stop once the answer is settled; the score is the "
                   "same except for the numeric rule's rare cases, see docs/evaluation.md)")
    p.add_argument("--no-cut-at-next-response", dest="cut_at_next_response", action="store_false",
                   help="score the whole generated text (default: like LLM-Adapters, only the text before the next "
                   "'### Response:' the model writes)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: a progress bar with items/s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results in an output folder that holds another run (default: refuse; a run "
                   "with the same settings resumes)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> None:
    from ..eval.runner import run_eval

    summary = run_eval(model=args.model, adapter=args.adapter, datasets=args.datasets, output=args.output,
                       data_dir=args.data_dir, member=args.member, members=args.members, label=args.label,
                       dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, prompt_style=args.prompt_style,
                       limit=args.limit, stop_at_answer=args.stop_at_answer, progress=args.progress,
                       cut_at_next_response=args.cut_at_next_response,
                       trust_remote_code=args.trust_remote_code, ignore_base_mismatch=args.ignore_base_mismatch,
                       overwrite=args.overwrite)
    print(summary["markdown"])
    print(f"\nResults in {summary['run_dir']}")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="accuracy table of one or more eval runs, side by side (markdown + JSON)",
                       formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by 'modetune eval'")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json (a path without extension; none: print only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown (default: markdown)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> None:
    from ..eval.results import report, write_accuracy_report

    table = report(args.runs)
    if args.output:
        write_accuracy_report(table, args.output)
    print(json.dumps({k: v for k, v in table.items() if k != "markdown"}, indent=2) if args.json else table["markdown"])


def _add_solved(sub) -> None:
    p = sub.add_parser("solved", help="items solved by each run and their intersections (+ Venn diagram)",
                       formatter_class=HelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULT",
                   help="results files (<dataset>[.member<i>].jsonl) or eval run folders (with --dataset)")
    p.add_argument("--dataset", help="dataset to compare when RESULT are run folders")
    p.add_argument("--variant", default=None, help="with run folders: 'ensemble' or member<i> (none: ensemble)")
    p.add_argument("--labels", help="comma-separated names of the runs, in order (none: from the paths)")
    p.add_argument("--output", default=".", help="folder for solved-<dataset>.png/.md/.json")
    p.set_defaults(func=_run_solved)


def _run_solved(args) -> None:
    from ..eval.results import solved

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    result = solved(args.results, labels=labels, dataset=args.dataset, variant=args.variant, output_dir=args.output)
    print(result["markdown"])
    print("\nWrote " + ", ".join(result["files"].values()))


def _add_lm_eval(sub) -> None:
    p = sub.add_parser("lm-eval", help="evaluate through EleutherAI lm-evaluation-harness",
                       formatter_class=HelpFormatter,
                       description="Tasks: modetune_<dataset>_gen (generation, our protocol), modetune_<dataset>_mc "
                       "(log-likelihood over the answer keywords), or any lm-eval task name.")
    _add_model_flags(p)
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--data-dir", help="test sets of modetune_* tasks: a folder, packaged:math-split, "
                   "packaged:llm-adapters or hub (default: the packaged LLM-Adapters sets)")
    p.add_argument("--include-path", help="folder of extra lm-eval task YAML files")
    p.add_argument("--batch-size", type=int, default=8, help="requests per model call")
    p.add_argument("--limit", type=float, default=None, help="items per task (a fraction if < 1; none: all)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (none: the task's default)")
    p.add_argument("--member", type=int, default=None, help="evaluate ensemble member i alone (none: as loaded)")
    p.add_argument("--prompt-style", default="alpaca", choices=["alpaca", "llm-adapters"], help="prompt template")
    p.add_argument("--max-gen-toks", type=int, default=None, help="for modetune_*_gen tasks (none: per dataset)")
    p.add_argument("--output", help="write the results as JSON to this file (none: print only)")
    p.set_defaults(func=_run_lm_eval)


def _run_lm_eval(args) -> None:
    from ..eval.lm_eval import run_lm_eval_cli

    summary = run_lm_eval_cli(model=args.model, adapter=args.adapter, tasks=args.tasks, data_dir=args.data_dir,
                              batch_size=args.batch_size, limit=args.limit, num_fewshot=args.num_fewshot,
                              include_path=args.include_path, member=args.member, prompt_style=args.prompt_style,
                              max_gen_toks=args.max_gen_toks, output=args.output, dtype=args.dtype, device=args.device,
                              trust_remote_code=args.trust_remote_code,
                              ignore_base_mismatch=args.ignore_base_mismatch)
    print(summary["table"])


# ---------------------------------------------------------------- data
def _add_data(sub) -> None:
    p = sub.add_parser("data", help="the packaged datasets: list them, rebuild the clean arithmetic split",
                       formatter_class=HelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the packaged data files with their record counts",
                                 formatter_class=HelpFormatter)
    listing.set_defaults(func=_run_data_list)
    split = actions.add_parser("split-arithmetic", formatter_class=HelpFormatter,
                               help="rebuild the clean arithmetic split from LLM-Adapters' files",
                               description="Write OUTPUT/train.json and OUTPUT/<Name>/test.json for the seven "
                               "arithmetic sets by the rule of modetune.data.split; from LLM-Adapters' own "
                               "files this reproduces the packaged math-split byte for byte.")
    split.add_argument("--source", required=True, help="LLM-Adapters' dataset folder: math_data.json and "
                       "<Name>/test.json")
    split.add_argument("--output", required=True, help="folder to write the split into")
    split.set_defaults(func=_run_data_split)


def _run_data_list(args) -> None:
    from ..data.packaged import format_listing

    print(format_listing())


def _run_data_split(args) -> None:
    from ..data.split import format_counts, split_arithmetic_source

    print(format_counts(split_arithmetic_source(args.source, args.output), args.output))


def _add_probe(sub) -> None:
    from ..eval.probe import ProbeConfig

    p = sub.add_parser("probe", help="a late-layer ensemble's headroom on labelled tokens (oracles, fitted router)",
                       formatter_class=HelpFormatter,
                       description="Teacher-forced cross-entropy of each member, the model's own ensemble, the "
                       "per-token oracles (upper bounds), the best global mix and a router fitted on half of the "
                       "records; writes probe.json, probe.md and probe.png.")
    p.add_argument("--config", help="YAML file of probe fields (flags override it)")
    add_config_flags(p, ProbeConfig)
    p.set_defaults(func=_run_probe)


def _run_probe(args) -> None:
    from ..eval.probe import ProbeConfig, probe_markdown, run_probe

    result = run_probe(config_from_args(args, ProbeConfig))
    print(probe_markdown(result))
    print(f"\nWrote probe.json, probe.md and probe.png to {result['config']['output']} in {result['seconds']:.0f} s")


# ---------------------------------------------------------------- experiments
def _add_experiment(sub) -> None:
    from ..studies.plan import STUDIES, ExperimentConfig

    p = sub.add_parser("experiment", help="run one of the paper's studies end to end (resumable) and write report.md",
                       formatter_class=HelpFormatter,
                       description="Studies: " + ", ".join(STUDIES) + ". Every run trains, validates and "
                       "evaluates; finished parts are skipped on a rerun.")
    p.add_argument("study", choices=STUDIES, help="the study to run")
    p.add_argument("--config", help="YAML file of experiment fields (flags override it)")
    p.add_argument("--smoke", action="store_true", help="a tiny budget that runs end to end in minutes (default: off)")
    add_config_flags(p, ExperimentConfig)
    p.set_defaults(func=_run_experiment)


def _run_experiment(args) -> None:
    from ..studies.plan import ExperimentConfig
    from ..studies.run import run_study

    run_study(args.study, config_from_args(args, ExperimentConfig), smoke=args.smoke)


# ---------------------------------------------------------------- using an adapter (generate, chat, export)
def _add_generate(sub) -> None:
    from ..generate import DecodeConfig

    p = sub.add_parser("generate", help="print completions of prompts by a trained adapter",
                       formatter_class=HelpFormatter,
                       description="Prompts come from the arguments, else --prompts-file (one per line), else stdin.")
    _add_model_flags(p)
    p.add_argument("prompts", nargs="*", help="prompts (none: read them from --prompts-file or stdin)")
    p.add_argument("--prompts-file", help="a file with one prompt per line ('-': stdin)")
    p.add_argument("--jsonl", action="store_true", help="print one JSON object per prompt (default: plain text)")
    add_config_flags(p, DecodeConfig)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> None:
    from ..generate import DecodeConfig, complete, load_for_generation, read_prompts, resolve_style

    config = config_from_args(args, DecodeConfig)
    prompts = read_prompts(args.prompts, args.prompts_file)
    model, tokenizer, _ = load_for_generation(args.model, args.adapter, args.dtype, args.device)
    style = resolve_style(config.prompt_style, tokenizer, args.adapter)
    for prompt, completion in zip(prompts, complete(model, tokenizer, prompts, config, style)):
        print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) if args.jsonl
              else completion + ("\n" if len(prompts) > 1 else ""))


def _add_chat(sub) -> None:
    from ..generate import DecodeConfig

    p = sub.add_parser("chat", help="talk to a trained adapter (streams tokens; /reset, /exit)",
                       formatter_class=HelpFormatter,
                       description="One user turn per line of input; the conversation is kept in the chat template.")
    _add_model_flags(p)
    add_config_flags(p, DecodeConfig)
    p.set_defaults(func=_run_chat)


def _run_chat(args) -> None:
    from ..generate import DecodeConfig, chat_loop, load_for_generation

    config = config_from_args(args, DecodeConfig)
    model, tokenizer, _ = load_for_generation(args.model, args.adapter, args.dtype, args.device)
    chat_loop(model, tokenizer, config, interactive=sys.stdin.isatty())


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a Hugging Face model folder (LoRA merged, MoD beside it) that "
                       "AutoModelForCausalLM loads with trust_remote_code", formatter_class=HelpFormatter)
    p.add_argument("--adapter", required=True, help="MoD adapter folder (mod_config.json)")
    p.add_argument("--output", required=True, help="new folder to write")
    p.add_argument("--model", default=None, help="base model (none: the one the adapter was trained on)")
    p.add_argument("--no-merge", dest="merge", action="store_false",
                   help="keep LoRA separate in OUTPUT/lora (default: merged into the base weights)")
    p.add_argument("--dtype", default="float32", help="weights dtype (a torch dtype name)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> None:
    from ..export import run_export

    print(f"Exported to {run_export(args.adapter, args.output, model=args.model, merge=args.merge, dtype=args.dtype)}")


# ---------------------------------------------------------------- entry point
COMMANDS = [_add_train, _add_fit_router, _add_params, _add_experiment, _add_eval, _add_probe, _add_report,
            _add_solved, _add_lm_eval, _add_generate, _add_chat, _add_export, _add_data]


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = argparse.ArgumentParser(prog="modetune", description="Mixture-of-Depths Ensemble tuning for causal LMs.")
    parser.add_argument("--version", action="version", version=f"modetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    import yaml

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from dependencies
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (*BAD_INPUT, yaml.YAMLError) as error:
        if os.environ.get("MODETUNE_DEBUG"):
            raise
        print(f"modetune {args.command}: error: {first_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"modetune {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
