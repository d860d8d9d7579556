"""The Alpaca prompt used by LLM-Adapters (and so by the paper) for training and evaluation.

``style="alpaca"`` (default) is the clean Alpaca template. ``style="llm-adapters"``
reproduces LLM-Adapters' ``finetune.py``/``evaluate.py`` string byte for byte, including
its 16-space indentation and the literal ``"  # noqa: E501"`` that their source leaves
inside the prompt, for exact comparability with checkpoints trained by their code.
"""

from __future__ import annotations

from .errors import ConfigError

HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
HEADER_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
RESPONSE_MARKER = "### Response:"
STYLES = ("alpaca", "llm-adapters", "chat")  # chat: the tokenizer's chat template (modetune.data.chat)


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
