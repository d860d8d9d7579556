"""`modetune train`: the paper's variants on the Hugging Face Trainer.

The Trainer (and so ``accelerate launch`` / ``torchrun`` with DDP, FSDP or DeepSpeed) runs
the loop; this module adds what MoD needs around it: the variant presets, per-step MoD
diagnostics (distillation per member, router weights, routing sparsity, tokens/s) to the
console, a JSONL file and TensorBoard, adapters saved as safetensors, checkpoints written
atomically, and one-line errors for bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from .config import MoDConfig
from .data import load_training_records, split_validation, tokenize_records
from .errors import NonFiniteLossError
from .model import MoDModel, parameter_counts
from .variants import build_variant, parse_preset

SPARSITY_EPS = 1e-5
TRAIN_CONFIG_NAME = "train_config.json"
FAULT_ENV = "MODETUNE_FAULT_AT_STEP"  # testing hook: "kill:N" (SIGKILL itself) or "nan:N" (poison the loss)


@dataclass
class TrainConfig:
    """Every choice of a training run. YAML files and CLI flags set these fields by name;
    the MoD fields (``k``, ``distill_lambda``, ``router_init``, ...) sit at the top level too."""

    # model and variant
    model: str = "default"  # "default" (embedded SmolLM2-135M-Instruct), a folder, or a hub name
    preset: str = "lora_notk_mod"  # lora_notk, lora_all, lora_all_mod, lora_notk_mod, mod_only, lora_layer_j
    trust_remote_code: bool = False
    # LoRA (the paper's settings)
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: q, k, v, up, down projections of the architecture
    use_dora: bool = False
    # data
    data: str = "builtin:arithmetic:640"  # a .json/.jsonl file, hf:gsm8k, or builtin:arithmetic[:N]
    max_records: int | None = None  # use only the first N records
    val_size: int = 32  # held-out validation records (0: none)
    cutoff_len: int = 256
    train_on_inputs: bool = False  # LLM-Adapters' default is True; prompt tokens then carry labels
    prompt_style: str = "alpaca"  # or "llm-adapters" (their template, byte for byte)
    # optimisation
    learning_rate: float = 3e-4
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 16  # global batch (per process x accumulation x processes)
    micro_batch_size: int = 4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    seed: int = 42
    gradient_checkpointing: bool = False
    bf16: bool = False
    fp16: bool = False
    # output
    output_dir: str = "runs/default"
    logging_steps: int = 1
    save_steps: int = 20
    save_total_limit: int = 2
    eval_steps: int = 0  # validation loss every N steps (0: at the end only)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # MoD (see MoDConfig for each field)
    mod: MoDConfig = field(default_factory=MoDConfig)

    def __post_init__(self) -> None:
        parse_preset(self.preset)
        if self.micro_batch_size < 1 or self.batch_size < 1:
            raise ValueError("batch_size and micro_batch_size must be positive.")
        if self.bf16 and self.fp16:
            raise ValueError("Choose at most one of bf16 and fp16.")

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "mod"}
        return {**data, **self.mod.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        own = {f.name for f in dataclasses.fields(cls)} - {"mod"}
        mod_fields = {f.name for f in dataclasses.fields(MoDConfig)}
        unknown = sorted(set(data) - own - mod_fields)
        if unknown:
            raise ValueError(f"Unknown config field(s): {', '.join(unknown)}.")
        mod = MoDConfig(**{key: value for key, value in data.items() if key in mod_fields})
        return cls(**{key: value for key, value in data.items() if key in own}, mod=mod)


# ---------------------------------------------------------------- config from YAML + flags
def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parser_for(hint):
    """An argparse ``type`` for a field's type hint (``None``/``none`` allowed for optionals)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint
    if typing.get_origin(base) is list:
        item_type = (typing.get_args(base) or (str,))[0]
        convert = lambda text: [item_type(item) for item in text.split(",") if item]
    elif typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)

        def convert(text: str) -> str:
            if text not in choices:
                raise argparse.ArgumentTypeError(f"choose one of {', '.join(map(str, choices))} (got {text!r})")
            return text
    elif base is bool:
        convert = lambda text: text.lower() in ("1", "true", "yes", "on")
    else:
        convert = base

    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        return convert(text)

    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def add_config_flags(parser: argparse.ArgumentParser, cls=TrainConfig, with_mod: bool = True) -> None:
    """One ``--field-name`` flag per config field (and MoD field); unset flags stay unset."""
    hints = {**_field_types(cls), **(_field_types(MoDConfig) if with_mod else {})}
    hints.pop("mod", None)
    hints.pop("extra", None)
    defaults = {**(dataclasses.asdict(MoDConfig()) if with_mod else {}),
                **{f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}}
    group = parser.add_argument_group("config fields (override the YAML; defaults in brackets)")
    for name, hint in hints.items():
        flag = "--" + name.replace("_", "-")
        default = defaults.get(name)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        if hint is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=f"[{shown}]")
        else:
            group.add_argument(flag, dest=name, type=_parser_for(hint), default=argparse.SUPPRESS, metavar="V",
                               help=f"[{shown}]")


