"""Core benchmark: MoD training-step time and memory, and generation speed, vs LoRA and the base.

On the default model (SmolLM2-135M-Instruct), CPU, LoRA r=32 on layers 0..N-k-1, k = 3,
batch 4 x 256 tokens (every token labelled).

    python benchmarks/bench_core.py [--rounds 7] [--steps 1] [--warmup 2] [--json out.json]
    python benchmarks/bench_core.py --smoke          # a tiny random Llama, in-process: checks the script

How it measures, and why. The machine drifts by 10-30% over minutes, so variants timed one
after another (formerly: each in its own process, in turn) gave ratios that moved with the
drift (MoD/LoRA 1.27x in one idle run, 1.08x in the next). Now every variant's model is
built once, in one process, and warmed up (``--warmup`` steps, at least one); then come
``--rounds`` rounds, and round r times one measurement of every variant (the mean of
``--steps`` training steps) in an order rotated by r places, so that no variant always
runs first or after the same neighbour. A ratio (e.g. ``lora_notk_mod/lora_notk``) is
taken within each round, from measurements seconds apart, and reported as the median over
rounds with its min and max; each variant's time is its median over rounds (``step_s``,
with ``min_s``/``max_s`` and every round in ``times``). The floor (below) is one more
entry of the rotation, its ratio and ``lora_notk_mod``'s ratio over it taken per round too.
Greedy generation, base vs MoD, is measured the same way in a second process (both models
built and warmed up once; per round one measurement of each, the order alternated;
``--gen-rounds`` rounds, ``--rounds`` unless given; a measurement is the median of
``--gen-repeats`` generations).

Peak memory. On CUDA each variant's own peak is taken in the timing process
(``torch.cuda.max_memory_allocated`` during its build and warm-up, less what the variants
built before it hold). On CPU a process's peak RSS cannot be split between models, so each
variant also runs alone in a short child process (load, two steps: ``--skip-memory`` skips
these) whose peak RSS is its ``peak_mib``. With ``--in-process`` (tiny checks) everything
runs in this one process and ``peak_mib`` is the process's peak so far.

``--isolate`` times each round's measurements in alternating child processes instead (one
process per variant and round: load, warm up, ``--steps`` steps): slower, for when the
variants do not fit in memory together; a CUDA out-of-memory error in the one-process
timing falls back to it by itself.

Also measured: the floor of the MoD/LoRA time ratio (a body-only step plus the head
projections timed alone: MoD with lambda > 0 needs k projections forward and k
input-gradient projections backward, LoRA one and one; the body step reuses the
``lora_notk`` model when it is measured), and greedy generation tokens/s of the MoD model
vs the base model at batch 1 and batch 8.

Other settings (the GPU acceptance check, benchmarks/gpu_check.sh, and bench_7b.py use them):
``--model random --shape llama7b|tiny [--layers L]`` builds a Llama with random weights at
those shapes (LLaMA-7B: hidden 4096, intermediate 11008, 32 heads, vocabulary 32000, 32
layers unless ``--layers``); ``--dtype bfloat16`` holds the base weights in bf16;
``--device cuda`` runs there; ``--batch``/``--length`` set the training batch;
``--variants``, ``--gen-batches``, ``--skip-floor``, ``--skip-generation`` choose what runs.

JSON (``--json``): ``train`` {variant: ``step_s`` (median over rounds), ``min_s``, ``max_s``,
``times`` (per round), ``peak_mib``, ``after_load_mib``, ``loss``}; ``floor``
{``body_step_s``, ``head_forward_s``, ``head_backward_s``, ``floor_ratio`` (medians),
``rounds``}; ``generation`` {"base-B"/"mod-B": tokens/s per round}; ``generation_ratio``
{B: median per-round MoD/base}; ``ratios`` {name: {``median``, ``min``, ``max``,
``rounds``}} for each "<variant>/<reference>" step-time ratio, "floor",
"lora_notk_mod/lora_notk over floor" and "generation mod/base batch B"; ``reference``, ``rounds``,
``gen_rounds``, ``mode`` ("one process" or "alternating processes"), ``markdown``, ``spec``.
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
REFERENCE = "lora_notk"  # the variant the step-time ratios divide by (the first one measured if it is absent)
SHAPES = {  # random-weight Llama shapes (--model random)
    "llama7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                    num_hidden_layers=32, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                 num_hidden_layers=4, vocab_size=512),
}
# --smoke: a tiny random Llama, few rounds (checks the script end to end; its timings mean nothing)
SMOKE = dict(model="random", shape="tiny", batch=2, length=32, rounds=3, steps=1, warmup=1, gen_batches="1",
             new_tokens=4, gen_repeats=1, in_process=True)
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


def _rotated(items: list, r: int) -> list:
    """``items`` rotated by ``r`` places: round r's order."""
    shift = r % len(items)
    return items[shift:] + items[:shift]


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


