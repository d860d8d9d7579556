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
BATCH, LENGTH, K = 4, 256, 3


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batch(vocab: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab, (BATCH, LENGTH), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def run_train(name: str, steps: int, warmup: int) -> dict:
    import torch

    from modetune import MoDConfig
    from modetune.models import load_model
    from modetune.variants import build_variant

    spec = dict(TRAIN_VARIANTS[name])
    preset = spec.pop("preset")
    base, _ = load_model("default")
    model = build_variant(base, preset, MoDConfig(k=K, **spec), lora_r=32, lora_alpha=64, lora_dropout=0.05)
    model.train()
    batch = _batch(base.config.vocab_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rss_loaded = _rss_mib()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {"variant": name, "step_s": statistics.median(times), "times": times, "peak_rss_mib": _rss_mib(),
            "rss_after_load_mib": rss_loaded, "loss": float(loss)}


def run_floor(repeats: int) -> dict:
    """Body-only LoRA step, and one head projection forward / input-gradient backward."""
    import torch

    from modetune import MoDConfig
    from modetune.models import load_model
    from modetune.surgery import find_parts
    from modetune.variants import build_variant

    base, _ = load_model("default")
    model = build_variant(base, "lora_notk", MoDConfig(k=K), lora_r=32, lora_alpha=64, lora_dropout=0.05)
    model.train()
    parts = find_parts(model)
    batch = _batch(base.config.vocab_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    probe = torch.randn(BATCH, LENGTH, parts.hidden_size)
    body = []
    for step in range(repeats + 1):
        start = time.perf_counter()
        hidden = parts.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        (hidden * probe).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            body.append(time.perf_counter() - start)
    W = parts.head.weight.detach()
    z = torch.randn(BATCH * LENGTH, parts.hidden_size)
    g = torch.randn(BATCH * LENGTH, W.shape[0])
    fwd, bwd = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        z @ W.T
        fwd.append(time.perf_counter() - start)
        start = time.perf_counter()
        g @ W
        bwd.append(time.perf_counter() - start)
    t_body, t_fwd, t_bwd = statistics.median(body), statistics.median(fwd[1:]), statistics.median(bwd[1:])
    floor = (t_body + K * (t_fwd + t_bwd)) / (t_body + t_fwd + t_bwd)
    return {"body_step_s": t_body, "head_forward_s": t_fwd, "head_backward_s": t_bwd, "floor_ratio": floor}


def run_generate(which: str, batch_size: int, new_tokens: int, repeats: int) -> dict:
    import torch

    from modetune import MoDConfig, get_mod_model
    from modetune.models import load_model

    model, tokenizer = load_model("default")
    if which == "mod":
        model = get_mod_model(model, MoDConfig(k=K))
    prompt = ["Below is an instruction. Add 17 and 25, then explain."] * batch_size
    inputs = tokenizer(prompt, return_tensors="pt")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    times = []
    with torch.no_grad():
        model.generate(**inputs, **kwargs)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(**inputs, **kwargs)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"model": which, "batch": batch_size, "tokens_per_s": batch_size * new_tokens / seconds, "times": times}


def _child(kind: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "train":
            result = run_train(rest[0], args.steps, args.warmup)
        elif kind == "floor":
            result = run_floor(args.steps)
        else:
            result = run_generate(rest[0], int(rest[1]), args.new_tokens, args.gen_repeats)
        print(json.dumps(result))
        return

    train = {}
    for name in TRAIN_VARIANTS:
        print(f"training step: {name} ...", file=sys.stderr, flush=True)
        train[name] = _child("train", name, "--steps", str(args.steps), "--warmup", str(args.warmup))
    print("floor ...", file=sys.stderr, flush=True)
    floor = _child("floor", "--steps", str(args.steps))
    generation = {}
    for batch_size in (1, 8):
        for which in ("base", "mod", "base", "mod"):  # interleaved, two rounds each
            print(f"generation: {which} batch {batch_size} ...", file=sys.stderr, flush=True)
            result = _child("generate", which, str(batch_size), "--new-tokens", str(args.new_tokens),
                            "--gen-repeats", str(args.gen_repeats))
            generation.setdefault((which, batch_size), []).append(result["tokens_per_s"])

    ref = train["lora_notk"]
    rows = ["| variant | step (s, median) | time vs lora_notk | peak RSS (MiB) | memory vs lora_notk |",
            "|---|---|---|---|---|"]
    for name, r in train.items():
        rows.append(f"| {name} | {r['step_s']:.2f} | {r['step_s'] / ref['step_s']:.2f}x | {r['peak_rss_mib']:.0f} | "
                    f"{r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x |")
    rows.append("")
    rows.append(f"Floor for lambda > 0 (body-only step {floor['body_step_s']:.2f} s, one head projection "
                f"{floor['head_forward_s']:.3f} s forward + {floor['head_backward_s']:.3f} s backward): "
                f"{floor['floor_ratio']:.2f}x")
    rows.append("")
    rows.append("| greedy generation | base tokens/s | MoD tokens/s | MoD / base |")
    rows.append("|---|---|---|---|")
    gen_ratios = {}
    for batch_size in (1, 8):
        base = statistics.median(generation[("base", batch_size)])
        mod = statistics.median(generation[("mod", batch_size)])
        gen_ratios[batch_size] = mod / base
        rows.append(f"| batch {batch_size} | {base:.1f} | {mod:.1f} | {mod / base:.2f}x |")
    report = "\n".join(rows)
    print(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"train": train, "floor": floor, "generation": {f"{w}-{b}": v for (w, b), v in generation.items()},
                       "generation_ratio": gen_ratios, "markdown": report}, handle, indent=2)


if __name__ == "__main__":
    main()
