"""Helper of benchmarks/serve_check.sh: one subcommand per engine, each run by the Python of the
environment it checks (the project's transformers 5, llama-cpp-python, transformers 4.57.6 and the
GGUF converter, optimum-onnx + ONNX Runtime). Every subcommand reads and writes JSON under the work
folder (default /tmp/serve-check) and never imports modetune, except ``reference`` (the project venv).

  reference  prompts rendered as `modetune generate` renders them; greedy ids and last-position logits
             (transformers 5): the yardstick every engine is compared with
  convert    the GGUF converter of llama-cpp-python's source: final member -> f32 and f16 GGUF (timed);
             the ensemble export must be refused
  registry   the converter's accepted text architectures (TEXT_MODEL_MAP keys, via ast) against
             tests/data/llama_cpp_text_architectures.txt
  llama      both GGUF files in llama.cpp (llama_cpp.Llama): greedy ids and last-position logits
  hf4        the exported folder under transformers 4.57.6: tokenizer class, rope_theta, ids, logits
  onnx       optimum-cli export onnx, then ONNX Runtime (ORTModelForCausalLM): ids and logits
  report     benchmarks/results/serve_check.json and serve_check.md from all of the above
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_NEW_TOKENS = 32
# Instructions in the adapter's own prompt style (the quick config trains on arithmetic questions).
PROMPTS = [
    "What is 17 + 25?",
    "A farmer has 12 cows and buys 7 more. How many cows does he have now?",
    "Compute 9 * 8 - 5.",
    "If a train travels 60 km per hour for 3 hours, how far does it go?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
]
LOAD_NOTE = ("Times were measured on a 2-core machine with another 2-process job (a modetune experiment) "
             "running beside it the whole time: they are not idle timings.")


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"[serve-check] wrote {path}", file=sys.stderr)


def _versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _compare(reference: dict, ref_dir: Path, got: list[dict]) -> dict:
    """Per-prompt comparison of an engine's ids and last-position logits with the reference's."""
    import numpy as np

    rows, matches, diffs = [], 0, []
    for i, (ref, row) in enumerate(zip(reference["prompts"], got)):
        ref_logits = np.load(ref_dir / f"logits_{i}.npy")
        diff = float(np.abs(np.asarray(row.pop("logits"), dtype=np.float64) - ref_logits).max())
        same = row["generated_ids"] == ref["generated_ids"]
        first = next((j for j, (a, b) in enumerate(zip(row["generated_ids"], ref["generated_ids"])) if a != b),
                     None if same else min(len(row["generated_ids"]), len(ref["generated_ids"])))
        matches += same
        diffs.append(diff)
        rows.append({"prompt": ref["prompt"], "ids_match": same, "first_divergence": first,
                     "max_abs_logit_diff": diff, "argmax_match": row.pop("argmax") == ref["argmax"], **row})
    return {"prompts": len(rows), "exact_matches": matches, "max_abs_logit_diff": max(diffs),
            "per_prompt": rows}


# --------------------------------------------------------------------------------------------- reference
def cmd_reference(args) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modetune.eval.generate import resolve_style, wrap_prompt

    folder, work = Path(args.model), Path(args.work)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # `modetune generate --adapter ADAPTER` resolves style `auto` from the adapter's prompt.json /
    # train_config.json, then wraps each prompt with wrap_prompt: the same two calls here.
    style = resolve_style("auto", tokenizer, args.adapter)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t
    eos = model.generation_config.eos_token_id
    eos = sorted({eos} if isinstance(eos, int) else set(eos or []))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ref_dir = work / "reference"
    ref_dir.mkdir(parents=True, exist_ok=True)
    rows, t = [], time.perf_counter()
    for i, prompt in enumerate(PROMPTS):
        text = wrap_prompt(tokenizer, prompt, style)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1].float().numpy()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW_TOKENS,
                                 do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad)
        np.save(ref_dir / f"logits_{i}.npy", logits.astype(np.float64))
        generated = out[0, ids.shape[1]:].tolist()
        rows.append({"prompt": prompt, "text": text, "input_ids": ids[0].tolist(), "generated_ids": generated,
                     "argmax": int(logits.argmax()),
                     "completion": tokenizer.decode(generated, skip_special_tokens=True)})
    config = _read(folder / "config.json")
    _write(ref_dir / "reference.json", {
        "engine": "transformers 5 (project venv), float32", "model": str(folder), "adapter": args.adapter,
        "prompt_style": style, "max_new_tokens": MAX_NEW_TOKENS, "eos_token_ids": eos, "pad_token_id": pad,
        "architectures": config.get("architectures"), "load_s": load_s, "run_s": time.perf_counter() - t,
        "versions": _versions("transformers", "torch", "modetune", "tokenizers"), "prompts": rows})


# --------------------------------------------------------------------------------------------- convert
def _convert(converter: Path, folder: Path, outfile: Path, outtype: str, log: Path) -> tuple[int, float]:
    t = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run([sys.executable, str(converter), str(folder), "--outfile", str(outfile),
                             "--outtype", outtype], stdout=fh, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t


def cmd_convert(args) -> None:
    converter, work = Path(args.converter), Path(args.work)
    gguf_dir, logs = work / "gguf", work / "logs"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    result = {"converter": str(converter), "outputs": {}, "versions": _versions("transformers", "torch", "gguf",
                                                                                  "numpy", "sentencepiece")}
    # The converter puts its own gguf-py first on sys.path (unless NO_LOCAL_GGUF): record that copy's version.
    local = converter.parent / "gguf-py" / "pyproject.toml"
    if local.is_file() and "NO_LOCAL_GGUF" not in os.environ:
        import tomllib

        result["versions"]["gguf (vendored gguf-py the converter imports)"] = (
            tomllib.loads(local.read_text())["project"]["version"])
    for outtype in ("f32", "f16"):
        outfile = gguf_dir / f"final-{outtype}.gguf"
        outfile.unlink(missing_ok=True)
        rc, seconds = _convert(converter, Path(args.model), outfile, outtype, logs / f"convert-{outtype}.log")
        result["outputs"][outtype] = {"rc": rc, "seconds": seconds, "file": str(outfile),
                                      "bytes": outfile.stat().st_size if outfile.is_file() else None,
                                      "warnings": [line for line in (logs / f"convert-{outtype}.log").read_text()
                                                   .splitlines() if line.startswith("WARNING")],
                                      "last_line": (logs / f"convert-{outtype}.log").read_text().splitlines()[-1]}
        print(f"[serve-check] convert {outtype}: rc {rc} in {seconds:.1f} s", file=sys.stderr)
    # The ensemble export (architectures ["MoDForCausalLM"]) must be refused, naming the architecture.
    outfile = gguf_dir / "ensemble.gguf"
    outfile.unlink(missing_ok=True)
    rc, seconds = _convert(converter, Path(args.ensemble), outfile, "f32", logs / "convert-ensemble.log")
    lines = (logs / "convert-ensemble.log").read_text().splitlines()
    named = [line for line in lines if "MoDForCausalLM" in line]
    arch = _read(Path(args.ensemble) / "config.json").get("architectures")
    result["ensemble"] = {"architectures": arch, "rc": rc, "seconds": seconds, "gguf_written": outfile.exists(),
                          "error_line": named[-1] if named else (lines[-1] if lines else ""),
                          "refused": rc != 0 and bool(named) and not outfile.exists()}
    print(f"[serve-check] ensemble: rc {rc}: {result['ensemble']['error_line']}", file=sys.stderr)
    _write(work / "results" / "convert.json", result)


# --------------------------------------------------------------------------------------------- registry
def cmd_registry(args) -> None:
    source = Path(args.conversion).read_text(encoding="utf-8")
    keys = None
    for node in ast.parse(source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP":
            keys = {ast.literal_eval(k) for k in node.value.keys}
    if keys is None:
        raise SystemExit(f"TEXT_MODEL_MAP not found in {args.conversion}")
    committed_path = ROOT / "tests" / "data" / "llama_cpp_text_architectures.txt"
    committed = {line.strip() for line in committed_path.read_text().splitlines()
                 if line.strip() and not line.startswith("#")}
    result = {"source": args.conversion, "committed": str(committed_path.relative_to(ROOT)),
              "converter_count": len(keys), "committed_count": len(committed),
              "only_in_converter": sorted(keys - committed), "only_in_committed": sorted(committed - keys),
              "identical": keys == committed, "LlamaForCausalLM_accepted": "LlamaForCausalLM" in keys,
              "MoDForCausalLM_accepted": "MoDForCausalLM" in keys}
    print(f"[serve-check] registry: {len(keys)} in the converter, {len(committed)} committed, "
          f"identical={result['identical']}", file=sys.stderr)
    _write(Path(args.work) / "results" / "registry.json", result)


# --------------------------------------------------------------------------------------------- llama.cpp
def cmd_llama(args) -> None:
    import llama_cpp
    import numpy as np

    work = Path(args.work)
    reference = _read(work / "reference" / "reference.json")
    eos = set(reference["eos_token_ids"])
    result = {"engine": "llama.cpp via llama-cpp-python", "versions": {
        **_versions("llama_cpp_python", "numpy"), "llama_cpp.__version__": llama_cpp.__version__},
        "dtypes": {}}
    # llama.cpp keeps its KV cache in f16 by default (as a server runs it); the f32 GGUF is also run with
    # an f32 cache, which isolates the weights' conversion from the cache's rounding.
    for name, dtype, kv_type, kv_name in (("f32", "f32", llama_cpp.GGML_TYPE_F16, "f16"),
                                          ("f32-kv-f32", "f32", llama_cpp.GGML_TYPE_F32, "f32"),
                                          ("f16", "f16", llama_cpp.GGML_TYPE_F16, "f16")):
        path = work / "gguf" / f"final-{dtype}.gguf"
        t = time.perf_counter()
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=2, logits_all=True,
                              seed=0, verbose=False, type_k=kv_type, type_v=kv_type)
        load_s, t = time.perf_counter() - t, time.perf_counter()
        rows, tokenizer_matches = [], 0
        for ref in reference["prompts"]:
            ids = ref["input_ids"]
            # llama.cpp's own tokenizer on the same text (special tokens parsed, no BOS added: as generate).
            own = llm.tokenize(ref["text"].encode("utf-8"), add_bos=False, special=True)
            tokenizer_matches += own == ids
            generated = []
            # The reference's token ids go in, so the ids compared are the model's alone; greedy = temp 0.
            for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                      reset=True):
                generated.append(int(token))
                if token in eos or len(generated) >= MAX_NEW_TOKENS:
                    break
            logits = np.array(llm.scores[len(ids) - 1], dtype=np.float64)  # logits_all: every position kept
            rows.append({"generated_ids": generated, "logits": logits, "argmax": int(logits.argmax()),
                         "llama_cpp_tokenizer_match": own == ids,
                         "completion": llm.detokenize([g for g in generated if g not in eos]).decode(
                             "utf-8", errors="replace")})
        run_s = time.perf_counter() - t
        compared = _compare(reference, work / "reference", rows)
        result["dtypes"][name] = {"gguf": str(path), "gguf_dtype": dtype, "kv_cache": kv_name,
                                  "load_s": load_s, "run_s": run_s,
                                   "tokenizer_matches": tokenizer_matches, **compared}
        n = compared["prompts"]
        print(f"[serve-check] llama.cpp {dtype} GGUF, {kv_name} KV cache: {compared['exact_matches']}/{n} exact, "
              f"max |dlogit| {compared['max_abs_logit_diff']:.3g}, llama.cpp tokenizer "
              f"{tokenizer_matches}/{n}", file=sys.stderr)
        del llm
    _write(work / "results" / "llama.json", result)


# --------------------------------------------------------------------------------------------- hf 4.57
def _hf_greedy(model, reference, torch) -> list[dict]:
    rows = []
    for ref in reference["prompts"]:
        ids = torch.tensor([ref["input_ids"]])
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            logits = out.logits[0, -1].float().numpy()
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                                       eos_token_id=reference["eos_token_ids"],
                                       pad_token_id=reference["pad_token_id"])[0, ids.shape[1]:].tolist()
        rows.append({"generated_ids": generated, "logits": logits, "argmax": int(logits.argmax())})
    return rows


def cmd_hf4(args) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = Path(args.work)
    reference = _read(work / "reference" / "reference.json")
    t = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    load_s, t = time.perf_counter() - t, time.perf_counter()
    tokenizer_matches = sum(tokenizer(r["text"], add_special_tokens=False)["input_ids"] == r["input_ids"]
                            for r in reference["prompts"])
    rows = _hf_greedy(model, reference, torch)
    run_s = time.perf_counter() - t
    config = model.config
    compared = _compare(reference, work / "reference", rows)
    result = {"engine": f"transformers {transformers.__version__} (float32)",
              "versions": _versions("transformers", "torch", "tokenizers"),
              "tokenizer_class": type(tokenizer).__name__, "model_class": type(model).__name__,
              "rope_theta": getattr(config, "rope_theta", None), "rope_scaling": getattr(config, "rope_scaling", None),
              "file_rope_theta": _read(Path(args.model) / "config.json").get("rope_theta"),
              "file_rope_parameters": _read(Path(args.model) / "config.json").get("rope_parameters"),
              "tokenizer_matches": tokenizer_matches, "load_s": load_s, "run_s": run_s, **compared}
    print(f"[serve-check] transformers {transformers.__version__}: {compared['exact_matches']}/"
          f"{compared['prompts']} exact, max |dlogit| {compared['max_abs_logit_diff']:.3g}, "
          f"{result['tokenizer_class']}, rope_theta {result['rope_theta']}", file=sys.stderr)
    _write(work / "results" / "hf4.json", result)


# --------------------------------------------------------------------------------------------- ONNX
def cmd_onnx(args) -> None:
    work = Path(args.work)
    onnx_dir, log = work / "onnx", work / "logs" / "onnx-export.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cli = Path(sys.executable).parent / "optimum-cli"
    command = [str(cli), "export", "onnx", "--model", args.model, "--task", "text-generation-with-past",
               str(onnx_dir)]
    t = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT).returncode
    export_s = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"optimum-cli export onnx failed (rc {rc}); see {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-15:]))
    import onnxruntime
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    reference = _read(work / "reference" / "reference.json")
    t = time.perf_counter()
    model = ORTModelForCausalLM.from_pretrained(onnx_dir, provider="CPUExecutionProvider")
    load_s, t = time.perf_counter() - t, time.perf_counter()
    rows = _hf_greedy(model, reference, torch)
    run_s = time.perf_counter() - t
    compared = _compare(reference, work / "reference", rows)
    result = {"engine": "ONNX Runtime (optimum.onnxruntime.ORTModelForCausalLM), float32",
              "export_command": " ".join(command), "export_s": export_s, "load_s": load_s, "run_s": run_s,
              "onnx_files": sorted(p.name for p in onnx_dir.iterdir() if p.suffix in (".onnx", ".onnx_data")),
              "providers": model.providers if hasattr(model, "providers") else None,
              "versions": {**_versions("optimum-onnx", "optimum", "onnxruntime", "onnx", "transformers", "torch"),
                           "onnxruntime.__version__": onnxruntime.__version__},
              # optimum's own check of the export on dummy inputs (atol 1e-5), as the CLI printed it
              "optimum_validation": [line.strip() for line in log.read_text().splitlines()
                                     if line.startswith(("The ONNX export succeeded", "- logits:"))],
              **compared}
    print(f"[serve-check] ONNX Runtime: {compared['exact_matches']}/{compared['prompts']} exact, "
          f"max |dlogit| {compared['max_abs_logit_diff']:.3g}", file=sys.stderr)
    _write(work / "results" / "onnx.json", result)


# --------------------------------------------------------------------------------------------- report
def _maybe(path: Path):
    return _read(path) if path.is_file() else None


def cmd_report(args) -> None:
    work, envs = Path(args.work), Path(args.envs)
    stages = {p.stem: _read(p) for p in sorted((work / "stages").glob("*.json"))}
    builds = {p.parent.name: _read(p) for p in sorted(envs.glob("*/.serve-check-built.json"))}
    reference = _read(work / "reference" / "reference.json")
    convert, llama = _maybe(work / "results" / "convert.json"), _maybe(work / "results" / "llama.json")
    hf4, onnx = _maybe(work / "results" / "hf4.json"), _maybe(work / "results" / "onnx.json")
    registry = _maybe(work / "results" / "registry.json")
    failures = {name: s for name, s in stages.items() if s.get("rc") != 0}
    started = float(args.started) if args.started else None
    for build in builds.values():
        build["reused_this_run"] = bool(started and datetime.fromisoformat(build["built"]).timestamp() < started)
    model_times = {}
    if (work / "results" / "model_times.txt").is_file():
        for line in (work / "results" / "model_times.txt").read_text().splitlines():
            key, seconds = line.split()
            model_times[key] = float(seconds)

    def env_info(*names):
        return {"envs": list(names), "env_build_s": {n: builds[n]["seconds"] for n in names if n in builds}}

    engines = {}
    if llama:
        for r in llama["dtypes"].values():
            dtype = r["gguf_dtype"]
            kv = "f16 KV cache (default)" if r["kv_cache"] == "f16" else f"{r['kv_cache']} KV cache"
            engines[f"llama.cpp {dtype} GGUF, {kv}"] = {
                "prompts": r["prompts"], "exact_matches": r["exact_matches"],
                "max_abs_logit_diff": r["max_abs_logit_diff"], "tokenizer_matches": r["tokenizer_matches"],
                "conversion_s": convert["outputs"][dtype]["seconds"] if convert else None,
                "gguf_bytes": convert["outputs"][dtype]["bytes"] if convert else None,
                "load_s": r["load_s"], "run_s": r["run_s"], **env_info("llama-cpp", "convert"),
                "versions": {**llama["versions"], "gguf (converter)": (convert or {}).get("versions", {}).get(
                    "gguf (vendored gguf-py the converter imports)"),
                    "transformers (converter)": (convert or {}).get("versions", {}).get("transformers"),
                    "torch (converter)": (convert or {}).get("versions", {}).get("torch")},
                "per_prompt": r["per_prompt"]}
    if hf4:
        engines[f"transformers {hf4['versions']['transformers']} float32"] = {
            k: hf4[k] for k in ("prompts", "exact_matches", "max_abs_logit_diff", "tokenizer_matches", "load_s",
                                "run_s", "tokenizer_class", "rope_theta", "versions", "per_prompt")}
        engines[f"transformers {hf4['versions']['transformers']} float32"].update(env_info("convert"))
    if onnx:
        engines["ONNX Runtime float32"] = {
            k: onnx[k] for k in ("prompts", "exact_matches", "max_abs_logit_diff", "export_s", "load_s", "run_s",
                                 "optimum_validation", "versions", "per_prompt")}
        engines["ONNX Runtime float32"].update(conversion_s=onnx["export_s"], **env_info("onnx"))
    result = {
        "what": "The final-member export of modetune (modetune export --final-member) read by serving engines "
                "compared with transformers 5 reading the same folder: greedy token ids (exact match per "
                "prompt, stop at EOS or max_new_tokens) and the max abs difference of the logits at the "
                "prompt's last position.",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timing_note": LOAD_NOTE,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "model": {"folder": reference["model"], "adapter": reference["adapter"],
                  "architectures": reference["architectures"], "prompt_style": reference["prompt_style"],
                  "max_new_tokens": reference["max_new_tokens"], "eos_token_ids": reference["eos_token_ids"]},
        "reference": {"engine": reference["engine"], "versions": reference["versions"],
                      "load_s": reference["load_s"], "run_s": reference["run_s"],
                      "prompts": [{k: p[k] for k in ("prompt", "text", "input_ids", "generated_ids", "completion")}
                                  for p in reference["prompts"]]},
        "engines": engines,
        "transformers_4": None if not hf4 else {
            "tokenizer_class": hf4["tokenizer_class"], "model_class": hf4["model_class"],
            "rope_theta": hf4["rope_theta"], "rope_scaling": hf4["rope_scaling"],
            "config_file_rope_theta": hf4["file_rope_theta"], "config_file_rope_parameters": hf4["file_rope_parameters"]},
        "ensemble_refusal": convert["ensemble"] if convert else None,
        "converter_registry": registry,
        "versions": {
            "reference (project venv)": reference["versions"],
            "llama.cpp env": llama["versions"] if llama else None,
            "converter + transformers 4 env": {
                **(convert or {}).get("versions", {}),
                **({"transformers(hf4 run)": hf4["versions"]["transformers"]} if hf4 else {})},
            "onnx env": onnx["versions"] if onnx else None},
        "substitutions": [
            "torch: the converter's requirements pin torch==2.11.0 from the PyTorch CPU index, which is not reachable "
            "here; PyPI's torch 2.11.0 is the CUDA build (530.6 MB wheel plus the cuda-toolkit, cuDNN, NCCL wheels). "
            "The converter env uses torch==2.13.0 (+cpu wheel, resolved by pip from the machine's find-links) "
            "instead; every other pin of the file is kept (transformers==4.57.6 exactly)."],
        "model_stage_s": model_times or "reused the previous run's adapter and exports (SERVE_CHECK_REUSE_MODEL=1)",
        "env_builds_s": builds,
        "stages": stages,
        "failures": failures,
    }
    out_json, out_md = Path(args.out_json), Path(args.out_json).with_suffix(".md")
    _write(out_json, result)
    out_md.write_text(_markdown(result), encoding="utf-8")
    print(f"[serve-check] wrote {out_md}", file=sys.stderr)


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def _markdown(r: dict) -> str:
    lines = ["# serve_check: the final-member export in real serving engines", "",
             f"Generated by `bash benchmarks/serve_check.sh` on {r['created']}. Reference: {r['reference']['engine']} "
             f"(transformers {r['reference']['versions']['transformers']}, torch {r['reference']['versions']['torch']}) "
             f"reading `{r['model']['folder']}` ({', '.join(r['model']['architectures'] or [])}); "
             f"{len(r['reference']['prompts'])} prompts in the adapter's `{r['model']['prompt_style']}` style, "
             f"greedy, up to {r['model']['max_new_tokens']} new tokens.", "",
             f"**{r['timing_note']}**", "",
             "| engine / dtype | greedy ids identical | max abs logit diff (last prompt position) | engine tokenizer "
             "= HF ids | conversion s | load s | generate s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in r["engines"].items():
        tok = f"{e['tokenizer_matches']}/{e['prompts']}" if "tokenizer_matches" in e else "(HF tokenizer)"
        lines.append(f"| {name} | {e['exact_matches']}/{e['prompts']} | {e['max_abs_logit_diff']:.3g} | {tok} | "
                     f"{_fmt(e.get('conversion_s'))} | {_fmt(e.get('load_s'))} | {_fmt(e.get('run_s'))} |")
    lines += ["", "Conversion: GGUF by convert_hf_to_gguf.py, ONNX by `optimum-cli export onnx`; generate s: the "
              "greedy generations of all prompts plus the logits pass.", ""]
    if isinstance(r["model_stage_s"], dict):
        lines.append("Model (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["model_stage_s"].items()) + ".")
    lines += ["Environment builds (s): " + ", ".join(
        f"{k} {v['seconds']:.0f}{' (built by an earlier run, reused)' if v.get('reused_this_run') else ''}"
        for k, v in r["env_builds_s"].items()) + ".",
              "Stages (s): " + ", ".join(f"{k} {v['seconds']:.0f}" for k, v in r["stages"].items()) + ".", ""]
    if r["transformers_4"]:
        t = r["transformers_4"]
        lines += [f"transformers 4.57.6 instantiated `{t['tokenizer_class']}` / `{t['model_class']}` with "
                  f"rope_theta {t['rope_theta']} (config.json: rope_theta {t['config_file_rope_theta']}, "
                  f"rope_parameters {t['config_file_rope_parameters']}).", ""]
    onnx = r["engines"].get("ONNX Runtime float32")
    if onnx and onnx.get("optimum_validation"):
        lines += ["optimum's own export check (dummy inputs, atol 1e-5): " + " ".join(onnx["optimum_validation"]), ""]
    if r["ensemble_refusal"]:
        e = r["ensemble_refusal"]
        lines += [f"Ensemble export ({e['architectures']}) through the converter: refused={e['refused']}, "
                  f"exit code {e['rc']}, no GGUF written={not e['gguf_written']}:", "",
                  f"    {e['error_line']}", ""]
    if r["converter_registry"]:
        g = r["converter_registry"]
        lines += [f"Converter registry (TEXT_MODEL_MAP, {g['converter_count']} keys) vs "
                  f"`{g['committed']}` ({g['committed_count']}): "
                  + ("identical." if g["identical"] else
                     f"only in the converter {g['only_in_converter']}, only committed {g['only_in_committed']}."), ""]
    lines += ["Versions:", ""]
    for env, v in r["versions"].items():
        if v:
            lines.append(f"- {env}: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    lines += ["", "Substitutions: " + " ".join(r["substitutions"]), ""]
    if r["failures"]:
        lines += ["Failed stages:", ""] + [f"- {k}: rc {v['rc']}: {v.get('error', '')}" for k, v in r["failures"].items()]
    else:
        lines.append("Every stage succeeded.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/serve-check")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reference")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", required=True)
    p.set_defaults(func=cmd_reference)
    p = sub.add_parser("convert")
    p.add_argument("--converter", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--ensemble", required=True)
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("registry")
    p.add_argument("--conversion", required=True)
    p.set_defaults(func=cmd_registry)
    sub.add_parser("llama").set_defaults(func=cmd_llama)
    p = sub.add_parser("hf4")
    p.add_argument("--model", required=True)
    p.set_defaults(func=cmd_hf4)
    p = sub.add_parser("onnx")
    p.add_argument("--model", required=True)
    p.set_defaults(func=cmd_onnx)
    p = sub.add_parser("report")
    p.add_argument("--envs", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--started", default=None, help="this run's start (epoch seconds)")
    p.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
