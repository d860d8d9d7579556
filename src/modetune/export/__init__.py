"""``modetune export``: a trained MoD adapter as a Hugging Face model folder that plain transformers loads.

The folder holds the base model's weights with LoRA merged in (peft's ``merge_and_unload``; with
``merge=False`` the base weights stay as they were and the LoRA adapter goes to ``lora/``), the
member norms and router in ``mod_model.safetensors``, the tokenizer, and ``config.json`` whose
``auto_map`` points at ``modeling_mod.py``: modetune's own ensemble module (``mod/ensemble.py``), copied
byte for byte, which imports torch, transformers and safetensors only, so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` gives the ensemble.
"""

from __future__ import annotations

from pathlib import Path

from ..loading import ModelSource
from ..mod import ensemble
from ..mod.surgery import unwrap
from ..utils.errors import ConfigError
from ..utils.outputs import check_output, staged
from ..utils.publish import hub_name, make_portable

# What serving the final member alone costs, as measured (docs/results/study-clip-control, "C5")
FINAL_MEMBER_NOTE = ("What it loses against the ensemble, as measured on 600 held-out arithmetic items "
                     "(docs/results/study-clip-control): final member minus ensemble -0.0 points [-0.2, +0.2] over 8 "
                     "seeds (per-group clipping) and -0.2 [-0.6, +0.2] over 4 (global clipping); no loss detected.")


def export_model(mod, tokenizer, output: str | Path, merge: bool = True, final_member: bool = False,
                 overwrite: bool = False) -> Path:
    """Write the folder for a loaded :class:`~modetune.mod.model.MoDModel` ``mod``; returns its path.

    ``merge=True`` merges LoRA into the base weights (the MoD hooks stay on the same modules);
    ``merge=False`` saves the base weights unchanged and the LoRA adapter in ``lora/``.
    ``final_member=True`` writes the final member alone: the base architecture with LoRA merged,
    no ensemble and no remote code, loadable anywhere the base model is (benchmarks/serve_check.sh runs it
    in llama.cpp and ONNX Runtime; vLLM and TGI not run).
    ``mod`` is consumed: merging changes its weights in place. The folder is written beside
    ``output`` and renamed into place at the end (:func:`~modetune.utils.outputs.staged`); an
    existing ``output`` is refused unless ``overwrite``.
    """
    if final_member and not merge:
        raise ConfigError("--final-member writes one plain model with LoRA merged in; it cannot keep LoRA apart "
                          "(--no-merge).")
    check_output(output, overwrite=overwrite)
    with staged(output) as stage:
        _write_export(mod, tokenizer, stage, merge, final_member)
    return Path(output)


def _write_export(mod, tokenizer, output: Path, merge: bool, final_member: bool) -> None:
    wrapped = mod.base_model
    is_peft = wrapped is not unwrap(wrapped)
    if is_peft and merge:
        plain = wrapped.merge_and_unload()
    else:
        plain = unwrap(wrapped)
        if is_peft:
            wrapped.save_pretrained(str(output / "lora"))
            plain = _without_lora(wrapped)
    base_name = hub_name(getattr(plain.config, "_name_or_path", "") or "") or "the base model"
    if final_member:
        plain.save_pretrained(str(output))
    else:
        ensemble.save_ensemble_folder(plain, mod.ensemble, str(output))
    tokenizer.save_pretrained(str(output))
    kind = "final" if final_member else "merged" if merge or not is_peft else "lora"
    (output / "README.md").write_text(model_card(kind, mod.mod_config.k, base_name))
    make_portable(output, getattr(plain.config, "_name_or_path", None))


def model_card(kind: str, k: int, base: str) -> str:
    """The exported folder's ``README.md``: what it is, what loading it needs, and how."""
    load = "AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)"
    if kind == "final":
        what = (f"The final member of a MoD ensemble (k = {k}) trained on {base}, alone: the base architecture "
                "with LoRA merged in, no ensemble and no custom code. It loads wherever the base model does "
                "(transformers 4.x and 5; llama.cpp after its convert_hf_to_gguf.py; ONNX Runtime after optimum-onnx). "
                + FINAL_MEMBER_NOTE)
        load = "AutoModelForCausalLM.from_pretrained(folder)"
        needs = "torch and transformers (or any engine that serves the base architecture)"
    elif kind == "lora":
        what = (f"A MoD ensemble (k = {k}) on {base}, LoRA kept apart in `lora/` (exported with --no-merge).")
        needs = "torch, transformers, safetensors **and peft** (for `lora/`)"
    else:
        what = f"A MoD ensemble (k = {k}) on {base}, LoRA merged into the weights."
        needs = "torch, transformers and safetensors (no peft, no modetune)"
    return (f"# {base} + MoD (exported by modetune)\n\n{what}\n\n"
            f"Loading needs {needs}:\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"model = {load}\ntokenizer = AutoTokenizer.from_pretrained(folder)\n```\n")


def _without_lora(peft_model):
    """The base model with LoRA layers removed (weights as they were before LoRA), for ``merge=False``."""
    return peft_model.unload()


def export_adapter(source: ModelSource, output: str | Path, merge: bool = True, final_member: bool = False,
                   overwrite: bool = False) -> Path:
    """Load ``source`` (an adapter on its base; no ``model``: the base it records) and export it
    (:func:`export_model`); the output is checked before the model loads."""
    from ..loading import quiet_transformers
    from ..mod.config import CONFIG_NAME

    if not source.adapter:
        raise ConfigError("export needs an adapter (--adapter): the MoD adapter to export.")
    if not Path(source.adapter, CONFIG_NAME).is_file():
        raise ConfigError(f"{source.adapter} holds no MoD adapter ({CONFIG_NAME}); export needs one.")
    check_output(output, [source.adapter, source.model], overwrite)  # before the model loads
    quiet_transformers()
    mod, tokenizer, _ = source.load()
    return export_model(mod, tokenizer, output, merge=merge, final_member=final_member, overwrite=overwrite)
