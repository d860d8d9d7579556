"""`TrainConfig`: every choice of a training run, each field with its help text."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ..mod.config import MoDConfig
from ..mod.variants import parse_preset
from ..utils.config import SEED_MAX, Config
from ..utils.errors import ConfigError
from ..utils.models import check_quantization
from ..utils.prompts import STYLES, read_chat_template
from .clipping import SCOPES

TRAIN_CONFIG_NAME = "train_config.json"
# the optimizers that run over modetune's own parameter groups (router_lr; MoDTrainer.create_optimizer)
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor")
# trainer options newer than the saved runs: in train_config.json only when set (TrainConfig.to_dict); a key a
# saved run lacks reads as its default (utils.checks.differing_settings)
OPTIONS = ("val_data", "columns", "warmup_ratio", "optim", "neftune_noise_alpha", "run_name", "project", "push_to_hub",
           "hub_model_id")


@dataclass
class TrainConfig(Config):
    """Every choice of a training run. YAML files and CLI flags set these fields by name;
    the MoD fields (``k``, ``distill_lambda``, ``router_init``, ...) sit at the top level too.
    Each field's meaning is its ``help`` (shown by ``modetune train --help``)."""

    # model and variant
    model: str = field(default="default", metadata={
        "help": "base model: 'default' (the embedded SmolLM2-135M-Instruct), a local folder or a hub name"})
    preset: str = field(default="lora_notk_mod", metadata={
        "help": "variant: lora_notk, lora_all, lora_all_mod, lora_notk_mod, mod_only or lora_layer_j (j = 0, 1, ...)"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "let transformers run the model repository's own code"})
    quantization: str = field(default="none", metadata={
        "help": "QLoRA: load the base model's linear layers quantized by bitsandbytes, '4bit' (NF4) or '8bit' "
                "(LLM.int8); LoRA and MoD train in full precision on top ('none': no quantization). Evaluate "
                "with the same --quantization (the adapter records that base)"})
    # LoRA (the paper's settings)
    lora_r: int = field(default=32, metadata={"min": 1, "help": "LoRA rank"})
    lora_alpha: int = field(default=64, metadata={
        "min": 1, "help": "LoRA scaling alpha (the update is scaled by alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"min": 0, "lt": 1, "help": "dropout on the LoRA input"})
    lora_targets: list[str] | None = field(default=None, metadata={
        "help": "comma-separated module names given LoRA; none: the q, k, v, up and down projections of the "
                "architecture"})
    use_dora: bool = field(default=False, metadata={"help": "weight-decomposed LoRA (DoRA) instead of plain LoRA"})
    # data
    data: str = field(default="builtin:arithmetic:640", metadata={
        "help": "training records: a .json/.jsonl file, packaged:PATH (a shipped file, e.g. "
                "packaged:math-split/train.json), hf:gsm8k or builtin:arithmetic[:N]; several join with commas, each "
                "may carry ?half=train|test and ?n=N"})
    max_records: int | None = field(default=None, metadata={"min": 1, "help": "use only the first N records (none: all)"})
    contamination_warn_at: int = field(default=5, metadata={"min": 0,
        "help": "warn before training when the records share more than N questions with a packaged evaluation set "
                "(the 14 LLM-Adapters test sets, the math-split halves); -1: no check"})
    val_size: int = field(default=32, metadata={
        "min": 0, "help": "held-out validation records carved out of data (0: none; val_data replaces them)"})
    val_data: str | None = field(default=None, metadata={
        "help": "validation records from a source of their own (a .json/.jsonl file, or any source --data takes, "
                "checked the same way) instead of the val_size carve-out of data, which is then not made (none: "
                "the carve-out)"})
    columns: list[str] | None = field(default=None, metadata={
        "help": "rename the fields of .json/.jsonl records before they are checked, SOURCE=FIELD comma-separated, "
                "e.g. question=instruction,rationale=output,label=answer; applies to the local files of data and "
                "val_data, and a SOURCE no record of a file has is an error naming the file (none: no renaming)"})
    cutoff_len: int = field(default=256, metadata={"min": 1, "help": "tokens per record (prompt + answer) after truncation"})
    train_on_inputs: bool = field(default=False, metadata={
        "help": "prompt tokens carry labels too (LLM-Adapters' default is True; here only the answer is learned)"})
    prompt_style: str = field(default="alpaca", metadata={
        "help": "prompt template of Alpaca records: 'alpaca', 'llm-adapters' (their template, byte for byte) or "
                "'chat' (the tokenizer's chat template; conversation records always use it)"})
    chat_template: str | None = field(default=None, metadata={
        "help": "a Jinja chat template (a file, or the template text) replacing the tokenizer's for chat rendering; "
                "the adapter records it, and every command that loads the adapter uses it (none: the tokenizer's)"})
    packing: bool = field(default=False, metadata={
        "help": "concatenate the tokenised training records (each ending in EOS or its chat template's end of turn) "
                "and cut them into blocks of "
                "cutoff_len tokens, so no step pads; attention spans record boundaries, and a record's first token "
                "is never a target of the previous one (validation records stay unpacked)"})
    # optimisation
    learning_rate: float = field(default=3e-4, metadata={"gt": 0, "help": "peak learning rate (AdamW)"})
    num_epochs: float = field(default=1.0, metadata={"gt": 0, "help": "passes over the training records"})
    max_steps: int = field(default=-1, metadata={"min": -1, "help": "optimizer steps; > 0 overrides num_epochs"})
    batch_size: int = field(default=16, metadata={"min": 1,
        "help": "global batch: records per optimizer step (per process x accumulation x processes)"})
    micro_batch_size: int = field(default=4, metadata={"min": 1,
        "help": "records per forward pass on one process (gradient accumulation makes up the rest)"})
    warmup_steps: int = field(default=5, metadata={"min": 0, "help": "linear learning-rate warm-up steps"})
    warmup_ratio: float | None = field(default=None, metadata={"min": 0, "lt": 1,
        "help": "linear warm-up over this share of the optimizer steps (rounded up), replacing warmup_steps "
                "(none: warmup_steps)"})
    optim: str | None = field(default=None, metadata={
        "help": f"optimizer, by the HF Trainer's name: {', '.join(OPTIMIZERS)} "
                "(each over router_lr's parameter groups; none: the Trainer's default, adamw_torch_fused on "
                "torch >= 2.8, else adamw_torch)"})
    neftune_noise_alpha: float | None = field(default=None, metadata={"gt": 0,
        "help": "NEFTune: add uniform noise of scale alpha / sqrt(tokens x hidden size) to the input embeddings in "
                "training steps (validation and evaluation see none; none: no noise)"})
    weight_decay: float = field(default=0.0, metadata={"min": 0, "help": "AdamW weight decay"})
    router_lr: float | None = field(default=None, metadata={"gt": 0,
        "help": "peak learning rate of the router and the member norms, an optimizer group of their own (none: "
                "learning_rate, which the router sweep in docs/results/router-sweep chose: faster routers collapse onto the "
                "final member)"})
    router_warmup_steps: int = field(default=0, metadata={"min": 0,
        "help": "first N optimizer steps train only the router and the member norms (body and LoRA frozen); then "
                "joint tuning, the body's learning-rate schedule starting at step N (0: no warm-up)"})
    max_grad_norm: float | None = field(default=1.0, metadata={"min": 0,
        "help": "clip gradients to this L2 norm before each optimizer step (0 or none: no clipping)"})
    clip_scope: str = field(default="global", metadata={
        "help": "what max_grad_norm bounds: 'global' (one norm over every trainable parameter, the HF Trainer's "
                "rule) or 'per_group' (LoRA and the MoD parameters, router and member norms, each on its own norm, "
                "so MoD's gradients never scale LoRA's); docs/method.md"})
    lr_scheduler: str = field(default="linear", metadata={
        "help": "learning-rate schedule after warm-up (a transformers scheduler name: linear, cosine, constant, ...)"})
    seed: int = field(default=42, metadata={
        "min": 0, "max": SEED_MAX, "help": "seed of the initialisation, data order and validation split"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (less memory, slower)"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision"})
    fp16: bool = field(default=False, metadata={
        "help": "float16 mixed precision with loss scaling (CUDA only: refused on CPU, where the Trainer "
                "would silently train in float32; use bf16 there)"})
    torch_compile: bool = field(default=False, metadata={
        "help": "compile the model with torch.compile (the Trainer's torch_compile; the fused MoD loss runs "
                "eagerly between compiled graphs, docs/scaling.md)"})
    # output
    output_dir: str = field(default="runs/default", metadata={
        "help": "run folder: checkpoints, logs, plots, summary.json and the final adapter/"})
    logging_steps: int = field(default=1, metadata={"min": 1, "help": "log the losses and MoD diagnostics every N steps"})
    save_steps: int = field(default=20, metadata={"min": 1, "help": "write a checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"min": 1, "help": "keep at most N checkpoints (the oldest go first)"})
    eval_steps: int = field(default=0, metadata={"min": 0, "help": "validation loss every N steps (0: at the end only)"})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={
        "help": "comma-separated loggers besides log.jsonl (tensorboard, wandb, ...; none: no other)"})
    run_name: str | None = field(default=None, metadata={
        "help": "the run's name in the --report-to loggers (W&B, MLflow; TensorBoard logs into output_dir/runs/NAME) "
                "(none: each logger's default)"})
    project: str | None = field(default=None, metadata={
        "help": "the loggers' project: W&B's (sets WANDB_PROJECT) and Trackio's (none: each logger's default, "
                "W&B's 'huggingface' unless WANDB_PROJECT is set)"})
    push_to_hub: bool = field(default=False, metadata={
        "help": "push the finished adapter (with its model card) to the Hugging Face Hub as hub_model_id; if the hub "
                "cannot be reached the command fails in one line and the local adapter stays"})
    hub_model_id: str | None = field(default=None, metadata={
        "help": "the hub repository push_to_hub writes: USER/NAME, or NAME under the token's user (none: output_dir's "
                "folder name)"})
    # MoD (each field's help is on MoDConfig)
    mod: MoDConfig = field(default_factory=MoDConfig, metadata={"help": "the MoD ensemble's settings"})

    def validate(self) -> None:
        validate_train_config(self)

    def check_device(self, cuda_available: bool) -> None:
        """Refuse, before any model loads, what this machine cannot run: fp16 without CUDA.

        On CPU the Trainer (accelerate) applies no float16 autocast and no loss scaler, so
        ``fp16`` would silently train in float32."""
        if self.fp16 and not cuda_available:
            raise ConfigError("fp16 needs a CUDA GPU (on CPU the Trainer would silently train in float32); "
                              "use --bf16 for mixed precision on CPU.")

    def to_dict(self) -> dict:
        """Every field by name (the MoD fields at the top level); the :data:`OPTIONS` only when set, so a run
        with their defaults saves the ``train_config.json`` it saved before they existed."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "mod" and not (f.name in OPTIONS and getattr(self, f.name) == f.default)}
        return {**data, **self.mod.to_dict()}


def validate_train_config(config: TrainConfig) -> None:
    """The checks of a :class:`TrainConfig` beyond its fields' types and declared ranges (which
    :class:`~modetune.utils.config.Config` checks first), run once when it is built (flags, YAML or
    Python): the contradictions that would otherwise surface after the model has loaded (a batch
    that micro-batches cannot make up, an unknown scheduler)."""
    parse_preset(config.preset)
    if config.max_steps == 0:
        raise ConfigError(f"max_steps must be -1 (use num_epochs) or a positive number, got {config.max_steps}.")
    if config.prompt_style not in STYLES:
        raise ConfigError(f"Unknown prompt_style {config.prompt_style!r}; choose one of {', '.join(STYLES)}.")
    read_chat_template(config.chat_template)
    if not config.data.strip() or not config.model.strip() or not config.output_dir.strip():
        raise ConfigError("model, data and output_dir must not be empty.")
    check_batch(config, world_size=1)  # train() checks again with the processes it was launched with
    from transformers.trainer_utils import SchedulerType

    schedulers = [s.value for s in SchedulerType]
    if config.lr_scheduler not in schedulers:
        raise ConfigError(f"Unknown lr_scheduler {config.lr_scheduler!r}; choose one of {', '.join(schedulers)}.")
    check_quantization(config.quantization)
    if config.quantization != "none" and parse_preset(config.preset).lora_layers == "none":
        raise ConfigError(f"quantization {config.quantization} is QLoRA: it needs a preset with LoRA "
                          f"({config.preset} trains no LoRA on the quantized base).")
    if config.clip_scope not in SCOPES:
        raise ConfigError(f"Unknown clip_scope {config.clip_scope!r}; choose one of {', '.join(SCOPES)}.")
    if config.bf16 and config.fp16:
        raise ConfigError("Choose at most one of bf16 and fp16.")
    if config.router_warmup_steps and not parse_preset(config.preset).mod:
        raise ConfigError(f"router_warmup_steps needs a preset with MoD; {config.preset} has no router.")
    validate_new_settings(config)


def validate_new_settings(config: TrainConfig) -> None:
    """The contradictions of the trainer options (optimizer, warm-up ratio, validation file, columns, hub)."""
    if config.optim is not None and config.optim not in OPTIMIZERS:
        from transformers.training_args import OptimizerNames

        known = config.optim in {name.value for name in OptimizerNames}
        why = ("needs the HF Trainer's own optimizer set-up (layer-wise or model-bound steps, bitsandbytes' embedding "
               "overrides), which modetune's router_lr parameter groups replace" if known else "is unknown")
        raise ConfigError(f"optim {config.optim!r} {why}; choose one of {', '.join(OPTIMIZERS)}.")
    if config.val_data is not None and not config.val_data.strip():
        raise ConfigError("val_data must not be empty (none: the val_size carve-out).")
    if config.columns is not None:
        from ..data.records import parse_columns

        parse_columns(config.columns)
    if config.push_to_hub and config.hub_model_id is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(config.hub_model_id)
        except HFValidationError as error:
            raise ConfigError(f"hub_model_id {config.hub_model_id!r} is not a hub repository name: "
                              f"{str(error).splitlines()[0]}") from None


def check_batch(config: TrainConfig, world_size: int | None = None) -> None:
    """``batch_size`` must be ``micro_batch_size`` x processes x a whole number of accumulation
    steps (``world_size`` default: ``$WORLD_SIZE``, else 1)."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_process, rest = divmod(config.batch_size, world)
    if rest or per_process % config.micro_batch_size:
        raise ConfigError(f"batch_size {config.batch_size} must be a multiple of micro_batch_size "
                          f"{config.micro_batch_size} x {world} process(es): gradient accumulation cannot make it up.")

