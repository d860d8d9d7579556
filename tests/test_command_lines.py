"""Every command line modetune shows a user parses with its own CLI parser: the README's code
blocks, the study plans' registered commands, the adapter's and the export's model cards, and
the ``--help`` epilogs. None can go stale without a test failing."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from modetune.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]


def command_lines(markdown: str) -> list[str]:
    """``modetune ...`` lines of the fenced code blocks (``\\`` continuations joined, comments and
    ``&&``/``|`` tails dropped)."""
    lines, inside = [], False
    for raw in re.sub(r"\\\n\s*", " ", markdown).splitlines():
        if raw.lstrip().startswith("```"):
            inside = not inside
            continue
        line = raw.strip()
        if inside and line.startswith("modetune "):
            line = re.split(r"\s+(?:#|&&|\|)\s", line + " ")[0]
            lines.append(line.strip())
    return lines


def parses(line: str) -> None:
    """``line`` parses with modetune's own parser (an AssertionError with argparse's message if not)."""
    words = shlex.split(line)[1:]
    if words in (["--version"], ["--help"]):
        return
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            build_parser().parse_args(words)
    except SystemExit:
        raise AssertionError(f"{line!r}: {errors.getvalue().strip()}") from None


def _epilogs() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [sub.epilog for sub in action.choices.values() if sub.epilog]


def _cards() -> list[str]:
    from modetune.export import model_card
    from modetune.train.card import adapter_card
    from modetune.train.config import TrainConfig

    cards = [adapter_card(TrainConfig(preset=p, model=m), 10, 1.0)
             for p in ("lora_notk", "lora_notk_mod") for m in ("default", "/a/local/folder")]
    return cards + [model_card(kind, 3, "HuggingFaceTB/SmolLM2-135M-Instruct") for kind in ("final", "lora", "merged")]


SOURCES = {"README.md": (ROOT / "README.md").read_text()}
IGNORED = ("adapter", ".staging")  # a run's own folders, never committed (.gitignore)
SOURCES.update({str(p.relative_to(ROOT)): p.read_text() for p in sorted(ROOT.glob("docs/**/*.md"))
                if not any(part in IGNORED or part.startswith("checkpoint-") for part in p.relative_to(ROOT).parts)})


def test_documented_command_lines_parse():
    """The README's and every document's (study plans included) code-block command lines."""
    lines = [(name, line) for name, text in SOURCES.items() for line in command_lines(text)]
    assert any(name.endswith("study-tuned/PLAN.md") for name, _ in lines)
    for name, line in lines:
        try:
            parses(line)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def test_the_readme_tour_and_the_cards_have_command_lines_that_parse():
    assert len(command_lines(SOURCES["README.md"])) >= 15  # the extraction finds the tour
    card_lines = [line for card in _cards() for line in command_lines(card)]
    assert any(line.startswith("modetune generate") for line in card_lines)
    for line in card_lines + [line for epilog in _epilogs() for line in re.findall(r"^\s*(modetune .+)$", epilog, re.M)]:
        parses(line)


def test_a_stale_command_line_is_caught():
    with pytest.raises(AssertionError, match="ambiguous|unrecognized|invalid"):
        parses('modetune generate --adapter A --prompt "What is 12 * 7?"')