class _Trainer:
    """One training variant: its model (built once), batch and optimizer; ``step()`` times one step."""

    def __init__(self, name: str):
        import torch

        from modetune import MoDConfig
        from modetune.mod.variants import build_variant

        spec = dict(TRAIN_VARIANTS[name])
        preset = spec.pop("preset")
        base, _ = load_base()
        self.name, self.vocab = name, base.config.vocab_size
        self.model = build_variant(base, preset, MoDConfig(k=K, **spec), lora_r=32, lora_alpha=64, lora_dropout=0.05)
        self.model.train()
        self.batch = _batch(self.vocab)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.loss = float("nan")

    def step(self) -> float:
        _sync()
        start = time.perf_counter()
        loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync()
        seconds = time.perf_counter() - start
        self.loss = float(loss)
        return seconds


class _Floor:
    """The floor of the MoD/LoRA ratio: a body-only LoRA step and one head projection forward and
    input-gradient backward, timed alone. Reuses ``trainer`` (a lora_notk one) when given."""

    def __init__(self, trainer: _Trainer | None = None):
        import torch

        from modetune.mod.surgery import find_parts

        trainer = trainer or _Trainer("lora_notk")
        self.trainer, self.parts = trainer, find_parts(trainer.model)
        W = self.parts.head.weight.detach()
        tokens, device, hidden = SPEC["batch"] * SPEC["length"], SPEC["device"], self.parts.hidden_size
        self.W = W
        self.probe = torch.randn(SPEC["batch"], SPEC["length"], hidden, device=device, dtype=W.dtype)
        self.z = torch.randn(tokens, hidden, device=device, dtype=W.dtype)
        self.g = torch.randn(tokens, W.shape[0], device=device, dtype=W.dtype)

    def body_step(self) -> float:
        batch, optimizer = self.trainer.batch, self.trainer.optimizer
        _sync()
        start = time.perf_counter()
        hidden = self.parts.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        (hidden * self.probe).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        return time.perf_counter() - start

    def projections(self) -> tuple[float, float]:
        _sync()
        start = time.perf_counter()
        self.z @ self.W.T
        _sync()
        middle = time.perf_counter()
        self.g @ self.W
        _sync()
        return middle - start, time.perf_counter() - middle

    def measure(self, steps: int, repeats: int = 3) -> dict:
        """One measurement: the mean of ``steps`` body steps, the median of ``repeats`` projections."""
        t_body = statistics.fmean(self.body_step() for _ in range(max(steps, 1)))
        fwd, bwd = zip(*(self.projections() for _ in range(repeats)))
        t_fwd, t_bwd = statistics.median(fwd), statistics.median(bwd)
        floor = (t_body + K * (t_fwd + t_bwd)) / (t_body + t_fwd + t_bwd)
        return {"body_step_s": t_body, "head_forward_s": t_fwd, "head_backward_s": t_bwd, "floor_ratio": floor}


def run_rounds(names: list[str], rounds: int, steps: int, warmup: int, floor: bool) -> dict:
    """The interleaved timing, in this process: every variant built once and warmed up, then
    ``rounds`` rounds, round r timing one measurement (mean of ``steps`` steps) of each variant
    (and of the floor) in an order rotated by r. ``{"times": {variant: [s per round]},
    "floor": [per round], "memory": {variant: {...}}, "loss": {variant: ...}}``."""
    import torch

    cuda = SPEC["device"] == "cuda"
    trainers, memory = {}, {}
    for name in names:
        held = torch.cuda.memory_allocated() / 2**20 if cuda else 0.0  # what the variants built before hold
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        print(f"building and warming up {name} ...", file=sys.stderr, flush=True)
        trainers[name] = _Trainer(name)
        after_load = _peak_mib() - held
        for _ in range(max(warmup, 1)):  # at least one: the first step allocates the optimizer state
            trainers[name].step()
        memory[name] = {"peak_mib": _peak_mib() - held, "after_load_mib": after_load}
    items = list(names)
    meter = None
    if floor:
        meter = _Floor(trainers.get("lora_notk"))
        for _ in range(max(warmup, 1)):
            meter.measure(1, repeats=1)
        items.append("floor")
    times, floors = {name: [] for name in names}, []
    for r in range(rounds):
        order = _rotated(items, r)
        print(f"round {r + 1}/{rounds}: {', '.join(order)}", file=sys.stderr, flush=True)
        for item in order:
            if item == "floor":
                floors.append(meter.measure(steps))
            else:
                times[item].append(statistics.fmean(trainers[item].step() for _ in range(max(steps, 1))))
    return {"times": times, "floor": floors, "memory": memory, "loss": {n: t.loss for n, t in trainers.items()}}


