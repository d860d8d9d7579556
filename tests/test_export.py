"""`modetune export`: a folder that plain transformers loads (modetune not importable) with the
same logits and greedy generation as the MoDModel it came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modetune import MoDConfig, get_mod_model
from modetune.cli import main
from modetune.utils.models import record_base_model
from tiny import lora, perturb

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4  # max |logit difference|: merging LoRA into the weights only reorders float32 sums

LOADER = r'''
import importlib.util, json, sys
BLOCKED = ("peft", "modetune")
sys.modules.update(dict.fromkeys(BLOCKED))  # none can be imported: as in a Python without them
for name in BLOCKED:
    try:
        __import__(name)
        sys.exit(name + " is importable")
    except ImportError:
        assert importlib.util.find_spec(name) is None  # transformers sees it as not installed
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
folder, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
ids = torch.tensor(ids)
with torch.no_grad():
    logits = model(ids).logits
    generated = model.generate(ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8)
save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, out)
'''


def _adapter(tmp_path, tiny_model_dir, config: MoDConfig):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    mod = perturb(get_mod_model(lora(base, k=config.k), config))
    folder = tmp_path / "adapter"
    mod.save_pretrained(folder)
    record_base_model(folder, str(tiny_model_dir))
    return folder


@pytest.mark.parametrize("config, merge", [(MoDConfig(k=3), True),
                                           (MoDConfig(k=3, router_input="entry", top_k=2), False)])
def test_export_loads_without_modetune_and_matches(tmp_path, tiny_model_dir, config, merge, capsys):
    from modetune.loading import load_source

    adapter = _adapter(tmp_path, tiny_model_dir, config)
    out = tmp_path / "exported"
    assert main(["export", "--adapter", str(adapter), "--output", str(out), *([] if merge else ["--no-merge"])]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "mod_model.safetensors", "modeling_mod.py", "tokenizer.json"} <= files
    assert ("lora" in files) != merge
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["auto_map"] == {"AutoConfig": "modeling_mod.MoDEnsembleConfig",
                                       "AutoModelForCausalLM": "modeling_mod.MoDForCausalLM"}
    assert config_json["model_type"] == "modetune_mod" and config_json["mod_ensemble"]["model_type"] == "llama"
    source = (out / "modeling_mod.py").read_text()
    assert not any(line.lstrip().startswith(("import modetune", "from modetune", "from .")) for line in source.splitlines())

    mod, tokenizer, _ = load_source(None, str(adapter))  # the MoDModel it came from (recorded base)
    ids = torch.tensor([[1, 17, 23, 99, 314, 2718, 5, 8], [1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        expected = mod(input_ids=ids).logits
        expected_gen = mod.generate(input_ids=ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "m")}
    result_file = tmp_path / "result.safetensors"
    done = subprocess.run([sys.executable, "-c", LOADER, str(out), json.dumps(ids.tolist()), str(result_file)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    if not merge:  # LoRA kept apart needs peft, and says so (in the folder's README too)
        assert done.returncode != 0 and "needs peft" in done.stderr, done.stderr[-3000:]
        assert "peft" in (out / "README.md").read_text()
        env.pop("PYTHONPATH", None)
        done = subprocess.run([sys.executable, "-c", LOADER.replace('("peft", "modetune")', '("modetune",)'), str(out),
                               json.dumps(ids.tolist()), str(result_file)],
                              capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = load_file(str(result_file))
    difference = (result["logits"] - expected).abs().max().item()
    assert difference < TOLERANCE, difference
    # the ensemble matters: the exported logits are not the base model's
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        assert (plain(ids).logits - expected).abs().max() > 100 * TOLERANCE
    assert torch.equal(result["generated"], expected_gen)


def test_export_needs_a_mod_adapter(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", "--adapter", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 1
    assert "holds neither mod_config.json" in capsys.readouterr().err  # the adapter's check, before export's


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_the_export_runs_the_ensemble_module_itself_on_three_architectures(tmp_path, arch, tokenizer):
    """The folder's ``modeling_mod.py`` is ``mod/ensemble.py`` byte for byte, so the exported model has
    what MoDModel has: soft-capping (Gemma-2), a tensor ``logits_to_keep``, a float32 router under
    autocast; its logits equal the MoDModel's."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from modetune.export import export_model
    from modetune.mod import ensemble
    from tiny import tiny_model

    mod = perturb(get_mod_model(lora(tiny_model(arch), k=3), MoDConfig(k=3, router_input="entry")))
    assert (mod.softcap is not None) == (arch == "gemma2")
    out = export_model(mod, tokenizer, tmp_path / arch)
    assert (out / "modeling_mod.py").read_bytes() == Path(ensemble.__file__).read_bytes()
    loaded = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    assert json.loads((out / "config.json").read_text()).get("final_logit_softcapping") == mod.softcap
    ids = torch.tensor([[1, 17, 23, 50, 31, 27, 5, 8], [1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        expected = mod(input_ids=ids).logits
        got = loaded(ids).logits
        assert (got - expected).abs().max() < TOLERANCE
        if arch == "gemma2":  # capped: no logit beyond the cap, as in the ensemble
            assert got.abs().max() <= mod.softcap
        positions = torch.tensor([1, 5])
        torch.testing.assert_close(loaded(ids, logits_to_keep=positions).logits, got[:, positions], rtol=0, atol=1e-5)
        torch.testing.assert_close(mod(input_ids=ids, logits_to_keep=positions).logits, expected[:, positions],
                                   rtol=0, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = loaded(ids).logits
            reference = mod(input_ids=ids).logits
        assert loaded.mod_ensemble.stash == {} or set(loaded.mod_ensemble.stash) <= {"router_weights", "logits_to_keep"}
        assert loaded.mod_ensemble.stash["router_weights"].dtype == torch.float32  # the router stays float32
        assert (under_autocast.float() - reference.float()).abs().max() < 0.1


def test_without_trust_remote_code_the_export_refuses_to_load(tmp_path, tiny_model_dir):
    """Its model type is its own: plain transformers cannot mistake the folder for the base model
    (which would be the final member alone) and asks for trust_remote_code."""
    from transformers import AutoModelForCausalLM

    adapter = _adapter(tmp_path, tiny_model_dir, MoDConfig(k=3))
    out = tmp_path / "exported"
    assert main(["export", "--adapter", str(adapter), "--output", str(out)]) == 0
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=False)


def test_final_member_export_is_a_plain_model_equal_to_member_last(tmp_path, tiny_model_dir, capsys):
    """``--final-member``: a standard folder (no remote code, no ensemble) that
    ``AutoModelForCausalLM`` loads without flags, with the logits of ``--member -1``."""
    from transformers import AutoModelForCausalLM

    from modetune.eval.members import forced_member
    from modetune.loading import load_source

    adapter = _adapter(tmp_path, tiny_model_dir, MoDConfig(k=3))
    out = tmp_path / "plain"
    assert main(["export", "--adapter", str(adapter), "--output", str(out), "--final-member"]) == 0
    assert "final member alone" in capsys.readouterr().out
    files = {p.name for p in out.iterdir()}
    assert "modeling_mod.py" not in files and "mod_model.safetensors" not in files
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["model_type"] == "llama" and "auto_map" not in config_json
    assert "from_pretrained(folder)" in (out / "README.md").read_text()

    mod, _, _ = load_source(None, str(adapter))
    ids = torch.tensor([[1, 17, 23, 99, 314, 2718, 5, 8]])
    with torch.no_grad(), forced_member(mod, -1):
        expected = mod(input_ids=ids).logits
    with torch.no_grad():
        ensemble = mod(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(out))(ids).logits
    assert (got - expected).abs().max() < TOLERANCE
    assert (got - ensemble).abs().max() > 100 * TOLERANCE  # it is not the ensemble
    assert main(["export", "--adapter", str(adapter), "--output", str(tmp_path / "x"), "--final-member",
                 "--no-merge"]) == 1


PUBLISHED = ("README.md", "config.json", "adapter_config.json", "tokenizer_config.json", "generation_config.json",
             "chat_template.jinja", "special_tokens_map.json")
LLAMA_CPP = Path(__file__).parent / "data" / "llama_cpp_text_architectures.txt"


def _llama_cpp_architectures() -> set[str]:
    return {line.strip() for line in LLAMA_CPP.read_text().splitlines() if line.strip() and not line.startswith("#")}


def _converter_architecture(config: dict) -> str:
    """The architecture llama.cpp's converter reads for a text model (conversion/base.py,
    get_model_architecture): ``architectures[0]``, or the text config's when it has one."""
    arch = (config.get("architectures") or [None])[0]
    text = config.get("text_config") or {}
    return text["architectures"][0] if text.get("architectures") else arch


def test_engines_cannot_mistake_the_ensemble_for_its_base(tmp_path, tiny_model_dir):
    """The ensemble's config names an architecture of its own, which llama.cpp's converter registry
    (committed from its source) lacks, so the converter stops instead of writing the final member;
    the final member's folder names the base architecture, which the converter has."""
    adapter = _adapter(tmp_path, tiny_model_dir, MoDConfig(k=3))
    assert main(["export", "--adapter", str(adapter), "--output", str(tmp_path / "ens")]) == 0
    assert main(["export", "--adapter", str(adapter), "--output", str(tmp_path / "final"), "--final-member"]) == 0
    registry = _llama_cpp_architectures()
    ensemble_config = json.loads((tmp_path / "ens" / "config.json").read_text())
    final_config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert ensemble_config["architectures"] == ["MoDForCausalLM"]
    assert _converter_architecture(ensemble_config) not in registry
    assert _converter_architecture(final_config) == "LlamaForCausalLM" and "LlamaForCausalLM" in registry
    assert ensemble_config["mod_ensemble"]["architecture"] == "LlamaForCausalLM"  # what the loader builds


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_save_pretrained_of_a_loaded_ensemble_writes_the_ensemble_back(tmp_path, tiny_model_dir):
    """Load the export, ``save_pretrained`` it: the new folder reloads as the same ensemble (same
    logits), still refuses to load without remote code, and a second round trip is byte-stable;
    an export that keeps LoRA apart refuses to be re-saved instead of writing LoRA alone."""
    from transformers import AutoModelForCausalLM

    adapter = _adapter(tmp_path, tiny_model_dir, MoDConfig(k=3))
    out = tmp_path / "exported"
    assert main(["export", "--adapter", str(adapter), "--output", str(out)]) == 0
    ids = torch.tensor([[1, 17, 23, 99, 314, 2718, 5, 8]])
    loaded = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    expected = _logits(loaded, ids)
    loaded.save_pretrained(str(tmp_path / "again"))
    assert "mod_ensemble.router.weight" in dict(loaded.named_parameters())  # the model keeps its ensemble
    torch.testing.assert_close(_logits(loaded, ids), expected, rtol=0, atol=0)
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "again"), trust_remote_code=True)
    torch.testing.assert_close(_logits(again, ids), expected, rtol=0, atol=0)
    saved = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert not any(name.startswith("mod_ensemble") for name in saved)  # the base weights alone
    for name in ("mod_model.safetensors", "modeling_mod.py"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    from modetune.utils.publish import portable_config  # what export adds for older readers (rope_theta)

    assert portable_config(json.loads((tmp_path / "again" / "config.json").read_text())) == \
        json.loads((out / "config.json").read_text())
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "again"))
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert (_logits(plain, ids) - expected).abs().max() > 100 * TOLERANCE  # the ensemble, not the base

    kept = tmp_path / "kept"
    assert main(["export", "--adapter", str(adapter), "--output", str(kept), "--no-merge"]) == 0
    with_lora = AutoModelForCausalLM.from_pretrained(str(kept), trust_remote_code=True)
    with pytest.raises(NotImplementedError, match="--no-merge"):
        with_lora.save_pretrained(str(tmp_path / "lora-only"))
    assert not (tmp_path / "lora-only").exists()