def load_yaml_config(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"Malformed YAML in {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config fields.")
    return data


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """YAML (``--config``) first, then every flag given on the command line."""
    data = load_yaml_config(args.config) if getattr(args, "config", None) else {}
    skip = {"config", "resume", "func", "command"}
    data.update({key: value for key, value in vars(args).items() if key not in skip})
    return TrainConfig.from_dict(data)


# ---------------------------------------------------------------- model
def build_model(config: TrainConfig):
    """Load the base model and tokenizer and apply the preset: ``(model, tokenizer)``."""
    from .models import load_model

    base, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code)
    model = build_variant(base, config.preset, config.mod, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, lora_targets=config.lora_targets, use_dora=config.use_dora)
    return model, tokenizer


def count_parameters(model: str, preset: str, k: int = 3, lora_r: int = 32, lora_targets: list[str] | None = None
                     ) -> dict:
    """Total and trainable parameters of a preset, from the model config alone (meta device).

    ``delta_pct`` is the trainable delta in % relative to ``lora_notk`` with the same LoRA
    settings. ``model`` may be a folder holding only ``config.json``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import resolve_model

    path = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as error:
        raise FileNotFoundError(f"Cannot read a model config from {model!r}: {str(error).splitlines()[0]}") from error

    def counts(name: str) -> tuple[int, int]:
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(config)
        variant = build_variant(base, name, MoDConfig(k=k), lora_r=lora_r, lora_alpha=2 * lora_r,
                                lora_dropout=0.0, lora_targets=lora_targets)
        return parameter_counts(variant)

    trainable, total = counts(preset)
    reference, _ = counts("lora_notk")
    delta = 100.0 * (trainable - reference) / reference if reference else float("nan")
    return {"model": model, "preset": preset, "k": k, "lora_r": lora_r, "total": total, "trainable": trainable,
            "lora_notk_trainable": reference, "delta_pct": delta}


def format_parameter_table(result: dict) -> str:
    return (f"preset {result['preset']} on {result['model']} (k={result['k']}, LoRA r={result['lora_r']})\n"
            f"  total parameters      {result['total']:>15,}\n"
            f"  trainable parameters  {result['trainable']:>15,}\n"
            f"  vs lora_notk          {result['delta_pct']:>+14.2f}%  ({result['lora_notk_trainable']:,} trainable)")


# ---------------------------------------------------------------- trainer
def _trainer_class():
    from transformers import Trainer

    class MoDTrainer(Trainer):
        """HF Trainer + MoD diagnostics, adapter-only safetensors saves, atomic checkpoints."""

        def __init__(self, *args, tokenizer_to_save=None, run_config: TrainConfig | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._stats: dict[str, list] = {}
            self._logged_step = 0
            self._tokens = 0
            self._clock = time.perf_counter()
            self._tokenizer_to_save = tokenizer_to_save
            self._run_config = run_config
            fault = os.environ.get(FAULT_ENV, "")
            self._fault = (fault.split(":")[0], int(fault.split(":")[1])) if ":" in fault else None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            step = self.state.global_step + 1
            if self._fault and self._fault[1] == step and model.training:
                if self._fault[0] == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if self._fault[0] == "nan":
                    loss = loss * float("nan")
            if not torch.isfinite(loss.detach()).all():
                last = self._last_checkpoint()
                where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
                raise NonFiniteLossError(f"Non-finite loss at step {step}; training stopped ({where}).")
            if model.training:
                self._record(inputs, outputs)
            return (loss, outputs) if return_outputs else loss

        def _record(self, inputs, outputs) -> None:
            mask = inputs.get("attention_mask")
            self._tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            task = getattr(outputs, "task_loss", None)
            if task is None:
                return
            self._stats.setdefault("task_loss", []).append(float(task))
            if outputs.distill_losses is not None:
                for i, value in enumerate(outputs.distill_losses.tolist()):
                    self._stats.setdefault(f"distill_{i}", []).append(value)
            weights = outputs.router_weights
            if weights is not None:
                weights = weights.reshape(-1, weights.shape[-1]).float()
                for i, value in enumerate(weights.mean(0).tolist()):
                    self._stats.setdefault(f"router_{i}", []).append(value)
                    sparse = float((weights[:, i] < SPARSITY_EPS).float().mean())
                    self._stats.setdefault(f"sparsity_{i}", []).append(sparse)
                self._stats.setdefault("sparsity", []).append(float((weights < SPARSITY_EPS).float().mean()))

        def log(self, logs: dict, start_time: float | None = None) -> None:
            if "loss" in logs:
                # losses are normalised by the whole optimizer step's label count: sum them per step
                # (summed over processes too: each holds its share of the batch)
                steps = max(1, self.state.global_step - self._logged_step)
                keys = sorted(self._stats)
                totals = torch.tensor([[sum(self._stats[key]), len(self._stats[key])] for key in keys],
                                      dtype=torch.float64).reshape(-1, 2)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    totals = totals.to(self.args.device)
                    torch.distributed.all_reduce(totals)
                for key, (total, count) in zip(keys, totals.tolist()):
                    summed = key == "task_loss" or key.startswith("distill_")
                    logs[key] = total / (steps if summed else count)
                self._logged_step = self.state.global_step
                now = time.perf_counter()
                logs["tokens_per_s"] = self._tokens / max(now - self._clock, 1e-9)
                self._stats, self._tokens, self._clock = {}, 0, now
            super().log(logs, start_time)

        def _last_checkpoint(self) -> str | None:
            from transformers.trainer_utils import get_last_checkpoint

            return get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
            if self._tokenizer_to_save is not None:
                self._tokenizer_to_save.save_pretrained(output_dir)
            if self._run_config is not None:
                Path(output_dir, TRAIN_CONFIG_NAME).write_text(json.dumps(self._run_config.to_dict(), indent=2) + "\n")

        def _save_checkpoint(self, model, trial) -> None:
            """Write the checkpoint into a hidden folder, then rename it into place: a kill at
            any moment leaves every ``checkpoint-N`` folder complete."""
            run_dir = self._get_output_dir(trial=trial)
            staging = os.path.join(run_dir, ".staging")
            name = f"checkpoint-{self.state.global_step}"
            if self.args.should_save:
                shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
            original = self._get_output_dir
            self._get_output_dir = lambda trial=None: staging
            save_limit, self.args.save_total_limit = self.args.save_total_limit, None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._get_output_dir = original
                self.args.save_total_limit = save_limit
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                target = os.path.join(run_dir, name)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(os.path.join(staging, name), target)
                if not os.listdir(staging):
                    os.rmdir(staging)
                from transformers.trainer_utils import rotate_checkpoints

                rotate_checkpoints(output_dir=run_dir, save_total_limit=save_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
            self.accelerator.wait_for_everyone()

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            load_adapter_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    return MoDTrainer


def load_adapter_weights(model: torch.nn.Module, directory: str | Path) -> None:
    """Load saved MoD and/or LoRA weights from ``directory`` into an already built model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(directory)
    peft_model = model.base_model if isinstance(model, MoDModel) else model
    adapter = directory / "adapter_model.safetensors"
    if adapter.exists() and hasattr(peft_model, "peft_config"):
        set_peft_model_state_dict(peft_model, load_file(str(adapter)))
    if isinstance(model, MoDModel):
        for name, tensor in load_file(str(directory / "mod_model.safetensors")).items():
            with torch.no_grad():
                model._named_mod_tensor(name).copy_(tensor)