def run_train(name: str, steps: int, warmup: int) -> dict:
    """One variant alone (its own process: isolated timing, or its peak memory)."""
    trainer = _Trainer(name)
    rss_loaded = _peak_mib()
    times = [trainer.step() for _ in range(warmup + steps)][warmup:]
    return {"variant": name, "step_s": statistics.fmean(times) if times else float("nan"), "times": times,
            "peak_mib": _peak_mib(), "after_load_mib": rss_loaded, "loss": trainer.loss}


def run_floor(steps: int) -> dict:
    """The floor alone (its own process, ``--isolate``): one warm-up, then one measurement."""
    meter = _Floor()
    meter.measure(1, repeats=1)
    return meter.measure(steps)


def _generation_setup(which: str):
    """``(model, tokenizer or None)``: the base model, or (``which == "mod"``) it wrapped with MoD."""
    from modetune import MoDConfig, get_mod_model

    model, tokenizer = load_base()
    if which == "mod":
        model = get_mod_model(model, MoDConfig(k=K))
    return model, tokenizer


def _generate_inputs(model, tokenizer, batch_size: int):
    import torch

    if tokenizer is not None:
        prompt = ["Below is an instruction. Add 17 and 25, then explain."] * batch_size
        return tokenizer(prompt, return_tensors="pt").to(SPEC["device"]), tokenizer.pad_token_id
    ids = torch.randint(3, model.config.vocab_size, (batch_size, 16), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids.to(SPEC["device"]), "attention_mask": torch.ones_like(ids).to(SPEC["device"])}, 0


def _time_generate(model, inputs, kwargs, repeats: int) -> float:
    """The median seconds of ``repeats`` greedy generations."""
    import torch

    times = []
    with torch.no_grad():
        for _ in range(max(repeats, 1)):
            _sync()
            start = time.perf_counter()
            model.generate(**inputs, **kwargs)
            _sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_generation_rounds(batches: list[int], rounds: int, new_tokens: int, repeats: int) -> dict:
    """Base and MoD greedy generation, interleaved in this process: both models built and warmed
    up once, then ``rounds`` rounds of one measurement each per batch size, the order alternated.
    ``{"base-B": [tokens/s per round], "mod-B": [...]}``."""
    models = {which: _generation_setup(which) for which in ("base", "mod")}
    setups = {}
    for which, (model, tokenizer) in models.items():
        for batch_size in batches:
            inputs, pad = _generate_inputs(model, tokenizer, batch_size)
            kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
            _time_generate(model, inputs, kwargs, 1)  # warm-up
            setups[which, batch_size] = (model, inputs, kwargs)
    out = {f"{which}-{b}": [] for b in batches for which in ("base", "mod")}
    for r in range(rounds):
        for batch_size in batches:
            for which in _rotated(["base", "mod"], r):
                print(f"generation round {r + 1}/{rounds}: {which} batch {batch_size}", file=sys.stderr, flush=True)
                seconds = _time_generate(*setups[which, batch_size], repeats)
                out[f"{which}-{batch_size}"].append(batch_size * new_tokens / seconds)
    return out


def run_generate(which: str, batch_size: int, new_tokens: int, repeats: int) -> dict:
    """One model's generation alone (its own process, ``--isolate``): a warm-up, then one measurement."""
    model, tokenizer = _generation_setup(which)
    inputs, pad = _generate_inputs(model, tokenizer, batch_size)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    _time_generate(model, inputs, kwargs, 1)  # warm-up
    seconds = _time_generate(model, inputs, kwargs, repeats)
    return {"model": which, "batch": batch_size, "tokens_per_s": batch_size * new_tokens / seconds}


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
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of training-step measurements")
    parser.add_argument("--steps", type=int, default=1,
                        help="training steps per measurement (one variant, one round: their mean)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per variant before the rounds (>= 1)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--gen-repeats", type=int, default=1, help="generations per measurement (their median)")
    parser.add_argument("--gen-rounds", type=int, default=None, help="interleaved rounds of generation (--rounds)")
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
    parser.add_argument("--skip-memory", action="store_true", help="on CPU, no per-variant peak-RSS processes")
    parser.add_argument("--isolate", action="store_true",
                        help="time in alternating child processes (one per variant and round) instead of one process")
    parser.add_argument("--in-process", action="store_true",
                        help="measure everything in this process (tiny checks only: peak memory is then shared)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny random Llama, in this process, 3 rounds, batch 2 x 32, generation batch 1 x 4 tokens")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser


