"""Generation for evaluation: a KV-cache greedy decoder, beam search through ``generate``, the
shared prompt-header cache, and stopping once the answer is settled.

:func:`generate_responses` is the entry point (one batch of prompts -> stripped responses).
Greedy decoding runs :func:`greedy_generate`, the same math as ``generate(do_sample=False)``
with savings that leave each row unchanged (shared header computed once, rows prefilled
alone, finished rows leaving the batch); beam search uses the model's ``generate`` with
:class:`AnswerStop`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import StoppingCriteria

from ..data.chat import render_prompt
from ..utils.errors import DataError
from ..utils.prompts import STYLES
from .datasets import get_dataset
from .protocol import answer_settled


class AnswerStop(StoppingCriteria):
    """A ``StoppingCriteria`` that ends a row once :func:`answer_settled` holds for its text.

    Decodes only the last ``window`` generated tokens of each row, which is enough for the
    rules (they look at the text just generated; a row that stopped never resumes).
    """

    def __init__(self, tokenizer, dataset: str, prompt_length: int, window: int = 48,
                 cut_at_next_response: bool = True) -> None:
        self.tokenizer, self.dataset, self.prompt_length, self.window = tokenizer, dataset, prompt_length, window
        self.cut_at_next_response = cut_at_next_response

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        info = get_dataset(self.dataset)
        tail = input_ids[:, self.prompt_length:]
        if info.kind == "keyword":  # the first keyword may sit anywhere in the response
            texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        else:
            texts = self.tokenizer.batch_decode(tail[:, -self.window:], skip_special_tokens=True)
        done = [answer_settled(self.dataset, text, self.cut_at_next_response) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def eos_ids(model: nn.Module, tokenizer) -> list[int]:
    """The ids that end a generation: the model's ``generation_config.eos_token_id`` (one or a list),
    else the tokenizer's EOS; the one EOS lookup of every generating command."""
    own = getattr(model, "generation_config", None)
    eos = getattr(own, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def generation_config(model: nn.Module, tokenizer, max_new_tokens: int, num_beams: int = 1,
                      temperature: float | None = None, top_p: float | None = None):
    """A fresh ``GenerationConfig``: greedy, beam search, or sampling when ``temperature`` is given
    (with ``top_p``); the model's EOS (:func:`eos_ids`). The one home of generation settings
    (``modetune eval``, ``generate`` and ``chat``)."""
    from transformers import GenerationConfig

    eos = eos_ids(model, tokenizer)
    sampling = {"do_sample": False} if temperature is None else {"do_sample": True, "temperature": temperature,
                                                                 "top_p": top_p}
    return GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=(eos[0] if len(eos) == 1 else eos) if eos else None,
                            bos_token_id=getattr(getattr(model, "generation_config", None), "bos_token_id", None),
                            **sampling)


def _forward(model: nn.Module, **kwargs):
    """One forward pass; accepts the cache under transformers 5's name (``cache``)."""
    return model(**kwargs)


def _plain_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The (keys, values) of every layer of a cache made of plain full-attention dynamic
    layers, or ``None`` for any other cache (sliding windows, linear attention, ...)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _prefill_rows(model: nn.Module, rests: list[list[int]], prefix_kv, past: int, device):
    """Prefill each row alone (no padding, so no wasted compute and the same math as batch
    size 1), then merge the row caches into one left-padded batch cache. ``None`` when the
    model's cache is not a plain dynamic cache (the caller then prefills the padded batch)."""
    import torch.nn.functional as F
    from transformers.cache_utils import DynamicCache

    logits, caches = [], []
    for rest in rests:
        cache = DynamicCache(ddp_cache_data=prefix_kv) if prefix_kv is not None else None
        ids = torch.tensor([rest], device=device)
        out = _forward(model, input_ids=ids, attention_mask=torch.ones((1, past + len(rest)), dtype=torch.long,
                                                                        device=device),
                       position_ids=torch.arange(past, past + len(rest), device=device)[None], cache=cache,
                       use_cache=True, logits_to_keep=1)
        layers = _plain_layers(out.cache)
        if layers is None:
            return None
        logits.append(out.logits[:, -1:])
        caches.append(layers)
    lengths = [past + len(rest) for rest in rests]
    width = max(lengths)
    merged = []
    for layer in range(len(caches[0])):
        keys = torch.cat([F.pad(c[layer][0], (0, 0, width - n, 0)) for c, n in zip(caches, lengths)])
        values = torch.cat([F.pad(c[layer][1], (0, 0, width - n, 0)) for c, n in zip(caches, lengths)])
        merged.append((keys, values))
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=device)
    last = torch.tensor([[n - 1] for n in lengths], device=device)
    return torch.cat(logits), DynamicCache(ddp_cache_data=merged), mask, last