class _JsonlLogger(TrainerCallback):
    """A Trainer callback appending every log to ``log.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def training_arguments(config: TrainConfig, world_size: int = 1):
    from transformers import TrainingArguments

    accumulation = max(1, config.batch_size // (config.micro_batch_size * world_size))
    return TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if config.eval_steps > 0 else "no",
        eval_steps=config.eval_steps or None,
        bf16=config.bf16,
        fp16=config.fp16,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to=config.report_to,
        remove_unused_columns=False,
        prediction_loss_only=True,
        disable_tqdm=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
    )


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Run a training job end to end; returns the summary dict (also written to ``summary.json``)."""
    from transformers import DataCollatorForSeq2Seq, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(config.output_dir)
    resume_from = None
    if resume:
        resume_from = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if resume_from is None:
            raise FileNotFoundError(f"--resume: no checkpoint found in {output_dir}.")
    set_seed(config.seed)
    records = load_training_records(config.data, config.max_records, config.seed)
    train_records, val_records = split_validation(records, config.val_size, config.seed)
    model, tokenizer = build_model(config)
    tokenizer.padding_side = "right"
    train_rows = tokenize_records(train_records, tokenizer, config.cutoff_len, config.train_on_inputs, config.prompt_style)
    val_rows = (tokenize_records(val_records, tokenizer, config.cutoff_len, config.train_on_inputs, config.prompt_style)
                if val_records else None)

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_arguments(config, world_size)
    is_main = int(os.environ.get("RANK", "0")) == 0
    trainable, total = parameter_counts(model)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        print(f"[modetune] {config.preset} on {config.model}: {trainable:,} trainable of {total:,} parameters "
              f"({100 * trainable / total:.4f}%); {len(train_rows)} training records, "
              f"{len(val_rows or [])} validation; global batch "
              f"{args.gradient_accumulation_steps * config.micro_batch_size * world_size}")
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                               data_collator=collator, tokenizer_to_save=tokenizer, run_config=config)
    trainer.add_callback(_JsonlLogger(output_dir / "log.jsonl"))
    if is_main and not resume and (output_dir / "log.jsonl").exists():
        (output_dir / "log.jsonl").unlink()
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    final_dir = output_dir / "adapter"
    trainer.save_model(str(final_dir))
    val_loss = trainer.evaluate()["eval_loss"] if val_rows else None
    summary = summarise(output_dir, config, trainable, total, final_dir, time.perf_counter() - started, val_loss)
    if is_main:
        print(format_summary(summary))
    return summary


