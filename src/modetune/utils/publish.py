"""What modetune writes for others to read: folders every engine reads the same, with nothing local.

transformers 5 writes configs and tokenizer files that older readers misread: ``rope_parameters``
without a top-level ``rope_theta`` (transformers 4.x then uses its default theta, 10000), and
``tokenizer_class: TokenizersBackend``, a class 4.x lacks. It also records where a file came from:
``local_files_only``, ``is_local`` and absolute paths. :func:`make_portable` rewrites a written
folder the way transformers itself wrote configs for older readers: the old fields beside the new
ones (both versions read the folder to the same logits), a tokenizer class both versions have,
and hub names instead of local paths.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF file holds
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # in transformers 4.x and 5 (where it is TokenizersBackend)
LOCAL_TOKENIZER_KEYS = ("local_files_only", "is_local", "name_or_path", "_name_or_path", "cache_dir")


def hub_name(model: str) -> str | None:
    """The hub id of a base model: the embedded default's (by name or by its cache folder), a hub
    name as given, or the one a local folder's ``config.json`` records; ``None`` when unknown (a
    local path is never returned)."""
    from .models import DEFAULT_MODEL, cache_dir

    if not model:
        return None
    if model.lower() in {"default", DEFAULT_MODEL}:
        return DEFAULT_HUB_NAME
    path = Path(model).expanduser()
    if path.is_dir():
        if path.resolve() == (cache_dir() / DEFAULT_MODEL).resolve():
            return DEFAULT_HUB_NAME
        try:
            recorded = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_name_or_path", "")
        except (OSError, ValueError):
            return None
        model = recorded if isinstance(recorded, str) else ""
        path = Path(model)
    looks_like_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and not path.exists()
    return model if looks_like_id else None


def portable_config(config: dict) -> dict:
    """A model ``config.json`` that transformers 4.x reads as 5 does: ``rope_theta`` (and, for a
    non-default rope type, ``rope_scaling``) beside ``rope_parameters``; per-attention-type
    parameters (``{"full_attention": {...}, "sliding_attention": {...}}``) give ``rope_theta`` and
    ``rope_local_base_freq``; a nested ``text_config`` the same way."""
    config = dict(config)
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and rope:
        if all(isinstance(value, dict) for value in rope.values()):  # per attention type
            full, sliding = rope.get("full_attention", {}), rope.get("sliding_attention", {})
            if "rope_theta" in sliding:
                config.setdefault("rope_local_base_freq", sliding["rope_theta"])
            rope = full
        if "rope_theta" in rope:
            config.setdefault("rope_theta", rope["rope_theta"])
        kind = rope.get("rope_type", "default")
        if kind != "default" and config.get("rope_scaling") is None:
            config["rope_scaling"] = {**{k: v for k, v in rope.items() if k != "rope_theta"}, "type": kind}
    if isinstance(config.get("text_config"), dict):
        config["text_config"] = portable_config(config["text_config"])
    return config


def portable_tokenizer_config(config: dict) -> dict:
    """A ``tokenizer_config.json`` without what only transformers 5 or this machine knows: the
    class ``TokenizersBackend`` becomes ``PreTrainedTokenizerFast`` (5 maps it back), and
    ``local_files_only``, ``is_local`` and recorded paths are dropped."""
    config = {key: value for key, value in config.items() if key not in LOCAL_TOKENIZER_KEYS}
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    return config


def _rewrite(path: Path, change) -> None:
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(change(data), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                        encoding="utf-8")


def _replace_base_path(folder: Path, name: str | None) -> None:
    """The local base path peft recorded (``adapter_config.json``) replaced by ``name`` in peft's card."""
    config, card = folder / "adapter_config.json", folder / "README.md"
    if not (config.is_file() and card.is_file()):
        return
    recorded = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not recorded or recorded == name or not (recorded.startswith(("/", "~", ".")) or Path(recorded).exists()):
        return
    lines = card.read_text(encoding="utf-8").splitlines(keepends=True)
    card.write_text("".join(line.replace(recorded, name) if name else line for line in lines
                            if name or recorded not in line), encoding="utf-8")


def make_portable(folder: str | Path, base: str | None) -> None:
    """Rewrite the JSON files of a folder modetune wrote for publishing (an export, an adapter, its
    ``lora/``): ``config.json`` (:func:`portable_config`), ``tokenizer_config.json``
    (:func:`portable_tokenizer_config`) and peft's ``adapter_config.json``, whose
    ``base_model_name_or_path`` becomes ``base``'s hub name (``None`` when unknown: never a local path),
    and so does that path in peft's own model card (``README.md``; its lines are dropped when the
    name is unknown)."""
    folder = Path(folder)
    name = hub_name(base or "")
    for sub in (folder, folder / "lora"):
        _replace_base_path(sub, name)
        _rewrite(sub / "config.json", portable_config)
        _rewrite(sub / "tokenizer_config.json", portable_tokenizer_config)
        _rewrite(sub / "adapter_config.json", lambda data: {**data, "base_model_name_or_path": name})
