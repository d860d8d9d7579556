"""The `modetune` command line: flags (config dataclasses -> argparse/YAML) and main (the subcommands)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
