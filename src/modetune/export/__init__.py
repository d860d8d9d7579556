"""``modetune export``: a trained MoD adapter as a Hugging Face model folder that plain transformers loads.

The folder holds the base model's weights with LoRA merged in (peft's ``merge_and_unload``; with
``merge=False`` the base weights stay as they were and the LoRA adapter goes to ``lora/``), the
member norms and router in ``mod_model.safetensors``, the tokenizer, and ``config.json`` whose
``auto_map`` points at ``modeling_mod.py`` (shipped in the folder; it does not import modetune), so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` gives the ensemble.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import save_file

from ..errors import ConfigError, UnsupportedModelError
from ..routing import prior_logits
from ..surgery import unwrap

MODELING_FILE = Path(__file__).with_name("modeling_mod.py")
ENTRY_CLASS = "modeling_mod.MoDForCausalLM"


def _module_name(model, module) -> str:
    """The dotted name of ``module`` inside ``model``."""
    return next(name for name, found in model.named_modules() if found is module)


def ensemble_spec(mod, plain) -> dict:
    """What ``modeling_mod.py`` needs to rebuild the ensemble on ``plain`` (the base, without peft):
    module names, k, routing settings, the router's constant prior (``routing.prior_logits``)."""
    config, parts = mod.mod_config, mod._parts
    fixed = None if config.loss_layer is None else config.k - 1 - config.loss_layer
    return {"architecture": type(plain).__name__, "k": config.k, "hidden_size": parts.hidden_size,
            "layers": _module_name(plain, parts.layers), "final_norm": _module_name(plain, parts.final_norm),
            "head": _module_name(plain, parts.head), "member_norms": config.member_norms,
            "router_input": config.router_input, "top_k": config.top_k, "fixed": fixed,
            "prior": prior_logits(config.k, config.router_init, config.router_init_final_weight).tolist()}


def export_model(mod, tokenizer, output: str | Path, merge: bool = True) -> Path:
    """Write the folder for a loaded :class:`~modetune.model.MoDModel` ``mod``; returns its path.

    ``merge=True`` merges LoRA into the base weights (the MoD hooks stay on the same modules);
    ``merge=False`` saves the base weights unchanged and the LoRA adapter in ``lora/``.
    """
    if mod.softcap is not None:
        raise UnsupportedModelError("Export of models with final-logit soft-capping (Gemma-2) is not supported yet.")
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
    spec = ensemble_spec(mod, plain)
    plain.config.auto_map = {"AutoModelForCausalLM": ENTRY_CLASS}
    plain.config.mod_ensemble = spec
    plain.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    weights = {name: tensor for name, tensor in mod.mod_state_dict().items() if not name.startswith("final_norm.")}
    save_file(weights, str(output / "mod_model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(MODELING_FILE, output / MODELING_FILE.name)
    return output


def _without_lora(peft_model):
    """The base model with LoRA layers removed (weights as they were before LoRA), for ``merge=False``."""
    return peft_model.unload()


def run_export(adapter: str, output: str, model: str | None = None, merge: bool = True, dtype: str = "float32"
               ) -> Path:
    """Load ``adapter`` onto its base (``model``; none: the recorded one) and export it: the CLI's ``export``."""
    from ..config import CONFIG_NAME
    from ..eval.runner import load_for_eval, quiet_transformers

    if not Path(adapter, CONFIG_NAME).is_file():
        raise ConfigError(f"{adapter} holds no MoD adapter ({CONFIG_NAME}); export needs one.")
    quiet_transformers()
    mod, tokenizer, _ = load_for_eval(model, adapter, dtype=dtype)
    return export_model(mod, tokenizer, output, merge=merge)
