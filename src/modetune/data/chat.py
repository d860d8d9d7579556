"""Conversations: chat records, rendered with the tokenizer's own chat template, loss on assistant turns.

Two record shapes are accepted and normalised to OpenAI's ``[{"role", "content"}, ...]``:
- ``{"messages": [{"role": "system"|"user"|"assistant", "content": TEXT}, ...]}`` (OpenAI style);
- ``{"conversations": [{"from": "system"|"human"|"gpt", "value": TEXT}, ...]}`` (ShareGPT; ``user``
  and ``assistant`` are accepted as ``from`` too).

Alpaca records (``instruction``/``input``/``output``) become one user turn and one assistant turn
under ``prompt_style: chat`` (:func:`alpaca_messages`), in training and in evaluation alike.

Labels (:func:`tokenize_conversation`): the conversation is rendered once by
``tokenizer.apply_chat_template`` and tokenised with character offsets. Assistant turn ``i``
spans the characters from the end of ``render(messages[:i], add_generation_prompt=True)``
to the end of ``render(messages[:i+1])`` with trailing whitespace removed: its content and the
template's end-of-turn marker (``<|im_end|>`` for ChatML), which is what generation must learn
to emit to stop. A token carries a label iff it starts inside such a span.
"""

from __future__ import annotations

from ..utils.errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
CHAT_KEYS = ("messages", "conversations")


def is_conversation(record: dict) -> bool:
    """Whether a record is a conversation (``messages`` or ``conversations``) rather than an Alpaca record."""
    return any(key in record for key in CHAT_KEYS)


def normalise_conversation(record: dict, where: str) -> list[dict]:
    """The record's turns as ``[{"role", "content"}]``; ``DataError`` naming ``where`` (the record) for
    an unknown role, a non-text content, an empty conversation or one without an assistant turn."""
    sharegpt = "messages" not in record
    turns = record["conversations" if sharegpt else "messages"]
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: the conversation is empty.")
    messages = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: turn {number} is not an object.")
        role = turn.get(role_key)
        role = SHAREGPT_ROLES.get(role) if sharegpt else (role if role in ROLES else None)
        if role is None:
            known = ", ".join(SHAREGPT_ROLES if sharegpt else ROLES)
            raise DataError(f"{where}: turn {number} has an unknown role {turn.get(role_key)!r} (known: {known}).")
        if not isinstance(turn.get(text_key), str):
            raise DataError(f"{where}: turn {number} lacks a text {text_key!r}.")
        messages.append({"role": role, "content": turn[text_key]})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn; nothing to learn.")
    return messages


def alpaca_messages(record: dict, with_output: bool = True) -> list[dict]:
    """An Alpaca record as a conversation: the user says ``instruction`` (+ a blank line + ``input``),
    the assistant answers ``output`` (left out with ``with_output=False``: a prompt)."""
    text = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    messages = [{"role": "user", "content": text}]
    return messages + [{"role": "assistant", "content": record["output"]}] if with_output else messages


def record_key(record: dict) -> str:
    """The text that identifies a record for hash splits: its question (the first user turn of a conversation)."""
    if "messages" in record:
        return next((m["content"] for m in record["messages"] if m["role"] == "user"), "")
    return record["instruction"] + record.get("input", "")


def record_target(record: dict) -> str:
    """What is learned from a record: its ``output``, or the concatenated assistant turns."""
    if "messages" in record:
        return "".join(m["content"] for m in record["messages"] if m["role"] == "assistant")
    return record["output"]


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """``tokenizer.apply_chat_template`` as text; ``DataError`` when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("Chat data and prompt_style 'chat' need a tokenizer with a chat template; this one has none.")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_prompt(tokenizer, instruction: str, input: str = "") -> str:
    """The chat-template prompt of an Alpaca question, ending where the assistant's answer starts."""
    return render(tokenizer, alpaca_messages({"instruction": instruction, "input": input}, with_output=False), True)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """``(text, [(start, end)])``: the rendered conversation and the character span of every assistant turn."""
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1]).rstrip()
        if not (text.startswith(before) and text.startswith(through)):
            raise DataError("This tokenizer's chat template renders earlier turns differently once later turns "
                            "follow, so assistant turns cannot be located; use prompt_style alpaca.")
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversation(messages: list[dict], tokenizer, train_on_inputs: bool = False
                          ) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a conversation: labels ``-100`` outside assistant turns (every token
    labelled with ``train_on_inputs``). Needs a fast tokenizer (character offsets)."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if train_on_inputs:
        return ids, list(ids)
    labels = [token if any(a <= start < b for a, b in spans) else -100
              for token, (start, _) in zip(ids, encoded["offset_mapping"])]
    return ids, labels


def render_prompt(tokenizer, instruction: str, input: str = "", style: str = "alpaca") -> str:
    """The prompt of an Alpaca question in any prompt style: the chat template for ``"chat"``,
    :func:`modetune.utils.prompts.format_prompt` otherwise."""
    from ..utils.prompts import format_prompt

    return chat_prompt(tokenizer, instruction, input) if style == "chat" else format_prompt(instruction, input, style)
