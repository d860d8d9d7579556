"""The Alpaca prompt (modetune.utils.prompts)."""

from __future__ import annotations

import pytest

from modetune.utils.errors import ConfigError
from modetune.utils.prompts import RESPONSE_MARKER, format_prompt


def test_alpaca_prompt_with_and_without_input():
    plain = format_prompt("Add 2 and 3.")
    assert plain.startswith("Below is an instruction that describes a task. Write")
    assert plain.endswith(f"### Instruction:\nAdd 2 and 3.\n\n{RESPONSE_MARKER}\n")
    with_input = format_prompt("Add.", "2 and 3")
    assert "paired with an input" in with_input and "### Input:\n2 and 3\n\n" in with_input


def test_llm_adapters_prompt_keeps_their_quirks():
    prompt = format_prompt("Add.", style="llm-adapters")
    assert "  # noqa: E501\n\n" in prompt and prompt.endswith(" " * 16 + RESPONSE_MARKER + "\n" + " " * 16)


def test_unknown_style_is_a_config_error():
    with pytest.raises(ConfigError, match="Unknown prompt style"):
        format_prompt("x", style="chatml")
