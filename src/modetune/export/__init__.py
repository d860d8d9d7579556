"""``modetune export``: a trained MoD adapter as a Hugging Face model folder that plain transformers loads.

The folder holds the base model's weights with LoRA merged in (peft's ``merge_and_unload``; with
``merge=False`` the base weights stay as they were and the LoRA adapter goes to ``lora/``), the
member norms and router in ``mod_model.safetensors``, the tokenizer, and ``config.json`` whose
``auto_map`` points at ``modeling_mod.py``: modetune's own ensemble module (``mod/ensemble.py``), copied
byte for byte, which imports torch, transformers and safetensors only, so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` gives the ensemble.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from ..mod import ensemble
from ..mod.ensemble import MOD_WEIGHTS
from ..mod.surgery import unwrap
from ..utils.checks import check_dtype, coerce_fields, from_flat_dict
from ..utils.errors import ConfigError

MODELING_FILE = "modeling_mod.py"  # mod/ensemble.py, copied byte for byte
ENTRY_CLASS = "modeling_mod.MoDForCausalLM"


def export_model(mod, tokenizer, output: str | Path, merge: bool = True) -> Path:
    """Write the folder for a loaded :class:`~modetune.mod.model.MoDModel` ``mod``; returns its path.

    ``merge=True`` merges LoRA into the base weights (the MoD hooks stay on the same modules);
    ``merge=False`` saves the base weights unchanged and the LoRA adapter in ``lora/``.
    """
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"{output} exists and is not empty; choose a new folder.")
    wrapped = mod.base_model
    is_peft = wrapped is not unwrap(wrapped)
    if is_peft and merge:
        plain = wrapped.merge_and_unload()
    else:
        plain = unwrap(wrapped)
        if is_peft:
            wrapped.save_pretrained(str(output / "lora"))
            plain = _without_lora(wrapped)
    spec = {"architecture": type(plain).__name__, **mod.ensemble.spec(plain)}
    plain.config.auto_map = {"AutoModelForCausalLM": ENTRY_CLASS}
    plain.config.mod_ensemble = spec
    softcap = mod.softcap
    if softcap is not None:  # the saved config keeps the model's own soft-capping (MoD turned it off in memory)
        plain.config.get_text_config().final_logit_softcapping = softcap
    try:
        plain.save_pretrained(str(output))
    finally:
        if softcap is not None:
            plain.config.get_text_config().final_logit_softcapping = None
    tokenizer.save_pretrained(str(output))
    weights = {name: tensor for name, tensor in mod.mod_state_dict().items() if not name.startswith("final_norm.")}
    save_file(weights, str(output / MOD_WEIGHTS), metadata={"format": "pt"})
    shutil.copyfile(ensemble.__file__, output / MODELING_FILE)
    return output


def _without_lora(peft_model):
    """The base model with LoRA layers removed (weights as they were before LoRA), for ``merge=False``."""
    return peft_model.unload()


@dataclass
class ExportCommand:
    """Everything ``modetune export`` takes; every field is a flag."""

    adapter: str = field(default="", metadata={"help": "MoD adapter folder (mod_config.json)", "required": True})
    output: str = field(default="", metadata={"help": "new folder to write", "required": True})
    model: str | None = field(default=None, metadata={
        "help": "base model (none: the one the adapter was trained on)"})
    merge: bool = field(default=True, metadata={
        "help": "merge LoRA into the base weights (--no-merge: keep it apart in OUTPUT/lora; loading then needs peft)"})
    dtype: str = field(default="float32", metadata={"help": "weights dtype (a torch dtype name)"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "let transformers run the model folder's own code (off: refuse such a model)"})
    ignore_base_mismatch: bool = field(default=False, metadata={
        "help": "export an adapter recorded for another base model anyway, with a warning (off: refuse)"})

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_dtype(self.dtype)

    @classmethod
    def from_dict(cls, data: dict) -> ExportCommand:
        return from_flat_dict(cls, data, "export")


def run_export(command: ExportCommand) -> Path:
    """Load the adapter onto its base (``model``; none: the recorded one) and export it: the CLI's ``export``."""
    from ..eval.runner import ModelSource, quiet_transformers
    from ..mod.config import CONFIG_NAME

    if not Path(command.adapter, CONFIG_NAME).is_file():
        raise ConfigError(f"{command.adapter} holds no MoD adapter ({CONFIG_NAME}); export needs one.")
    quiet_transformers()
    source = ModelSource(model=command.model, adapter=command.adapter, dtype=command.dtype,
                         trust_remote_code=command.trust_remote_code,
                         ignore_base_mismatch=command.ignore_base_mismatch)
    mod, tokenizer, _ = source.load()
    return export_model(mod, tokenizer, command.output, merge=command.merge)
