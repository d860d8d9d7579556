"""Every numeric option of every command is checked by its config field's declared range, one
mechanism for all (``modetune.utils.config``): ``--help`` shows the range, and a value just
outside it is refused in one line naming the field, before anything is read or written. The
commands come from the CLI's own table."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

import pytest

from modetune.cli.main import COMMANDS, build_parser, main
from modetune.utils.config import Config, check_ranges, range_text, setting

POSITIONAL = {"report": ["runs_dir"], "solved": ["a.jsonl"], "experiment": ["variants"], "generate": []}
REQUIRED = {"lm-eval": ["--tasks", "gsm8k"], "export": ["--output", "out"]}
SUBCOMMAND = {"data": ["split-arithmetic", "--source", "src", "--output", "out"], "config": None}


def _ranged_flags(name: str) -> list[tuple[str, str, bool]]:
    """``(flag, range text, is_int)`` of each flag of command ``name`` whose help shows a range."""
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    if name == "data":
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices["split-arithmetic"]
    found = []
    for action in sub._actions:
        match = re.search(r"range: ([^)]*)\)", action.help or "")
        if match and action.option_strings and re.match(r"(>=|>|<=|<) ", match.group(1)):  # not a range_note
            found.append((action.option_strings[0], match.group(1), "INT" in str(action.metavar)))
    return found


def _outside(text: str, is_int: bool) -> str:
    """A value just outside the range ``text`` (``>= 1``, ``> 0 and <= 1``, ...)."""
    op, bound = re.match(r"(>=|>|<=|<) (\S+)", text).groups()
    low = float(bound)
    value = {">=": low - 1 if is_int else low - 0.5, ">": low, "<=": low + 1, "<": low}[op]
    return str(int(value)) if is_int else repr(value)


def test_every_numeric_option_declares_a_range():
    """No int/float field of a config a command reads lacks a range (the mechanism covers all)."""
    missing = []
    for name in COMMANDS:
        parser = build_parser(name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        for action in sub._actions:
            if not action.option_strings or action.metavar is None:
                continue
            numeric = str(action.metavar).split("|")[0] in ("INT", "FLOAT", "INT,...", "FLOAT,...")
            if numeric and "range:" not in (action.help or ""):
                missing.append(f"{name} {action.option_strings[0]}")
    assert missing == []


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "config"])
def test_out_of_range_values_are_refused_in_one_line_and_nothing_is_written(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = _ranged_flags(name)
    if name not in ("data", "report", "solved", "export"):  # (these take no number)
        assert flags, f"{name} has no ranged option"
    for flag, text, is_int in flags:
        value = _outside(text, is_int)
        head = [name, *(SUBCOMMAND.get(name) or [])]
        argv = [*head, *POSITIONAL.get(name, []), *REQUIRED.get(name, []), flag, value]
        capsys.readouterr()
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        field = flag[2:].replace("-", "_")
        assert len(err.splitlines()) == 1 and field in err and "must be" in err, (argv, err)
        assert os.listdir(tmp_path) == [], (argv, os.listdir(tmp_path))


def test_ranges_show_in_help_and_apply_to_lists_and_the_python_api():
    @dataclasses.dataclass
    class Toy(Config):
        steps: int = setting(3, "steps", min=1)
        rate: float = setting(0.5, "a rate", gt=0, max=1)
        seeds: list[int] = setting(help="seeds", factory=lambda: [1], min=0)

    assert range_text(dataclasses.fields(Toy)[1].metadata) == "> 0 and <= 1"
    for bad, message in [({"steps": 0}, "steps must be >= 1, got 0"), ({"rate": 0}, "rate must be > 0 and <= 1"),
                         ({"rate": 1.5}, "got 1.5"), ({"seeds": [3, -1]}, "seeds must be >= 0, got -1")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            Toy(**bad)
    toy = Toy()
    toy.steps = -5
    with pytest.raises(ValueError, match="steps"):
        check_ranges(toy)
    help_text = [a.help for a in next(a for a in build_parser("generate")._actions
                                      if isinstance(a, argparse._SubParsersAction)).choices["generate"]._actions
                 if a.option_strings == ["--seed"]][0]
    assert "range: >= 0 and <= 4294967295" in help_text
