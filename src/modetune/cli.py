"""The `modetune` command line: argument parsing only; every command calls the library.

Errors a user can cause (bad files, bad fields, bad values) print one line and exit 1;
set ``MODETUNE_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError

USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


# ---------------------------------------------------------------- training commands
def _add_train(sub) -> None:
    from .training import TrainConfig, add_config_flags

    p = sub.add_parser("train", help="train a MoD / LoRA variant (the main job)",
                       description="Train a variant. Defaults: configs/default.yaml values; every field is a flag.")
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=_run_train)


def _run_train(args) -> None:
    from .training import config_from_args, train

    train(config_from_args(args), resume=args.resume)


def _add_params(sub) -> None:
    p = sub.add_parser("params", help="count total and trainable parameters of a variant (no weights needed)")
    p.add_argument("--model", default="default", help="model name, folder, or folder holding only config.json")
    p.add_argument("--preset", default="lora_notk_mod", help="variant preset")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--lora-targets", default=None, help="comma-separated module names (default: per architecture)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_run_params)


def _run_params(args) -> None:
    from .training import count_parameters, format_parameter_table

    targets = args.lora_targets.split(",") if args.lora_targets else None
    result = count_parameters(args.model, args.preset, k=args.k, lora_r=args.lora_r, lora_targets=targets)
    if args.json:
        import json

        print(json.dumps(result, indent=2))
    else:
        print(format_parameter_table(result))


# ---------------------------------------------------------------- evaluation commands
# (eval, report, solved, lm-eval are registered here)


# ---------------------------------------------------------------- entry point
COMMANDS = [_add_train, _add_params]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modetune", description="Mixture-of-Depths Ensemble tuning for causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from dependencies
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as error:
        if os.environ.get("MODETUNE_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"modetune {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"modetune {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