@torch.no_grad()
def greedy_generate(model: nn.Module, sequences: Sequence[Sequence[int]], max_new_tokens: int,
                    eos_ids: Sequence[int], stop: Callable[[list[int], list[list[int]]], list[bool]] | None = None,
                    prefix_len: int = 0, pad_id: int = 0) -> list[list[int]]:
    """Greedy decoding of a batch of token sequences with a KV cache that drops finished rows.

    The same computation as ``generate(do_sample=False)`` with left padding for each row
    (positions ``cumsum(mask) - 1``, argmax of the float32 logits of the last position), with
    savings that leave each row's math unchanged:

    - ``prefix_len > 0``: the first ``prefix_len`` tokens, identical in every row (the prompt
      template's header), are run once and their cache shared;
    - each row's prompt is prefilled alone (no padding to pay for) and the row caches are
      merged into one left-padded batch cache for decoding (models with a plain dynamic
      cache; others prefill the padded batch);
    - a row that emits EOS, or for which ``stop(rows, tokens)`` is true, leaves the batch
      (and the cache), so the batch stops paying for it.

    Returns the new tokens of each row, EOS included when emitted.
    """
    batch = len(sequences)
    if prefix_len and any(len(s) <= prefix_len or list(s[:prefix_len]) != list(sequences[0][:prefix_len])
                          for s in sequences):
        raise ValueError("prefix_len must be shorter than every sequence and shared by all of them.")
    device = next(model.parameters()).device
    prefix_kv, past, prefix_cache = None, 0, None
    if prefix_len:
        prefix = torch.tensor([list(sequences[0][:prefix_len])], device=device)
        out = _forward(model, input_ids=prefix, attention_mask=torch.ones_like(prefix),
                       position_ids=torch.arange(prefix_len, device=device)[None], use_cache=True, logits_to_keep=1)
        prefix_cache, past = out.cache, prefix_len
        prefix_kv = _plain_layers(prefix_cache)
    rests = [list(s[prefix_len:]) for s in sequences]
    prefilled = _prefill_rows(model, rests, prefix_kv, past, device) if (prefix_kv or not prefix_len) else None
    if prefilled is not None:
        logits, cache, mask, last = prefilled
    else:  # one padded batch: [prefix][padding][rest]
        if prefix_cache is not None and batch > 1:
            prefix_cache.batch_repeat_interleave(batch)
        width = max(len(r) for r in rests)
        input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rests], device=device)
        mask = torch.tensor([[1] * past + [0] * (width - len(r)) + [1] * len(r) for r in rests], device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = _forward(model, input_ids=input_ids, attention_mask=mask, position_ids=positions[:, past:],
                       cache=prefix_cache, use_cache=True, logits_to_keep=1)
        logits, cache, last = out.logits, out.cache, positions[:, -1:]
    out_tokens: list[list[int]] = [[] for _ in range(batch)]
    rows = list(range(batch))
    eos = torch.tensor(list(eos_ids) or [-1], device=device)
    for step in range(max_new_tokens):
        tokens = logits[:, -1].to(torch.float32).argmax(-1)
        for row, token in zip(rows, tokens.tolist()):
            out_tokens[row].append(token)
        finished = torch.isin(tokens, eos)
        if stop is not None:
            flags = stop(rows, [out_tokens[r] for r in rows])
            finished |= torch.tensor(flags, dtype=torch.bool, device=device)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows = [rows[i] for i in keep.tolist()]
            tokens, mask, last = tokens[keep], mask[keep], last[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        last = last + 1
        out = _forward(model, input_ids=tokens[:, None], attention_mask=mask, position_ids=last, cache=cache,
                       use_cache=True)
        logits, cache = out.logits, out.cache
    return out_tokens


_PROBES = ("0", "Z")


def template_prefixes(tokenizer) -> list[list[int]]:
    """Token prefixes shared by every prompt of one prompt template (each style, with and
    without input): the longest common token prefix of two probe prompts. Longest first."""
    found = []
    for style in STYLES:
        for has_input in (False, True):
            try:
                a, b = (tokenizer(render_prompt(tokenizer, p, p if has_input else "", style))["input_ids"]
                        for p in _PROBES)
            except DataError:  # no chat template
                continue
            n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            if n:
                found.append(list(a[:n]))
    return sorted(found, key=len, reverse=True)


def shared_prefix_length(tokenizer, sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest template prefix (:func:`template_prefixes`) that every sequence
    starts with and is longer than; 0 when there is none (no prefix sharing). It depends on
    the prompt template only, not on which prompts share the batch."""
    for prefix in template_prefixes(tokenizer):
        n = len(prefix)
        if all(len(s) > n and list(s[:n]) == prefix for s in sequences):
            return n
    return 0


@torch.no_grad()
def generate_responses(model: nn.Module, tokenizer, prompts: Sequence[str], dataset: str, max_new_tokens: int,
                       num_beams: int = 1, stop_at_answer: bool = True, prefix_cache: bool = True,
                       cut_at_next_response: bool = True) -> list[str]:
    """Generate one batch; return the decoded continuations (special tokens skipped), stripped.

    Greedy uses :func:`greedy_generate` (the template header computed once with
    ``prefix_cache``; finished rows leave the batch); beam search uses the model's own
    ``generate`` on the left-padded batch, with :class:`AnswerStop`. ``cut_at_next_response``
    (with ``stop_at_answer``): a row also stops once it writes ``### Response:``.
    """
    from transformers import StoppingCriteriaList

    if num_beams == 1:
        sequences = [tokenizer(p)["input_ids"] for p in prompts]
        keyword = get_dataset(dataset).kind == "keyword"
        stop = None
        if stop_at_answer:
            def stop(rows: list[int], tokens: list[list[int]]) -> list[bool]:
                texts = tokenizer.batch_decode([t if keyword else t[-48:] for t in tokens], skip_special_tokens=True)
                return [answer_settled(dataset, text, cut_at_next_response) for text in texts]

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        new = greedy_generate(model, sequences, max_new_tokens, eos_ids(model, tokenizer), stop,
                              prefix_len=shared_prefix_length(tokenizer, sequences) if prefix_cache else 0,
                              pad_id=pad)
    else:
        if tokenizer.padding_side != "left":
            raise ValueError("Batched beam search needs a tokenizer with padding_side='left'.")
        device = next(model.parameters()).device
        encoded = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
        length = encoded["input_ids"].shape[1]
        stopping = StoppingCriteriaList([AnswerStop(tokenizer, dataset, length, cut_at_next_response=cut_at_next_response)]
                                         if stop_at_answer else [])
        out = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                             generation_config=generation_config(model, tokenizer, max_new_tokens, num_beams),
                             stopping_criteria=stopping)
        new = out[:, length:].tolist()
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
