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

BAD_INPUT = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
             json.JSONDecodeError)


# ---------------------------------------------------------------- training commands
def _add_train(sub) -> None:
    from ..train.config import TrainConfig

    p = sub.add_parser("train", help="train a MoD / LoRA variant (the main job)", formatter_class=HelpFormatter,
                       description="Train a variant. Defaults: configs/default.yaml values; every field is a flag.")
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in output_dir (default: start afresh)")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=_run_train)


def _run_train(args) -> None:
    from ..train.config import TrainConfig
    from ..train.trainer import train

    train(config_from_args(args, TrainConfig), resume=args.resume)


def _add_params(sub) -> None:
    p = sub.add_parser("params", help="count total and trainable parameters of a variant (no weights needed)",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", default="default", help="model name, folder, or folder holding only config.json")
    p.add_argument("--preset", default="lora_notk_mod", help="variant preset")
    p.add_argument("--k", type=int, default=3, help="members of the MoD ensemble")
    p.add_argument("--lora-r", type=int, default=32, help="LoRA rank")
    p.add_argument("--lora-targets", default=None, help="comma-separated module names (none: per architecture)")
    p.add_argument("--json", action="store_true", help="print a JSON object (default: a table)")
    p.set_defaults(func=_run_params)


def _run_params(args) -> None:
    from ..train.params import count_parameters, format_parameter_table

    targets = args.lora_targets.split(",") if args.lora_targets else None
    result = count_parameters(args.model, args.preset, k=args.k, lora_r=args.lora_r, lora_targets=targets)
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
    p.add_argument("--model", default="default", help="base model: 'default' (embedded SmolLM2-135M-Instruct), "
                   "a local folder or a hub name")
    p.add_argument("--adapter", help="MoD folder (mod_config.json) or LoRA-only folder (adapter_config.json); "
                   "none: the base model alone")
    p.add_argument("--dtype", default="float32", help="weights dtype (a torch dtype name: float32, bfloat16, float16)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (none: where the model loads)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate on the paper's reasoning datasets (LLM-Adapters protocol)",
                       formatter_class=HelpFormatter,
                       description="Generate answers for LLM-Adapters test sets and score them with the reference "
                       "protocol (see modetune.eval.protocol). Writes <dataset>[.member<i>].jsonl, run.json, "
                       "summary.md/json into the output folder; an interrupted run resumes there.")
    _add_model_flags(p)
    p.add_argument("--datasets", default="all", help="comma-separated names (gsm8k,SVAMP,boolq,...), 'all', "
                   "'arithmetic', 'commonsense', or name=path/to/test.json")
    p.add_argument("--data-dir", help="folder holding <Name>/test.json (LLM-Adapters layout); "
                   "without it, datasets load from the Hugging Face hub")
    p.add_argument("--output", help="run folder (none: ADAPTER/eval-<decoding>, or eval/<model>-<decoding>)")
    p.add_argument("--label", help="name of this run in tables (none: the adapter or model folder name)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call; outputs do not depend on it")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget (none: 256 arithmetic, 32 commonsense)")
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy; the reference protocol uses 4")
    p.add_argument("--prompt-style", default="alpaca", choices=["alpaca", "llm-adapters"],
                   help="prompt template; llm-adapters is the reference's string, byte for byte")
    p.add_argument("--limit", type=int, default=None, help="first N items of each dataset (none: all)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--member", type=int, default=None,
                       help="evaluate ensemble member i alone (0 = shallowest, k-1 = final; -1 = final; "
                       "none: the model as loaded)")
    group.add_argument("--members", default=None,
                       help="'all' (every member and the ensemble) or a list like 0,2,ensemble (none: the model "
                       "as loaded)")
    p.add_argument("--no-stop-at-answer", dest="stop_at_answer", action="store_false",
                   help="generate to EOS/max-new-tokens like the reference (default: stop once the answer is settled)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: a progress bar with items/s)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> None:
    from ..eval.runner import run_eval

    summary = run_eval(model=args.model, adapter=args.adapter, datasets=args.datasets, output=args.output,
                       data_dir=args.data_dir, member=args.member, members=args.members, label=args.label,
                       dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, prompt_style=args.prompt_style,
                       limit=args.limit, stop_at_answer=args.stop_at_answer, progress=args.progress)
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
    p.add_argument("--data-dir", help="LLM-Adapters data folder for modetune_* tasks (none: the hub)")
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
                              max_gen_toks=args.max_gen_toks, output=args.output, dtype=args.dtype, device=args.device)
    print(summary["table"])


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


# ---------------------------------------------------------------- entry point
COMMANDS = [_add_train, _add_fit_router, _add_params, _add_experiment, _add_eval, _add_probe, _add_report,
            _add_solved, _add_lm_eval]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modetune", description="Mixture-of-Depths Ensemble tuning for causal LMs.")
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
