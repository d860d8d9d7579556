"""The `modetune` command line: the subcommands and their arguments; every command calls the library.

Errors a user can cause (:class:`~modetune.utils.errors.UserError`: bad fields, bad values, bad data; a
missing or unreadable file; malformed JSON or YAML) print one line and exit 1; set
``MODETUNE_DEBUG=1`` for the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..utils.errors import UserError, first_line
from .flags import HelpFormatter, add_config_flags, config_from_args

BAD_INPUT = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
             json.JSONDecodeError, UnicodeDecodeError)


# ---------------------------------------------------------------- training commands
def _add_train(sub) -> None:
    from ..train.config import TrainConfig

    p = sub.add_parser("train", help="train a MoD / LoRA variant (the main job)", formatter_class=HelpFormatter,
                       description="Train a variant. Defaults: the shipped config `default` "
                       "(`modetune config show default`); every field is a flag.")
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
    from ..train.params import ParamsCommand

    p = sub.add_parser("params", help="count total and trainable parameters of a variant (no weights needed)",
                       formatter_class=HelpFormatter)
    add_config_flags(p, ParamsCommand, yaml=False)
    p.set_defaults(func=_run_params)


def _run_params(args) -> None:
    from ..train.params import ParamsCommand, count_parameters, format_parameter_table

    command = config_from_args(args, ParamsCommand)
    result = count_parameters(command.model, command.preset, k=command.k, lora_r=command.lora_r,
                              lora_targets=command.lora_targets, trust_remote_code=command.trust_remote_code)
    print(json.dumps(result, indent=2) if command.json else format_parameter_table(result))


def _add_fit_router(sub) -> None:
    from ..train.fit_router import FitRouterConfig

    p = sub.add_parser("fit-router", help="fit only the router and member norms on frozen members (a MoD adapter)",
                       formatter_class=HelpFormatter,
                       description="Fit a MoD router and member norms for a base model or an existing adapter, "
                       "every other weight frozen; writes a MoD adapter and fit_router.json.")
    add_config_flags(p, FitRouterConfig)
    p.set_defaults(func=_run_fit_router)


def _run_fit_router(args) -> None:
    from ..train.fit_router import FitRouterConfig, fit_router, format_fit

    _, result = fit_router(config_from_args(args, FitRouterConfig))
    print(format_fit(result))


# ---------------------------------------------------------------- evaluation commands
# (eval, report, solved, lm-eval are registered here)
def _add_eval(sub) -> None:
    from ..eval.runner import EvalCommand

    p = sub.add_parser("eval", help="evaluate on the paper's reasoning datasets (LLM-Adapters protocol)",
                       formatter_class=HelpFormatter,
                       description="Generate answers for LLM-Adapters test sets and score them with the reference "
                       "protocol (see modetune.eval.protocol). Writes <dataset>[.member<i>].jsonl, run.json, "
                       "summary.md/json into the output folder; an interrupted run resumes there.")
    add_config_flags(p, EvalCommand, yaml=False)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> None:
    from ..eval.runner import EvalCommand, run_eval

    summary = run_eval(config_from_args(args, EvalCommand))
    print(summary["markdown"])
    print(f"\nResults in {summary['run_dir']}")


def _add_report(sub) -> None:
    from ..eval.results import ReportCommand

    p = sub.add_parser("report", help="accuracy table of one or more eval runs, side by side (markdown + JSON)",
                       formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by 'modetune eval'")
    add_config_flags(p, ReportCommand, yaml=False)
    p.set_defaults(func=_run_report)


def _run_report(args) -> None:
    from ..eval.results import ReportCommand, report, write_accuracy_report

    command = config_from_args(args, ReportCommand)
    table = report(args.runs)
    if command.output:
        write_accuracy_report(table, command.output, inputs=args.runs, overwrite=command.overwrite)
    print(json.dumps({k: v for k, v in table.items() if k != "markdown"}, indent=2) if command.json
          else table["markdown"])


def _add_solved(sub) -> None:
    from ..eval.results import SolvedCommand

    p = sub.add_parser("solved", help="items solved by each run and their intersections (+ Venn diagram)",
                       formatter_class=HelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULT",
                   help="results files (<dataset>[.member<i>].jsonl) or eval run folders (with --dataset)")
    add_config_flags(p, SolvedCommand, yaml=False)
    p.set_defaults(func=_run_solved)


def _run_solved(args) -> None:
    from ..eval.results import SolvedCommand, solved

    command = config_from_args(args, SolvedCommand)
    result = solved(args.results, labels=command.labels, dataset=command.dataset, variant=command.variant,
                    output_dir=command.output, overwrite=command.overwrite)
    print(result["markdown"])
    print("\nWrote " + ", ".join(result["files"].values()))


def _add_lm_eval(sub) -> None:
    from ..eval.lm_eval import LmEvalCommand

    p = sub.add_parser("lm-eval", help="evaluate through EleutherAI lm-evaluation-harness",
                       formatter_class=HelpFormatter,
                       description="Tasks: modetune_<dataset>_gen (generation, our protocol), modetune_<dataset>_mc "
                       "(log-likelihood over the answer keywords), or any lm-eval task name.")
    add_config_flags(p, LmEvalCommand, yaml=False)
    p.set_defaults(func=_run_lm_eval)


def _run_lm_eval(args) -> None:
    from ..eval.lm_eval import LmEvalCommand, run_lm_eval_cli

    print(run_lm_eval_cli(config_from_args(args, LmEvalCommand))["table"])


# ---------------------------------------------------------------- data
def _add_data(sub) -> None:
    from ..data.split import SplitCommand

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
    add_config_flags(split, SplitCommand, yaml=False)
    split.set_defaults(func=_run_data_split)


def _run_data_list(args) -> None:
    from ..data.packaged import format_listing

    print(format_listing())


def _run_data_split(args) -> None:
    from ..data.split import SplitCommand, format_counts, split_arithmetic_source

    command = config_from_args(args, SplitCommand)
    print(format_counts(split_arithmetic_source(command.source, command.output, command.overwrite), command.output))


def _add_probe(sub) -> None:
    from ..eval.probe import ProbeConfig

    p = sub.add_parser("probe", help="a late-layer ensemble's headroom on labelled tokens (oracles, fitted router)",
                       formatter_class=HelpFormatter,
                       description="Teacher-forced cross-entropy of each member, the model's own ensemble, the "
                       "per-token oracles (upper bounds), the best global mix and a router fitted on half of the "
                       "records; writes probe.json, probe.md and probe.png.")
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
    p.add_argument("--smoke", action="store_true", help="a tiny budget that runs end to end in minutes (default: off)")
    add_config_flags(p, ExperimentConfig)
    p.set_defaults(func=_run_experiment)


def _run_experiment(args) -> None:
    from ..studies.plan import ExperimentConfig
    from ..studies.run import run_study

    run_study(args.study, config_from_args(args, ExperimentConfig), smoke=args.smoke)


# ---------------------------------------------------------------- using an adapter (generate, chat, export)
def _add_generate(sub) -> None:
    from ..eval.generate import GenerateCommand

    p = sub.add_parser("generate", help="print completions of prompts by a trained adapter",
                       formatter_class=HelpFormatter,
                       description="Prompts come from the arguments, else --prompts-file (one per line), else stdin.")
    p.add_argument("prompts", nargs="*", help="prompts (none: read them from --prompts-file or stdin)")
    add_config_flags(p, GenerateCommand, yaml=False)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> None:
    from ..eval.generate import GenerateCommand, complete, load_for_generation, read_prompts, resolve_style

    command = config_from_args(args, GenerateCommand)
    source, config = command.source, command.decode
    prompts = read_prompts(args.prompts, command.prompts_file)
    model, tokenizer, _ = load_for_generation(source)
    style = resolve_style(config.prompt_style, tokenizer, source.adapter)
    for prompt, completion in zip(prompts, complete(model, tokenizer, prompts, config, style)):
        print(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) if command.jsonl
              else completion + ("\n" if len(prompts) > 1 else ""))


def _add_chat(sub) -> None:
    from ..eval.generate import ChatCommand

    p = sub.add_parser("chat", help="talk to a trained adapter (streams tokens; /reset, /exit)",
                       formatter_class=HelpFormatter,
                       description="One user turn per line of input; the conversation is kept in the chat template.")
    add_config_flags(p, ChatCommand, yaml=False)
    p.set_defaults(func=_run_chat)


def _run_chat(args) -> None:
    from ..eval.generate import ChatCommand, chat_loop, load_for_generation

    command = config_from_args(args, ChatCommand)
    model, tokenizer, _ = load_for_generation(command.source)
    chat_loop(model, tokenizer, command.decode, interactive=sys.stdin.isatty())


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="the configs installed with modetune: list them, print one",
                       formatter_class=HelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every shipped config: name, purpose, file").set_defaults(func=_run_config_list)
    show = actions.add_parser("show", help="print a shipped config (to copy and edit, or pass by name to --config)")
    show.add_argument("name", help="a name from `modetune config list`")
    show.set_defaults(func=_run_config_show)


def _run_config_list(args) -> None:
    from ..utils.shipped import describe, shipped_configs

    configs = shipped_configs()
    width = max(map(len, configs))
    for name, path in configs.items():
        print(f"{name:<{width}}  {describe(path)}  ({path})")


def _run_config_show(args) -> None:
    from ..utils.shipped import config_file

    print(config_file(args.name).read_text(encoding="utf-8"), end="")


def _add_export(sub) -> None:
    from ..export import ExportCommand

    p = sub.add_parser("export", help="write a Hugging Face model folder (LoRA merged, MoD beside it) that "
                       "AutoModelForCausalLM loads with trust_remote_code", formatter_class=HelpFormatter)
    add_config_flags(p, ExportCommand, yaml=False)
    p.set_defaults(func=_run_export)


def _run_export(args) -> None:
    from ..export import ExportCommand, run_export

    print(f"Exported to {run_export(config_from_args(args, ExportCommand))}")


# ---------------------------------------------------------------- entry point
COMMANDS = [_add_train, _add_fit_router, _add_params, _add_experiment, _add_eval, _add_probe, _add_report,
            _add_solved, _add_lm_eval, _add_generate, _add_chat, _add_export, _add_data,
            _add_config]


def build_parser() -> argparse.ArgumentParser:
    from ..utils.version import __version__

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
