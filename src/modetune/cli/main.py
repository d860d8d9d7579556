"""The `modetune` command line: the subcommands and their arguments; every command calls the library.

Errors a user can cause (:class:`~modetune.utils.errors.UserError`: bad fields, bad values, bad data; a
missing or unreadable file; malformed JSON or YAML) print one line and exit 1; set
``MODETUNE_DEBUG=1`` for the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from ..utils.errors import UserError, first_line

BAD_INPUT = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
             json.JSONDecodeError, UnicodeDecodeError)


# The commands: name -> (module of cli/ with add(sub, name, help) and its run functions, one-line help).
# Adding a command is one module and one line here; tests find the commands from this table.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a MoD / LoRA variant (the main job)"),
    "fit-router": ("fit_router", "fit only the router and member norms on frozen members (a MoD adapter)"),
    "params": ("params", "count total and trainable parameters of a variant (no weights needed)"),
    "experiment": ("experiment", "run one of the paper's studies end to end (resumable) and write report.md"),
    "eval": ("eval", "evaluate on the paper's reasoning datasets (LLM-Adapters protocol)"),
    "probe": ("probe", "a late-layer ensemble's headroom on labelled tokens (oracles, fitted router)"),
    "report": ("report", "accuracy table of one or more eval runs, side by side (markdown + JSON)"),
    "solved": ("solved", "items solved by each run and their intersections (+ Venn diagram)"),
    "lm-eval": ("lm_eval", "evaluate through EleutherAI lm-evaluation-harness"),
    "generate": ("generate", "print completions of prompts by a trained adapter"),
    "chat": ("chat", "talk to a trained adapter (streams tokens; /reset, /exit)"),
    "export": ("export", "write a Hugging Face model folder (LoRA merged, MoD beside it) that AutoModelForCausalLM "
                         "loads with trust_remote_code; --final-member: a standard folder for any engine"),
    "data": ("data", "the packaged datasets: list them, rebuild the clean arithmetic split"),
    "config": ("config", "the configs installed with modetune: list them, print one"),
}
ALL = "*"


def command_module(name: str):
    """The ``cli/`` module of command ``name`` (imported on demand: only the command that runs loads its code)."""
    return importlib.import_module(f"{__package__}.{COMMANDS[name][0]}")


def build_parser(only: str | None = ALL) -> argparse.ArgumentParser:
    """The parser; ``only``: build that command's flags alone (the others get a stub that lists them
    in ``--help``), ``None``: stubs only (``--version``, ``--help``), ``"*"``: every command."""
    from ..utils.version import __version__

    parser = argparse.ArgumentParser(prog="modetune", description="Mixture-of-Depths Ensemble tuning for causal LMs.")
    parser.add_argument("--version", action="version", version=f"modetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        if only == ALL or name == only:
            command_module(name).add(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    import yaml

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from dependencies
    argv = sys.argv[1:] if argv is None else list(argv)
    named = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(named if named in COMMANDS else None).parse_args(argv)
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
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Close the process group a distributed run (``torchrun``) opened: gloo's worker threads,
    left to the interpreter's shutdown, can abort the process (SIGABRT) after a run that succeeded."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