# ---------------------------------------------------------------- summary and plots
def read_log(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summarise(output_dir: Path, config: TrainConfig, trainable: int, total: int, adapter: Path, seconds: float,
              val_loss: float | None) -> dict:
    logs = [row for row in read_log(output_dir) if "loss" in row]
    last = logs[-min(len(logs), 5):] if logs else []
    mean = lambda key: (sum(row[key] for row in last if key in row) / max(1, sum(key in row for row in last))
                        if any(key in row for row in last) else None)
    k = config.mod.k if parse_preset(config.preset).mod else 0
    summary = {
        "preset": config.preset, "model": config.model, "steps": logs[-1]["step"] if logs else 0,
        "first_loss": logs[0]["loss"] if logs else None, "last_loss": mean("loss"), "val_loss": val_loss,
        "task_loss": mean("task_loss"), "distill": [mean(f"distill_{i}") for i in range(max(0, k - 1))],
        "router_weights": [mean(f"router_{i}") for i in range(k)], "sparsity": mean("sparsity"),
        "trainable": trainable, "total": total, "adapter": str(adapter), "seconds": seconds,
        "eval_command": f"modetune eval --adapter {adapter} --model {config.model} " + (
            "--datasets builtin" if config.data.startswith("builtin:") else "--datasets gsm8k,SVAMP --data-dir DATA_DIR"),
    }
    Path(output_dir, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_training(output_dir, k)
    return summary


def format_summary(s: dict) -> str:
    fmt = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
    lines = [f"[modetune] done: {s['preset']}, {s['steps']} steps in {s['seconds']:.0f} s",
             f"  loss {fmt(s['first_loss'])} -> {fmt(s['last_loss'])} (mean of the last 5 logs); "
             f"validation loss {fmt(s['val_loss'])}"]
    if s["router_weights"]:
        lines.append(f"  task loss {fmt(s['task_loss'])}; distillation per member {[fmt(x) for x in s['distill']]}")
        lines.append(f"  mean router weight per member (shallow -> final) {[fmt(x) for x in s['router_weights']]}; "
                     f"routing sparsity (share < {SPARSITY_EPS:g}) {fmt(s['sparsity'])}")
    lines.append(f"  adapter saved to {s['adapter']}")
    lines.append(f"  evaluate it: {s['eval_command']}")
    return "\n".join(lines)


def plot_training(output_dir: str | Path, k: int) -> None:
    """``loss.png`` (total, task, distillation per member) and ``routing.png`` (router weights, sparsity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [row for row in read_log(output_dir) if "loss" in row]
    if not logs:
        return
    steps = [row["step"] for row in logs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [row["loss"] for row in logs], label="loss")
    for key in ["task_loss"] + [f"distill_{i}" for i in range(max(0, k - 1))]:
        if key in logs[0]:
            ax.plot(steps, [row.get(key) for row in logs], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(output_dir) / "loss.png", dpi=100)
    plt.close(fig)
    if k and "router_0" in logs[0]:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for i in range(k):
            left.plot(steps, [row.get(f"router_{i}") for row in logs], label=f"member {i} (layer N-{k - 1 - i})")
            right.plot(steps, [row.get(f"sparsity_{i}") for row in logs], label=f"member {i}")
        left.set_title("mean router weight")
        right.set_title(f"routing sparsity (weights < {SPARSITY_EPS:g})")
        for axis in (left, right):
            axis.set_xlabel("step")
            axis.legend()
        fig.tight_layout()
        fig.savefig(Path(output_dir) / "routing.png", dpi=100)
        plt.close(fig)
