"""Talking to a trained adapter: completions for prompts (``modetune generate``) and an interactive,
streaming chat loop that keeps the conversation in the tokenizer's chat template (``modetune chat``).

Decoding is the wrapped model's own ``generate`` (so the ensemble logits, the KV cache, sampling and
beam search all apply); ``member`` routes every token to one ensemble member
(:func:`modetune.eval.members.forced_member`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import ClassVar, TextIO

from ..loading import ModelSource
from ..utils.config import SEED_MAX, Config
from ..utils.errors import ConfigError
from ..utils.integrity import read_text

PROMPT_STYLES = ("auto", "chat", "alpaca", "llm-adapters", "raw")
EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"


@dataclass
class DecodeConfig(Config):
    """Decoding options of ``modetune generate`` and ``modetune chat`` (every field is a flag)."""

    what: ClassVar[str] = "decoding"

    max_new_tokens: int = field(default=256, metadata={"min": 1, "help": "new tokens per completion at most"})
    sample: bool = field(default=False, metadata={"help": "sample (with temperature and top_p) instead of greedy"})
    temperature: float = field(default=0.7, metadata={"gt": 0, "help": "sampling temperature (with --sample)"})
    top_p: float = field(default=0.9, metadata={
        "gt": 0, "max": 1, "help": "nucleus sampling: keep the smallest set of tokens with this "
                                                        "much probability (with --sample)"})
    num_beams: int = field(default=1, metadata={"min": 1, "help": "beam search with this many beams (1: none)"})
    seed: int = field(default=0, metadata={"min": 0, "max": SEED_MAX, "help": "random seed of sampling"})
    member: int | None = field(default=None, metadata={"range_note": "-k to k-1, the model\'s members",
        "help": "generate with ensemble member i alone (0 = shallowest, -1 = final; none: the ensemble)"})
    prompt_style: str = field(default="auto", metadata={
        "help": "how `generate` wraps a prompt: chat (the chat template), alpaca, llm-adapters, raw (as given), "
                "or auto (the adapter's training style, else chat when the tokenizer has a template)"})
    system: str | None = field(default=None, metadata={"help": "a system message opening the conversation (chat)"})

    def validate(self) -> None:
        if self.prompt_style not in PROMPT_STYLES:
            raise ConfigError(f"Unknown prompt style {self.prompt_style!r}; choose one of {', '.join(PROMPT_STYLES)}.")


def generation_config(model, tokenizer, config: DecodeConfig):
    """The ``GenerationConfig`` of the decoding options (:func:`modetune.eval.generation.generation_config`)."""
    from .generation import generation_config as build

    sampled = {"temperature": config.temperature, "top_p": config.top_p} if config.sample else {}
    return build(model, tokenizer, config.max_new_tokens, config.num_beams, **sampled)


def load_for_generation(source: ModelSource):
    """``(model, tokenizer, info)``: the base (``None``: the one the adapter records) with the adapter."""
    from ..loading import quiet_transformers

    quiet_transformers()
    return source.load()


def resolve_style(style: str, tokenizer, adapter: str | None) -> str:
    """``auto`` -> the adapter's training ``prompt_style`` (``train_config.json``), else ``chat`` when the
    tokenizer has a chat template, else ``alpaca``."""
    from ..utils.prompts import AUTO
    from ..utils.prompts import resolve_style as resolve

    if style != AUTO:  # generate's own styles include raw
        return style
    return resolve(style, adapter, fallback="chat" if getattr(tokenizer, "chat_template", None) else "alpaca")


def wrap_prompt(tokenizer, prompt: str, style: str) -> str:
    """A user prompt as the model sees it in ``style`` (``raw``: unchanged)."""
    from ..data.chat import render_prompt

    return prompt if style == "raw" else render_prompt(tokenizer, prompt, "", style)


def _generate(model, tokenizer, text: str, config: DecodeConfig, streamer=None) -> str:
    """One completion of ``text`` (special tokens already in the text are parsed, none added)."""
    import torch
    from transformers import set_seed

    from .members import forced_member

    encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(model.device)
    set_seed(config.seed)
    with torch.no_grad(), forced_member(model, config.member):
        output = model.generate(**encoded, generation_config=generation_config(model, tokenizer, config),
                                streamer=streamer if config.num_beams == 1 else None)
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def complete(model, tokenizer, prompts: list[str], config: DecodeConfig, style: str = "chat") -> list[str]:
    """The completion of every prompt, each wrapped in ``style`` (one at a time: outputs never
    depend on what else is in the batch)."""
    return [_generate(model, tokenizer, wrap_prompt(tokenizer, p, style), config) for p in prompts]


def read_prompts(prompts: list[str], prompts_file: str | None, stdin: TextIO = sys.stdin) -> list[str]:
    """Prompts from the command line, else one per non-empty line of ``prompts_file`` (``-``: stdin),
    else of stdin."""
    if prompts:
        return prompts
    text = stdin.read() if prompts_file in (None, "-") else read_text(prompts_file, "prompts file")
    found = [line for line in text.splitlines() if line.strip()]
    if not found:
        raise ConfigError("No prompt given: pass prompts as arguments, with --prompts-file, or on stdin.")
    return found


def _streamer(tokenizer, out: TextIO):
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def chat_loop(model, tokenizer, config: DecodeConfig, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
              interactive: bool = False) -> list[dict]:
    """Read user turns line by line, stream each reply, keep the conversation (chat template).

    ``/reset`` starts a new conversation, ``/exit`` (or end of input) ends; returns the messages.
    """
    from ..data.chat import render

    opening = [{"role": "system", "content": config.system}] if config.system else []
    messages = list(opening)
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line or line.strip() in EXIT_COMMANDS:
            return messages
        if not line.strip():
            continue
        if line.strip() == RESET_COMMAND:
            messages = list(opening)
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        streamer = _streamer(tokenizer, out) if config.num_beams == 1 else None
        reply = _generate(model, tokenizer, render(tokenizer, messages, add_generation_prompt=True), config, streamer)
        if streamer is None:
            out.write(reply + "\n")
        messages.append({"role": "assistant", "content": reply})
