"""The one model loader below everything that loads: a base model, optionally with an adapter.

:class:`ModelSource` is the config every command that loads a model nests (``--model``,
``--adapter``, ``--dtype``, ``--device``, ``--trust-remote-code``, ``--ignore-base-mismatch``,
``--quantization``, ``--chat-template``); :func:`load_source` loads it: the base (the embedded
default, a local folder or a hub name; quantized for QLoRA), then a MoD adapter
(:meth:`~modetune.mod.model.MoDModel.from_pretrained`) or a LoRA-only one (peft), each checked
against the base it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from ..utils.checks import check_device, check_dtype
from ..utils.config import Config
from ..utils.errors import BaseModelMismatchError, first_line
from ..utils.models import check_quantization
from ..utils.prompts import read_chat_template, trained_chat_template


@dataclass
class ModelSource(Config):
    """The model a command loads: a base model, and optionally an adapter on it."""

    what: ClassVar[str] = "model source"

    model: str | None = field(default=None, metadata={
        "help": "base model: 'default' (the embedded SmolLM2-135M-Instruct), a local folder or a hub name (none: the "
                "one the adapter was trained on, else default)"})
    adapter: str | None = field(default=None, metadata={
        "help": "MoD folder (mod_config.json) or LoRA-only folder (adapter_config.json); none: the base model alone"})
    dtype: str = field(default="float32", metadata={
        "help": "weights dtype (a torch dtype name: float32, bfloat16, float16)"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (none: where the model loads)"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "let transformers run the model folder's own code (off: refuse such a model)"})
    ignore_base_mismatch: bool = field(default=False, metadata={
        "help": "load an adapter recorded for another base model anyway, with a warning (off: refuse)"})
    quantization: str = field(default="none", metadata={
        "help": "load the base quantized by bitsandbytes: '4bit' (NF4) or '8bit', as a QLoRA adapter was trained "
                "('none': as saved)"})
    chat_template: str | None = field(default=None, metadata={
        "help": "a Jinja chat template (a file, or the template text) replacing the tokenizer's (none: the one the "
                "adapter trained with, else the tokenizer's own)"})

    def validate(self) -> None:
        check_dtype(self.dtype)
        read_chat_template(self.chat_template)  # refuses a missing file now
        check_device(self.device)
        check_quantization(self.quantization)
        # the adapter as a whole, before a command reads a file of it or writes anything (a missing folder is
        # refused when it loads: a saved config may name one that is gone)
        if self.adapter is not None and Path(self.adapter).is_dir():
            from .adapter import check_adapter

            check_adapter(self.adapter)

    def load(self):
        """``(model, tokenizer, info)``: :func:`load_source` of this source."""
        return load_source(self.model, self.adapter, dtype=self.dtype, device=self.device,
                             trust_remote_code=self.trust_remote_code, ignore_base_mismatch=self.ignore_base_mismatch,
                             quantization=self.quantization, chat_template=self.chat_template)



def load_source(model: str | None = "default", adapter: str | Path | None = None, dtype: str = "float32",
                  device: str | None = None, trust_remote_code: bool = False,
                  ignore_base_mismatch: bool = False, quantization: str = "none",
                  chat_template: str | None = None) -> tuple[nn.Module, Any, dict]:
    """Load ``(model, tokenizer, info)``: the one loader every command that loads a model uses.

    ``adapter``: a MoD folder (``mod_config.json``; loaded with :meth:`MoDModel.from_pretrained`,
    which raises :class:`~modetune.utils.errors.BaseModelMismatchError` on another base), a LoRA-only
    folder (``adapter_config.json``; peft; its ``modetune_adapter.json`` fingerprint must match
    too), or ``None`` for the base model alone; ``ignore_base_mismatch`` turns the refusal of
    another base into a warning. The adapter folder is checked as a whole before the model loads
    (:func:`~modetune.loading.adapter.check_adapter`: every file, against the others). The
    tokenizer pads on the left; its chat template is ``chat_template`` if given, else the one the
    adapter trained with when that overrode the tokenizer's (``prompt.json``). ``info``: ``model``,
    ``adapter``, ``kind`` (base/lora/mod).
    """
    from ..mod.config import CONFIG_NAME
    from ..mod.model import ADAPTER_WEIGHTS, WEIGHTS_NAME, MoDModel, base_fingerprint
    from ..utils.integrity import check_adapter_base, check_files
    from ..utils.models import base_model_for, load_model
    from .adapter import check_adapter

    adapter_path = None if adapter is None else check_adapter(adapter)  # every file, against the others
    if adapter_path is not None:
        check_files(adapter_path, (WEIGHTS_NAME, ADAPTER_WEIGHTS))  # every tensor readable
    model = base_model_for(model, adapter)  # None: the base the adapter records (base_model.json)
    if chat_template is None:
        chat_template = trained_chat_template(adapter_path)
    base, tokenizer = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code, device=device,
                                 quantization=quantization, chat_template=chat_template)
    kind = "base"
    if adapter_path is not None:
        if (adapter_path / CONFIG_NAME).exists():
            base = MoDModel.from_pretrained(base, adapter_path, ignore_base_mismatch=ignore_base_mismatch)
            kind = "mod"
        else:  # a LoRA-only adapter (check_adapter refuses a folder holding neither)
            from peft import PeftModel

            check_adapter_base(adapter_path, base_fingerprint(base), ignore_base_mismatch)
            try:
                base = PeftModel.from_pretrained(base, str(adapter_path))
            except (RuntimeError, ValueError, KeyError) as error:
                raise BaseModelMismatchError(f"The LoRA adapter in {adapter_path} does not fit base model "
                                             f"{model!r}: {first_line(error)}") from error
            kind = "lora"
    base.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = {"model": model, "adapter": None if adapter_path is None else str(adapter_path), "kind": kind}
    return base, tokenizer, info


def quiet_transformers() -> None:
    """No weight-loading progress bars or advisory warnings from transformers (command line)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