def _measure_train(args, names: list[str]) -> tuple[dict, str]:
    """``(run_rounds-like result, mode)``: one process, or alternating processes (``--isolate``,
    or after a CUDA out-of-memory error)."""
    floor = not args.skip_floor
    if not args.isolate:
        extra = ["--variants", ",".join(names), "--rounds", str(args.rounds), "--steps", str(args.steps),
                 "--warmup", str(args.warmup), *(["--skip-floor"] if not floor else [])]
        try:
            return _child("rounds", *extra), "one process"
        except Exception as error:  # noqa: BLE001 (only out-of-memory falls back; the rest is raised)
            if "OutOfMemoryError" not in f"{type(error).__name__} {error}":
                raise
            print("the variants do not fit in memory together: alternating processes instead", file=sys.stderr)
    items = names + (["floor"] if floor else [])
    times, floors, memory, loss = {name: [] for name in names}, [], {}, {}
    for r in range(args.rounds):
        for item in _rotated(items, r):
            print(f"round {r + 1}/{args.rounds}: {item} (own process) ...", file=sys.stderr, flush=True)
            if item == "floor":
                floors.append(_child("floor", "--steps", str(args.steps)))
                continue
            result = _child("train", item, "--steps", str(max(args.steps, 1)), "--warmup", str(max(args.warmup, 1)))
            times[item].append(result["step_s"])
            loss[item] = result["loss"]
            old = memory.get(item, {"peak_mib": 0.0, "after_load_mib": 0.0})
            memory[item] = {key: max(old[key], result[key]) for key in old}
    return {"times": times, "floor": floors, "memory": memory, "loss": loss}, "alternating processes"


