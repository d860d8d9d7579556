"""The Alpaca prompt used by LLM-Adapters (and so by the paper) for training and evaluation.

``style="alpaca"`` (default) is the clean Alpaca template. ``style="llm-adapters"``
reproduces LLM-Adapters' ``finetune.py``/``evaluate.py`` string byte for byte, including
its 16-space indentation and the literal ``"  # noqa: E501"`` that their source leaves
inside the prompt, for exact comparability with checkpoints trained by their code.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, DataError
from .integrity import read_json, read_text

HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
HEADER_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
RESPONSE_MARKER = "### Response:"
STYLES = ("alpaca", "llm-adapters", "chat")  # chat: the tokenizer's chat template (modetune.data.chat)
AUTO = "auto"  # the adapter's own training style (its train_config.json), else a command's fallback


PROMPT_FILE = "prompt.json"  # in an adapter: the style its training text was rendered in


def trained_style(adapter: str | Path | None) -> str | None:
    """The style an adapter's training text was rendered in: its ``prompt.json`` (``chat`` when it
    trained on conversations), else its ``train_config.json``'s ``prompt_style``; ``None`` if unknown."""
    for name in (PROMPT_FILE, "train_config.json"):
        style = _recorded(adapter, name, "prompt_style")
        if style is not None:
            return style if style in STYLES else None
    return None


def _recorded(adapter: str | Path | None, name: str, key: str):
    """``key`` of the JSON object in the adapter's file ``name`` (``None``: no adapter, file or key); a
    damaged file is one line naming it (the adapter's check, :mod:`modetune.loading.adapter`, says more)."""
    path = Path(adapter, name) if adapter else None
    if path is None or not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path} is damaged (expected a JSON object).")
    return data.get(key)


def read_chat_template(value: str | None) -> str | None:
    """A ``--chat-template`` value as template text: a file's contents (a ``.jinja`` file, or any
    text file), or the value itself when it is Jinja (holds ``{%`` or ``{{``); ``None`` stays ``None``."""
    if value is None:
        return None
    text = value
    if "{%" not in value and "{{" not in value:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"chat_template {value!r} is neither a file nor a Jinja template (no '{{%' or '{{{{').")
        text = read_text(path, "chat_template file")
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as error:
        raise ConfigError(f"chat_template does not parse as Jinja (line {error.lineno}: {error.message}).") from None
    return text


def trained_chat_template(adapter: str | Path | None) -> str | None:
    """The chat template an adapter was trained with when it overrode the tokenizer's (its
    ``prompt.json``'s ``chat_template``), else ``None``."""
    return _recorded(adapter, PROMPT_FILE, "chat_template")


def resolve_style(style: str, adapter: str | Path | None, fallback: str = "alpaca") -> str:
    """``auto`` -> the adapter's training style, else ``fallback``; any other style is checked and kept."""
    if style == AUTO:
        return trained_style(adapter) or fallback
    if style not in STYLES:
        raise ConfigError(f"Unknown prompt style {style!r}; choose one of {', '.join((AUTO, *STYLES))}.")
    return style


def format_prompt(instruction: str, input: str = "", style: str = "alpaca") -> str:
    """The prompt up to and including the response marker; the response follows it directly."""
    if style == "alpaca":
        if input:
            return f"{HEADER_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n{RESPONSE_MARKER}\n"
        return f"{HEADER_NO_INPUT}\n\n### Instruction:\n{instruction}\n\n{RESPONSE_MARKER}\n"
    if style == "llm-adapters":
        pad = " " * 16
        header = (HEADER_WITH_INPUT if input else HEADER_NO_INPUT) + "  # noqa: E501"
        body = f"{header}\n\n{pad}### Instruction:\n{pad}{instruction}\n{pad}\n"
        if input:
            body += f"{pad}### Input:\n{pad}{input}\n{pad}\n"
        return body + f"{pad}{RESPONSE_MARKER}\n{pad}"
    if style == "chat":
        raise ConfigError("prompt_style 'chat' renders with a tokenizer's chat template: use "
                          "modetune.data.chat.chat_prompt(tokenizer, instruction, input).")
    raise ConfigError(f"Unknown prompt style {style!r}; choose one of {', '.join(STYLES)}.")