def test_published_files_are_portable_and_hold_nothing_local(tmp_path, tiny_model_dir):
    """Every file modetune writes for publishing (the ensemble and final-member exports, the
    adapter) reads the same under transformers 4.x: a top-level rope_theta beside rope_parameters,
    a tokenizer class 4.x has; no local path and no local_files_only anywhere; the folder still
    loads under transformers 5 with the same logits as before the rewrite."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modetune.utils.publish import portable_config, portable_tokenizer_config

    adapter = _adapter(tmp_path, tiny_model_dir, MoDConfig(k=3))
    folders = {"ens": [], "final": ["--final-member"], "kept": ["--no-merge"]}
    for name, flags in folders.items():
        assert main(["export", "--adapter", str(adapter), "--output", str(tmp_path / name), *flags]) == 0
    local = (str(tmp_path), str(tiny_model_dir), str(Path.home()), "local_files_only", "is_local")
    for folder in [tmp_path / name for name in folders] + [adapter]:
        for path in folder.rglob("*"):  # the files a user publishes (base_model.json is modetune's own record)
            if path.name in PUBLISHED:
                text = path.read_text()
                assert not any(token in text for token in local), (path, [t for t in local if t in text])
        for path in folder.rglob("config.json"):
            config = json.loads(path.read_text())
            if "rope_parameters" in config:
                assert config["rope_theta"] == config["rope_parameters"]["rope_theta"], path
        for path in folder.rglob("tokenizer_config.json"):
            assert json.loads(path.read_text())["tokenizer_class"] == "PreTrainedTokenizerFast", path
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] is None  # unknown
    ids = torch.tensor([[1, 17, 23, 99, 314, 2718, 5, 8]])
    final = tmp_path / "final"
    before = tmp_path / "before"  # the same folder as transformers 5 wrote it
    before.mkdir()
    for path in final.iterdir():
        (before / path.name).write_bytes(path.read_bytes())
    config = json.loads((before / "config.json").read_text())
    (before / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "rope_theta"}))
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(str(final)), ids),
                               _logits(AutoModelForCausalLM.from_pretrained(str(before)), ids), rtol=0, atol=0)
    text = "What is 12 * 7? Ünïcode"
    assert AutoTokenizer.from_pretrained(str(final))(text).input_ids == \
        AutoTokenizer.from_pretrained(str(tiny_model_dir))(text).input_ids
    # non-default rope types and per-attention-type parameters, as transformers 4.x names them
    scaled = portable_config({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})
    assert scaled["rope_theta"] == 5e5 and scaled["rope_scaling"] == {"rope_type": "llama3", "type": "llama3",
                                                                       "factor": 8.0}
    gemma = portable_config({"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                                 "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}})
    assert (gemma["rope_theta"], gemma["rope_local_base_freq"]) == (1e6, 1e4)
    assert portable_tokenizer_config({"tokenizer_class": "GPT2Tokenizer", "local_files_only": True}) == \
        {"tokenizer_class": "GPT2Tokenizer"}


def test_the_default_model_publishes_its_hub_name(tmp_path):
    from modetune.utils.models import DEFAULT_MODEL, cache_dir
    from modetune.utils.publish import hub_name, make_portable

    assert hub_name(str(cache_dir() / DEFAULT_MODEL)) == "HuggingFaceTB/SmolLM2-135M-Instruct" == hub_name("default")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(cache_dir())}))
    make_portable(tmp_path, str(cache_dir() / DEFAULT_MODEL))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