def measure(args) -> dict:
    """Interleaved rounds of every measurement (see the module docstring): ``{"train", "floor",
    "generation", "generation_ratio", "ratios", "rounds", "gen_rounds", "mode"}``."""
    names = args.variants.split(",")
    timed, mode = _measure_train(args, names)
    memory = timed["memory"]
    if mode == "one process" and SPEC["device"] != "cuda" and not SPEC.get("in_process"):
        # peak RSS is per process: each variant alone, briefly, in its own
        memory = {}
        for name in ([] if args.skip_memory else names):
            print(f"peak memory: {name} (own process) ...", file=sys.stderr, flush=True)
            result = _child("train", name, "--steps", "1", "--warmup", "1")
            memory[name] = {"peak_mib": result["peak_mib"], "after_load_mib": result["after_load_mib"]}
    train = {}
    for name in names:
        times = timed["times"][name]
        mem = memory.get(name, {"peak_mib": None, "after_load_mib": None})
        train[name] = {"variant": name, "step_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                       "times": times, **mem, "loss": timed["loss"].get(name)}
    reference = REFERENCE if REFERENCE in names else names[0]
    ratios = {}
    for name in names:
        if name != reference:
            ratios[f"{name}/{reference}"] = _spread([t / ref for t, ref in zip(train[name]["times"],
                                                                               train[reference]["times"])])
    floor = None
    if timed["floor"]:
        per_round = timed["floor"]
        floor = {key: statistics.median(f[key] for f in per_round) for key in per_round[0]}
        floor["rounds"] = per_round
        ratios["floor"] = _spread([f["floor_ratio"] for f in per_round])
        if reference == "lora_notk" and "lora_notk_mod" in names:
            ratios["lora_notk_mod/lora_notk over floor"] = _spread(
                [m / ref / f["floor_ratio"] for m, ref, f in zip(train["lora_notk_mod"]["times"],
                                                                  train["lora_notk"]["times"], per_round)])
    generation, generation_ratio = {}, {}
    batches = [] if args.skip_generation else [int(b) for b in args.gen_batches.split(",")]
    gen_rounds = args.gen_rounds or args.rounds
    if batches and mode == "one process":
        print("generation: base and MoD, interleaved ...", file=sys.stderr, flush=True)
        generation = _child("generation", "--gen-batches", ",".join(map(str, batches)), "--gen-rounds",
                            str(gen_rounds), "--new-tokens", str(args.new_tokens), "--gen-repeats",
                            str(args.gen_repeats))
    elif batches:  # alternating processes, one per model and round
        for r in range(gen_rounds):
            for batch_size in batches:
                for which in _rotated(["base", "mod"], r):
                    print(f"generation round {r + 1}/{gen_rounds}: {which} batch {batch_size} (own process) ...",
                          file=sys.stderr, flush=True)
                    result = _child("generate", which, str(batch_size), "--new-tokens", str(args.new_tokens),
                                    "--gen-repeats", str(args.gen_repeats))
                    generation.setdefault(f"{which}-{batch_size}", []).append(result["tokens_per_s"])
    for batch_size in batches:
        spread = _spread([m / b for m, b in zip(generation[f"mod-{batch_size}"], generation[f"base-{batch_size}"])])
        ratios[f"generation mod/base batch {batch_size}"] = spread
        generation_ratio[batch_size] = spread["median"]
    return {"train": train, "floor": floor, "generation": generation, "generation_ratio": generation_ratio,
            "ratios": ratios, "reference": reference, "rounds": args.rounds,
            "gen_rounds": gen_rounds if batches else 0, "mode": mode}


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _range(spread: dict, digits: int = 2) -> str:
    return f"{spread['median']:.{digits}f}x ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"


def report(results: dict) -> str:
    """The markdown tables of :func:`measure`'s results."""
    train, floor, generation = results["train"], results["floor"], results["generation"]
    ratios, reference = results["ratios"], results["reference"]
    memory = "peak CUDA memory" if SPEC["device"] == "cuda" else "peak RSS"
    rows = [f"{SPEC['model']} model{'' if SPEC['model'] == 'default' else ' (' + SPEC['shape'] + ')'}, "
            f"{SPEC['dtype']} weights, {SPEC['device']}, batch {SPEC['batch']} x {SPEC['length']} tokens; "
            f"{_plural(results['rounds'], 'interleaved round')} ({results['mode']}); ratios: median of the per-round "
            "ratios (min-max)", ""]
    ref = train[reference]
    rows += [f"| variant | step (s, median) | min-max (s) | time vs {reference} | {memory} (MiB) "
             f"| memory vs {reference} |", "|---|---|---|---|---|---|"]
    for name, r in train.items():
        vs_time = "1.00x" if name == reference else _range(ratios[f"{name}/{reference}"])
        have_mem = r["peak_mib"] is not None and ref["peak_mib"]
        mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        vs_mem = f"{r['peak_mib'] / ref['peak_mib']:.2f}x" if have_mem else "-"
        rows.append(f"| {name} | {r['step_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {vs_time} | {mem} "
                    f"| {vs_mem} |")
    if floor:
        rows += ["", f"Floor for lambda > 0 (body-only step {floor['body_step_s']:.3f} s, one head projection "
                     f"{floor['head_forward_s']:.4f} s forward + {floor['head_backward_s']:.4f} s backward): "
                     f"{_range(ratios['floor'])}"]
        over = ratios.get("lora_notk_mod/lora_notk over floor")
        if over:
            rows.append(f"lora_notk_mod / lora_notk over the floor: {_range(over, 3)}")
    batches = sorted({int(key.split("-")[1]) for key in generation})
    if batches:
        rows += ["", f"| greedy generation ({_plural(results['gen_rounds'], 'round')}) | base tokens/s (median) "
                     "| MoD tokens/s (median) | MoD / base |", "|---|---|---|---|"]
    for batch_size in batches:
        base = statistics.median(generation[f"base-{batch_size}"])
        mod = statistics.median(generation[f"mod-{batch_size}"])
        rows.append(f"| batch {batch_size} | {base:.1f} | {mod:.1f} | "
                    f"{_range(ratios[f'generation mod/base batch {batch_size}'])} |")
    return "\n".join(rows)


def _dispatch(args) -> dict:
    """One child measurement (``--child KIND ...``)."""
    kind, *rest = args.child
    if kind == "rounds":
        return run_rounds(args.variants.split(","), args.rounds, args.steps, args.warmup, not args.skip_floor)
    if kind == "generation":
        return run_generation_rounds([int(b) for b in args.gen_batches.split(",")], args.gen_rounds,
                                     args.new_tokens, args.gen_repeats)
    if kind == "train":
        return run_train(rest[0], args.steps, args.warmup)
    if kind == "floor":
        return run_floor(args.steps)
    return run_generate(rest[0], int(rest[1]), args.new_tokens, args.gen_repeats)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
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
