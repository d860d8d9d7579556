"""Core benchmark: MoD training-step time and memory, and generation speed, vs LoRA and the base.

On the default model (SmolLM2-135M-Instruct), CPU, LoRA r=32 on layers 0..N-k-1, k = 3,
batch 4 x 256 tokens (every token labelled). Each variant runs in its own process (peak
memory is that process's peak RSS); all run in this one invocation, side by side, so the
ratios share the machine's state. Reports medians over ``--steps`` steps after warm-up.

    python benchmarks/bench_core.py [--steps 5] [--json out.json]

Also measured: the floor of the MoD/LoRA time ratio (a body-only step plus the head
projections timed alone: MoD with lambda > 0 needs k projections forward and k
input-gradient projections backward, LoRA one and one), and greedy generation tokens/s
of the MoD model vs the base model at batch 1 and batch 8.

Other settings (the GPU acceptance check, benchmarks/gpu_check.sh, and bench_7b.py use them):
``--model random --shape llama7b|tiny [--layers L]`` builds a Llama with random weights at
those shapes (LLaMA-7B: hidden 4096, intermediate 11008, 32 heads, vocabulary 32000, 32
layers unless ``--layers``); ``--dtype bfloat16`` holds the base weights in bf16;
``--device cuda`` runs there (peak memory is then ``torch.cuda.max_memory_allocated``);
``--batch``/``--length`` set the training batch; ``--variants``, ``--gen-batches``,
``--skip-floor``, ``--skip-generation`` choose what runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TRAIN_VARIANTS = {
    "lora_notk": dict(preset="lora_notk"),
    "lora_notk_mod": dict(preset="lora_notk_mod", distill_lambda=1.0),
    "lora_notk_mod_lambda0": dict(preset="lora_notk_mod", distill_lambda=0.0),
    "lora_notk_mod_naive": dict(preset="lora_notk_mod", distill_lambda=1.0, loss_impl="naive"),
}
K = 3
SHAPES = {  # random-weight Llama shapes (--model random)
    "llama7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                    num_hidden_layers=32, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                 num_hidden_layers=4, vocab_size=512),
}
# what one benchmark measures (set from the command line, passed to every child process)
SPEC = dict(model="default", shape="llama7b", layers=0, dtype="float32", device="cpu", batch=4, length=256)


def _sync() -> None:
    import torch

    if SPEC["device"] == "cuda":
        torch.cuda.synchronize()


def _peak_mib() -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size on CPU."""
    import torch

    if SPEC["device"] == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_base():
    """``(base model, tokenizer or None)`` for SPEC: the default model, or a random-weight Llama."""
    import torch

    dtype = getattr(torch, SPEC["dtype"])
    if SPEC["model"] == "default":
        from modetune.utils.models import load_model

        base, tokenizer = load_model("default", dtype=dtype)
        return base.to(SPEC["device"]), tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = dict(SHAPES[SPEC["shape"]])
    if SPEC["layers"]:
        shape["num_hidden_layers"] = SPEC["layers"]
    config = LlamaConfig(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(SPEC["device"]):
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return base.eval(), None


def _batch(vocab: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(100, vocab // 2), vocab, (SPEC["batch"], SPEC["length"]), generator=g).to(SPEC["device"])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def run_train(name: str, steps: int, warmup: int) -> dict:
    import torch

    from modetune import MoDConfig
    from modetune.mod.variants import build_variant

    spec = dict(TRAIN_VARIANTS[name])
    preset = spec.pop("preset")
    base, _ = load_base()
    model = build_variant(base, preset, MoDConfig(k=K, **spec), lora_r=32, lora_alpha=64, lora_dropout=0.05)
    model.train()
    batch = _batch(base.config.vocab_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rss_loaded = _peak_mib()
    times = []
    for step in range(warmup + steps):
        _sync()
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {"variant": name, "step_s": statistics.median(times), "times": times, "peak_mib": _peak_mib(),
            "after_load_mib": rss_loaded, "loss": float(loss)}


def run_floor(repeats: int) -> dict:
    """Body-only LoRA step, and one head projection forward / input-gradient backward."""
    import torch

    from modetune import MoDConfig
    from modetune.mod.surgery import find_parts
    from modetune.mod.variants import build_variant

    base, _ = load_base()
    model = build_variant(base, "lora_notk", MoDConfig(k=K), lora_r=32, lora_alpha=64, lora_dropout=0.05)
    model.train()
    parts = find_parts(model)
    batch = _batch(base.config.vocab_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    W = parts.head.weight.detach()
    tokens, device = SPEC["batch"] * SPEC["length"], SPEC["device"]
    probe = torch.randn(SPEC["batch"], SPEC["length"], parts.hidden_size, device=device, dtype=W.dtype)
    body = []
    for step in range(repeats + 1):
        _sync()
        start = time.perf_counter()
        hidden = parts.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        (hidden * probe).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        if step:
            body.append(time.perf_counter() - start)
    z = torch.randn(tokens, parts.hidden_size, device=device, dtype=W.dtype)
    g = torch.randn(tokens, W.shape[0], device=device, dtype=W.dtype)
    fwd, bwd = [], []
    for _ in range(repeats + 1):
        _sync()
        start = time.perf_counter()
        z @ W.T
        _sync()
        fwd.append(time.perf_counter() - start)
        start = time.perf_counter()
        g @ W
        _sync()
        bwd.append(time.perf_counter() - start)
    t_body, t_fwd, t_bwd = statistics.median(body), statistics.median(fwd[1:]), statistics.median(bwd[1:])
    floor = (t_body + K * (t_fwd + t_bwd)) / (t_body + t_fwd + t_bwd)
    return {"body_step_s": t_body, "head_forward_s": t_fwd, "head_backward_s": t_bwd, "floor_ratio": floor}


def run_generate(which: str, batch_size: int, new_tokens: int, repeats: int) -> dict:
    import torch

    from modetune import MoDConfig, get_mod_model

    model, tokenizer = load_base()
    if which == "mod":
        model = get_mod_model(model, MoDConfig(k=K))
    if tokenizer is not None:
        prompt = ["Below is an instruction. Add 17 and 25, then explain."] * batch_size
        inputs = tokenizer(prompt, return_tensors="pt").to(SPEC["device"])
        pad = tokenizer.pad_token_id
    else:  # random weights: a random prompt of 16 tokens
        ids = torch.randint(3, model.config.vocab_size, (batch_size, 16), generator=torch.Generator().manual_seed(0))
        inputs = {"input_ids": ids.to(SPEC["device"]), "attention_mask": torch.ones_like(ids).to(SPEC["device"])}
        pad = 0
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    times = []
    with torch.no_grad():
        model.generate(**inputs, **kwargs)  # warm-up
        for _ in range(repeats):
            _sync()
            start = time.perf_counter()
            model.generate(**inputs, **kwargs)
            _sync()
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"model": which, "batch": batch_size, "tokens_per_s": batch_size * new_tokens / seconds, "times": times}


def _child(kind: str, *args: str) -> dict:
    if SPEC.get("in_process"):  # tiny settings (tests): no process per measurement
        child = _parser().parse_args(["--child", kind, *args])
        return _dispatch(child)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, __file__, "--spec", json.dumps(SPEC), "--child", kind, *args],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--gen-rounds", type=int, default=2, help="child processes per generation measurement")
    parser.add_argument("--gen-batches", default="1,8", help="generation batch sizes, comma-separated")
    parser.add_argument("--model", choices=["default", "random"], default="default")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama7b", help="with --model random")
    parser.add_argument("--layers", type=int, default=0, help="decoder layers of a random model (0: the shape's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--variants", default=",".join(TRAIN_VARIANTS), help="training variants, comma-separated")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--in-process", action="store_true",
                        help="measure everything in this process (tiny checks only: peak memory is then shared)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser


def measure(args) -> dict:
    """Run every measurement in its own child process: ``{"train", "floor", "generation"}``."""
    train = {}
    for name in args.variants.split(","):
        print(f"training step: {name} ...", file=sys.stderr, flush=True)
        train[name] = _child("train", name, "--steps", str(args.steps), "--warmup", str(args.warmup))
    floor = None
    if not args.skip_floor:
        print("floor ...", file=sys.stderr, flush=True)
        floor = _child("floor", "--steps", str(args.steps))
    generation = {}
    for batch_size in ([] if args.skip_generation else [int(b) for b in args.gen_batches.split(",")]):
        for which in ("base", "mod") * args.gen_rounds:  # interleaved rounds
            print(f"generation: {which} batch {batch_size} ...", file=sys.stderr, flush=True)
            result = _child("generate", which, str(batch_size), "--new-tokens", str(args.new_tokens),
                            "--gen-repeats", str(args.gen_repeats))
            generation.setdefault(f"{which}-{batch_size}", []).append(result["tokens_per_s"])
    return {"train": train, "floor": floor, "generation": generation}


def report(results: dict) -> str:
    """The markdown tables of :func:`measure`'s results."""
    train, floor, generation = results["train"], results["floor"], results["generation"]
    memory = "peak CUDA memory" if SPEC["device"] == "cuda" else "peak RSS"
    rows = [f"{SPEC['model']} model{'' if SPEC['model'] == 'default' else ' (' + SPEC['shape'] + ')'}, "
            f"{SPEC['dtype']} weights, {SPEC['device']}, batch {SPEC['batch']} x {SPEC['length']} tokens", ""]
    ref = train.get("lora_notk")
    rows += [f"| variant | step (s, median) | time vs lora_notk | {memory} (MiB) | memory vs lora_notk |",
             "|---|---|---|---|---|"]
    for name, r in train.items():
        vs_time = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"
        vs_mem = f"{r['peak_mib'] / ref['peak_mib']:.2f}x" if ref else "-"
        rows.append(f"| {name} | {r['step_s']:.3f} | {vs_time} | {r['peak_mib']:.0f} | {vs_mem} |")
    if floor:
        rows += ["", f"Floor for lambda > 0 (body-only step {floor['body_step_s']:.3f} s, one head projection "
                     f"{floor['head_forward_s']:.4f} s forward + {floor['head_backward_s']:.4f} s backward): "
                     f"{floor['floor_ratio']:.2f}x"]
    batches = sorted({int(key.split("-")[1]) for key in generation})
    if batches:
        rows += ["", "| greedy generation | base tokens/s | MoD tokens/s | MoD / base |", "|---|---|---|---|"]
    results["generation_ratio"] = {}
    for batch_size in batches:
        base = statistics.median(generation[f"base-{batch_size}"])
        mod = statistics.median(generation[f"mod-{batch_size}"])
        results["generation_ratio"][batch_size] = mod / base
        rows.append(f"| batch {batch_size} | {base:.1f} | {mod:.1f} | {mod / base:.2f}x |")
    return "\n".join(rows)


def _dispatch(args) -> dict:
    """One child measurement (``--child KIND ...``)."""
    kind, *rest = args.child
    if kind == "train":
        return run_train(rest[0], args.steps, args.warmup)
    if kind == "floor":
        return run_floor(args.steps)
    return run_generate(rest[0], int(rest[1]), args.new_tokens, args.gen_repeats)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.spec:
        SPEC.update(json.loads(args.spec))
    else:
        SPEC.update(model=args.model, shape=args.shape, layers=args.layers, dtype=args.dtype, device=args.device,
                    batch=args.batch, length=args.length, in_process=args.in_process)
    if args.child:
        print(json.dumps(_dispatch(args)))
        return
    results = measure(args)
    results["markdown"] = report(results)
    results["spec"] = dict(SPEC)
    print(results["markdown"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
