"""The dataset registry: the paper's 15 reasoning datasets, the built-in set, names and aliases.

Each :class:`DatasetInfo` carries its LLM-Adapters folder name, its paper column, and the
scoring rule it follows (numeric, letter or keyword: :mod:`modetune.eval.protocol`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..utils.errors import ConfigError

NUMBER_RE = re.compile(r"-?\d+\.?\d*")
LETTER_RE = re.compile(r"A|B|C|D|E")


@dataclass(frozen=True)
class DatasetInfo:
    """One of the paper's datasets: its LLM-Adapters folder name, paper column, and rule."""

    name: str
    display: str
    kind: Literal["numeric", "letter", "keyword"]
    group: Literal["arithmetic", "commonsense"]
    keywords: tuple[str, ...] = ()
    hub: tuple[str, str | None, str] | None = None  # (hub id, config, split read as "test"); converted by eval.sources

    @property
    def pattern(self) -> re.Pattern:
        """The extraction regex (alternation of the keywords, or the number/letter regex)."""
        if self.kind == "numeric":
            return NUMBER_RE
        if self.kind == "letter":
            return LETTER_RE
        return re.compile("|".join(re.escape(word) for word in self.keywords))

    @property
    def default_max_new_tokens(self) -> int:
        """The reference's budget: 256 new tokens for arithmetic, 32 for commonsense."""
        return 256 if self.group == "arithmetic" else 32


def _answers(n: int, stem: str = "answer") -> tuple[str, ...]:
    return tuple(f"{stem}{i}" for i in range(1, n + 1))


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("AddSub", "AddSub", "numeric", "arithmetic"),
        DatasetInfo("AQuA", "AQuA", "letter", "arithmetic", tuple("ABCDE"), hub=("deepmind/aqua_rat", "raw", "test")),
        DatasetInfo("gsm8k", "GSM8K", "numeric", "arithmetic", hub=("openai/gsm8k", "main", "test")),
        DatasetInfo("mawps", "MAWPS", "numeric", "arithmetic"),
        DatasetInfo("MultiArith", "MultiArith", "numeric", "arithmetic", hub=("ChilleD/MultiArith", None, "test")),
        DatasetInfo("SingleEq", "SingleEq", "numeric", "arithmetic"),
        DatasetInfo("SVAMP", "SVAMP", "numeric", "arithmetic", hub=("ChilleD/SVAMP", None, "test")),
        DatasetInfo("boolq", "BoolQ", "keyword", "commonsense", ("true", "false"), hub=("google/boolq", None, "validation")),
        DatasetInfo("piqa", "PIQA", "keyword", "commonsense", _answers(2, "solution"),
            hub=("baber/piqa", None, "validation")),
        DatasetInfo("social_i_qa", "SIQA", "keyword", "commonsense", _answers(5),
            hub=("lighteval/siqa", None, "validation")),
        DatasetInfo("hellaswag", "HellaSwag", "keyword", "commonsense", _answers(4, "ending"),
            hub=("Rowan/hellaswag", None, "validation")),
        DatasetInfo("winogrande", "WinoGrande", "keyword", "commonsense", _answers(2, "option"),
            hub=("allenai/winogrande", "winogrande_xl", "validation")),
        DatasetInfo("ARC-Easy", "ARC-e", "keyword", "commonsense", _answers(5), hub=("allenai/ai2_arc", "ARC-Easy", "test")),
        DatasetInfo("ARC-Challenge", "ARC-c", "keyword", "commonsense", _answers(5),
            hub=("allenai/ai2_arc", "ARC-Challenge", "test")),
        DatasetInfo("openbookqa", "OBQA", "keyword", "commonsense", _answers(5), hub=("allenai/openbookqa", "main", "test")),
    ]
}
# the built-in offline arithmetic problems (modetune.data), held-out split: scored as numeric
BUILTIN = DatasetInfo("builtin", "Built-in", "numeric", "arithmetic")
BUILTIN_TEST_SIZE = 200
ARITHMETIC = tuple(name for name, info in DATASETS.items() if info.group == "arithmetic")
COMMONSENSE = tuple(name for name, info in DATASETS.items() if info.group == "commonsense")
_ALIASES = {"arc-e": "ARC-Easy", "arc_easy": "ARC-Easy", "arc-c": "ARC-Challenge", "arc_challenge": "ARC-Challenge",
            "obqa": "openbookqa", "siqa": "social_i_qa", "socialiqa": "social_i_qa", "aqua_rat": "AQuA"}
ALL_DATASETS = {**DATASETS, BUILTIN.name: BUILTIN}  # the paper's 15, then the built-in offline set


def get_dataset(name: str) -> DatasetInfo:
    """The dataset called ``name``: its folder name, paper column or alias, case-insensitive."""
    key = name.strip().lower()
    if key == BUILTIN.name:
        return BUILTIN
    for info in DATASETS.values():
        if key in (info.name.lower(), info.display.lower()):
            return info
    if key in _ALIASES:
        return DATASETS[_ALIASES[key]]
    raise ConfigError(f"Unknown dataset {name!r}; known: {', '.join(DATASETS)}.")


def parse_dataset_list(spec: str | Sequence[str]) -> list[str]:
    """``"gsm8k,svamp"`` -> folder names; ``"all"``, ``"arithmetic"``, ``"commonsense"`` expand.

    An entry may carry an explicit file, ``name=path/to/test.json``, and source options
    (:func:`modetune.data.parse_source`), e.g. ``piqa?half=test`` for the half of PIQA's
    test set whose other half was trained on; both are kept as given.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ConfigError("No dataset given.")
    groups = {"all": list(DATASETS), "arithmetic": list(ARITHMETIC), "commonsense": list(COMMONSENSE)}
    out: list[str] = []
    for item in items:
        item, query, options = item.partition("?")
        name, sep, path = item.partition("=")
        expanded = groups[name.lower()] if name.lower() in groups else [get_dataset(name).name]
        out.extend((f"{n}={path}" if sep else n) + query + options for n in expanded)
    return list(dict.fromkeys(out))
