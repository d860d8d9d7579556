"""`modetune train`: the paper's variants on the Hugging Face Trainer.

The Trainer (and so ``accelerate launch`` / ``torchrun`` with DDP, FSDP or DeepSpeed) runs
the loop; this module adds what MoD needs around it: the variant presets, per-step MoD
diagnostics (distillation per member, router weights, routing sparsity, tokens/s) to the
console, a JSONL file and TensorBoard, adapters saved as safetensors, and checkpoints
written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ..data import load_training_records, pack_rows, split_validation, tokenize_records
from ..data.contamination import FINGERPRINT_NAME, warn_training_overlap, write_fingerprint
from ..data.records import parse_columns
from ..mod.model import MoDModel, base_fingerprint, gathered_state_dict, parameter_counts
from ..mod.variants import build_variant
from ..utils.errors import ConfigError, NonFiniteLossError
from ..utils.integrity import check_adapter_base, load_safetensors, stored_fingerprint, write_base_record
from ..utils.outputs import clean_leftovers, commit, stage_path
from ..utils.prompts import PROMPT_FILE
from ..utils.sharding import check_launcher_sharding, loading_whole_tensors
from ..utils.version import __version__
from .arguments import global_batch, training_arguments
from .clipping import clip_groups, clip_per_group, group_norms
from .config import TRAIN_CONFIG_NAME, TrainConfig, check_batch
from .router_opt import GROUP_KEY, ROUTER, RouterWarmup, body_parameters, optimizer_groups, warmup_scheduler
from .rundir import (
    COMPLETE,
    finished_run,
    name_tensorboard_run,
    prepare_run_dir,
    push_adapter,
    reached_end,
    settle_resume,
    warn_offline_push,
)
from .summary import SPARSITY_EPS, format_summary, summarise


def build_model(config: TrainConfig):
    """Load the base model and tokenizer and apply the preset: ``(model, tokenizer)``."""
    from ..utils.models import load_model

    base, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code,
                                 quantization=config.quantization, chat_template=config.chat_template)
    if config.quantization != "none":  # QLoRA: norms and embeddings in float32, inputs that carry gradients
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=config.gradient_checkpointing)
    model = build_variant(base, config.preset, config.mod, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout, lora_targets=config.lora_targets, use_dora=config.use_dora)
    return model, tokenizer


class MoDTrainer(Trainer):
    """HF Trainer + MoD diagnostics, adapter-only safetensors saves, atomic checkpoints."""

    def __init__(self, *args, tokenizer_to_save=None, run_config: TrainConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._stats: dict[str, list] = {}
        self._logged_step = 0
        self._tokens = 0
        self._clock = time.perf_counter()
        self.tokenizer_to_save = tokenizer_to_save
        self._run_config = run_config
        self.prompt_style = None if run_config is None else run_config.prompt_style  # "chat" for conversations
        if run_config is not None and run_config.clip_scope == "per_group" and self.is_deepspeed_enabled:
            raise ConfigError("clip_scope per_group is not available under DeepSpeed, which clips inside its engine "
                              "over all parameters; use clip_scope global (DeepSpeed's gradient_clipping).")
        # a LoRA-only model's base, fingerprinted before any sharding wrapper splits its weights
        self._fingerprint = None if isinstance(self.model, MoDModel) else base_fingerprint(self.model)
        self.add_callback(_StartStep(self.count_steps_from))

    def create_optimizer(self, model=None):
        """AdamW with the router and member norms in groups of their own at ``router_lr``
        (:func:`~modetune.train.router_opt.optimizer_groups`)."""
        if self.optimizer is None:
            model = self.model if model is None else model
            config = self._run_config or TrainConfig()
            groups = optimizer_groups(model, self.args.learning_rate, config.router_lr, self.args.weight_decay,
                                      set(self.get_decay_parameter_names(model)))
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The run's schedule; with ``router_warmup_steps`` the body's schedule starts after the warm-up."""
        warmup = self._run_config.router_warmup_steps if self._run_config else 0
        if self.lr_scheduler is None and warmup > 0:
            self.lr_scheduler = warmup_scheduler(self.args, optimizer or self.optimizer, num_training_steps, warmup)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def _clip_grad_norm(self, model):
        """Clip by the run's ``clip_scope`` (:mod:`~modetune.train.clipping`); returns the pre-clip
        norm of all trainable parameters, as the Trainer logs it (``grad_norm``)."""
        groups = clip_groups(model)
        if self._run_config is not None and self._run_config.clip_scope == "per_group":
            total, norms = clip_per_group(groups, self.args.max_grad_norm)
            self._record_grad_norms(norms)
            return total
        self._record_grad_norms(group_norms(groups))  # read before the Trainer's own (global) clip
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:  # no clipping this run: the group norms are still logged
            self._record_grad_norms(group_norms(clip_groups(model)))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _record_grad_norms(self, norms: dict) -> None:
        for name, norm in norms.items():
            self._stats.setdefault(f"grad_norm_{name}", []).append(float(norm))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        step = self.state.global_step + 1
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
            entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean()
            self._stats.setdefault("router_entropy", []).append(float(entropy))
            top = (weights.argmax(-1) != weights.shape[-1] - 1).float().mean()
            self._stats.setdefault("router_nonfinal_top", []).append(float(top))

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
            router_rates = [g["lr"] for g in (self.optimizer.param_groups if self.optimizer else [])
                            if g.get(GROUP_KEY) == ROUTER]
            if router_rates:
                logs["router_learning_rate"] = router_rates[0]
            self._stats, self._tokens, self._clock = {}, 0, now
        logs.pop("eval_model_preparation_time", None)  # only when no train() ran first (a finished resume)
        if "train_loss" in logs:  # over the whole run, a resumed one included (the Trainer's: this call only)
            logs["train_loss"] = run_mean_loss(self.state.log_history, logs["train_loss"])
        super().log(logs, start_time)

    def count_steps_from(self, step: int) -> None:
        """The optimizer step the next logged losses count from (the step this ``train()`` starts at)."""
        self._logged_step = step

    def finish_from(self, checkpoint: str) -> None:
        """End a run whose ``checkpoint`` holds its last step, training nothing: load its weights and
        state, and log the end-of-training row ``Trainer.train`` logs (its timings 0), so ``log.jsonl``
        equals an uninterrupted run's."""
        from transformers import TrainerState

        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        self._load_from_checkpoint(checkpoint)
        self.log({"train_runtime": 0.0, "train_samples_per_second": 0.0, "train_steps_per_second": 0.0,
                  "total_flos": float(self.state.total_flos), "train_loss": 0.0})  # train_loss: run_mean_loss

    def _last_checkpoint(self) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write the adapter (main process only). ``state_dict``: the full state dict the Trainer
        gathers under FSDP (``save_model`` calls this in every process; only the main one holds
        the gathered tensors); the weights are then taken from it, not from the sharded model."""
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        unwrapped = self.accelerator.unwrap_model(self.model)
        if state_dict is None:
            unwrapped.save_pretrained(output_dir)
        elif isinstance(unwrapped, MoDModel):
            unwrapped.save_pretrained(output_dir, state_dict=state_dict)
        else:  # peft selects the adapter's tensors from its own keys
            unwrapped.save_pretrained(output_dir, state_dict=gathered_state_dict(state_dict))
        if not isinstance(unwrapped, MoDModel):  # a LoRA-only adapter: record its base beside peft's files
            write_base_record(output_dir, self._fingerprint, __version__)
        if self.tokenizer_to_save is not None:
            self.tokenizer_to_save.save_pretrained(output_dir)
        if self._run_config is not None:
            from ..utils.models import record_base_model

            record_base_model(output_dir, self._run_config.model)
            Path(output_dir, TRAIN_CONFIG_NAME).write_text(json.dumps(self._run_config.to_dict(), indent=2) + "\n")
            prompt = {"prompt_style": self.prompt_style}
            if self._run_config.chat_template is not None:  # the template the run rendered with (load_model set it)
                prompt["chat_template"] = getattr(self.tokenizer_to_save, "chat_template", None)
            Path(output_dir, PROMPT_FILE).write_text(json.dumps(prompt) + "\n")
        from ..utils.publish import make_portable  # what a user publishes: hub names, readable by transformers 4.x

        make_portable(output_dir, self._run_config.model if self._run_config is not None else None)

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint into a hidden folder, then rename it into place: a kill at
        any moment leaves every ``checkpoint-N`` folder complete. Every process writes files there
        (its RNG state at least); each run folder has one owner (:meth:`_staging_roles`), which
        clears the staging folder before anyone writes (a killed run's leftovers too), renames the
        checkpoint into place once all have written, and removes whatever else stayed."""
        run_dir = self._get_output_dir(trial=trial)
        staging = os.path.join(run_dir, ".staging")
        name = f"checkpoint-{self.state.global_step}"
        owner, writes = self._staging_roles(staging)
        self.accelerator.wait_for_everyone()  # every process writes its RNG state there: not before the clean-up
        original = self._get_output_dir
        self._get_output_dir = lambda trial=None: staging
        save_limit, self.args.save_total_limit = self.args.save_total_limit, None
        on_each_node, self.args.save_on_each_node = self.args.save_on_each_node, writes  # should_save: writes
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._get_output_dir = original
            self.args.save_total_limit = save_limit
            self.args.save_on_each_node = on_each_node
        self.accelerator.wait_for_everyone()
        if owner:
            target = os.path.join(run_dir, name)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(os.path.join(staging, name), target)
            shutil.rmtree(staging, ignore_errors=True)  # nothing of any process stays behind
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=run_dir, save_total_limit=save_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _staging_roles(self, staging: str) -> tuple[bool, bool]:
        """``(owner, writes)`` of this process for the checkpoint ``staging`` folder, which the owner
        has cleared on return. Rank 0 owns its folder and writes the whole checkpoint. A process that
        does not see rank 0's folder (a node with a disk of its own: found by a marker of a fresh name
        rank 0 writes there) shares its node's first process's folder, which that process owns and,
        unless the model is sharded, writes a whole checkpoint into (as ``save_on_each_node`` would),
        so the node resumes from it; every other process writes only its own files (RNG state)."""
        if self.args.world_size == 1:
            shutil.rmtree(staging, ignore_errors=True)
            return True, True
        from uuid import uuid4

        from accelerate.utils import broadcast_object_list

        first = self.args.process_index == 0
        token = [uuid4().hex if first else None]
        if first:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
            Path(staging, f".rank0-{token[0]}").touch()  # removed with the staging folder
        broadcast_object_list(token)
        owner = first or (self.args.local_process_index == 0
                          and not os.path.exists(os.path.join(staging, f".rank0-{token[0]}")))
        if owner and not first:
            shutil.rmtree(staging, ignore_errors=True)
        return owner, owner and (first or not (self.is_fsdp_enabled or self.is_deepspeed_enabled))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume: the checkpoint's LoRA weights through peft, its MoD weights through the model
        (:func:`train` checked that the checkpoint was trained on this base model). The files hold whole
        tensors; when the model is sharded (FSDP2: its parameters are ``DTensor`` shards) each
        process copies its own part of them (:func:`~modetune.utils.sharding.loading_whole_tensors`)."""
        from peft import set_peft_model_state_dict
        from peft.utils import SAFETENSORS_WEIGHTS_NAME

        unwrapped = self.accelerator.unwrap_model(model or self.model)  # its base checked by train()
        peft_model = unwrapped.base_model if isinstance(unwrapped, MoDModel) else unwrapped
        adapter = Path(resume_from_checkpoint) / SAFETENSORS_WEIGHTS_NAME
        if adapter.exists() and hasattr(peft_model, "peft_config"):
            with loading_whole_tensors(peft_model):
                set_peft_model_state_dict(peft_model, load_safetensors(adapter))
        if isinstance(unwrapped, MoDModel):
            unwrapped.load_mod_weights(resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        """Resume the optimizer and scheduler, then set each group's rate from the schedule as
        planned now: ``lr_g * lambda(step)``. For a plain resume that is the saved rate, bit for
        bit; for an extended run (a larger ``max_steps``) the linear decay is re-planned for the new
        total from the resumed step on, instead of the saved rate (0 at the old end) being used once."""
        super()._load_optimizer_and_scheduler(checkpoint)
        scheduler = self.lr_scheduler
        if checkpoint is None or not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            return
        import warnings

        scheduler.last_epoch -= 1  # step() recomputes lr_g * lambda(step) for the restored step
        with warnings.catch_warnings():  # "step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()


def run_mean_loss(history: list[dict], fallback: float) -> float:
    """The mean per-step training loss of a run from its logged rows: ``sum_i loss_i * (step_i -
    step_{i-1}) / last_step`` (each logged ``loss`` is the mean over the steps since the previous log)."""
    total, previous = 0.0, 0
    for row in history:
        if "loss" in row and row.get("step", 0) > previous:
            total += row["loss"] * (row["step"] - previous)
            previous = row["step"]
    return total / previous if previous else fallback


class _StartStep(TrainerCallback):
    """Per-step sums of the logged losses count optimizer steps from where this ``train()`` starts:
    a resumed run begins at its checkpoint's step, not 0."""

    def __init__(self, count_steps_from) -> None:
        self.count_steps_from = count_steps_from

    def on_train_begin(self, args, state, control, **kwargs):
        self.count_steps_from(state.global_step)


class _JsonlLogger(TrainerCallback):
    """A Trainer callback appending every log to ``log.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def train(config: TrainConfig, resume: bool | str | None = False, overwrite: bool = False,
          callbacks: Sequence = ()) -> dict:
    """Run a training job end to end; returns the summary dict (also written to ``summary.json``).

    A folder that already holds a run is refused unless ``resume`` (continue from its newest
    complete checkpoint, ``True`` or ``"latest"``, or from the checkpoint folder it names; with the
    same settings) or ``overwrite`` (remove it and start over). With ``push_to_hub`` the finished
    adapter is pushed last (:func:`push_adapter`).
    ``callbacks``: ``transformers.TrainerCallback`` objects added to the Trainer (W&B-style hooks,
    early stopping, the tests' fault injection); one with an ``install(trainer)`` method is given
    the trainer first.
    """
    from transformers import DataCollatorForSeq2Seq, set_seed

    config.check_device(torch.cuda.is_available())
    if not torch.cuda.is_available():  # DeepSpeed, when installed, would print a warning while it guesses
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    check_launcher_sharding(torch.cuda.is_available())
    output_dir = Path(config.output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    check_batch(config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.router_warmup_steps > 0 and world_size > 1:  # a contradiction: refused before the model loads
        raise ConfigError("router_warmup_steps freezes the body by requires_grad, which DDP cannot follow: "
                          "run the warm-up in one process.")
    resume_from = prepare_run_dir(config, resume, overwrite, is_main)
    if resume_from == COMPLETE:  # a finished run is never changed by a resume
        return finished_run(config, is_main)
    warn_offline_push(config, is_main)
    if config.project:  # W&B reads its project from the environment only
        os.environ["WANDB_PROJECT"] = config.project
    set_seed(config.seed)
    columns = parse_columns(config.columns)  # the field renaming of local files ({}: none)
    records = load_training_records(config.data, config.max_records, config.seed, columns)
    if is_main:  # the contamination guard: warn before the model loads
        warn_training_overlap(records, config.contamination_warn_at)
    train_records, val_records = split_validation(records, config.val_size, config.seed)
    if config.val_data is not None:  # validation records of their own instead of the carve-out
        train_records, val_records = records, load_training_records(config.val_data, None, config.seed, columns)
    model, tokenizer = build_model(config)
    if resume_from is not None:  # trained on this base? Only then is the folder readied (trimmed log, ...)
        if stored_fingerprint(resume_from) is not None:
            check_adapter_base(resume_from, model.base_fingerprint if isinstance(model, MoDModel)
                               else base_fingerprint(model))
        settle_resume(config, resume_from, resume, is_main)
    tokenizer.padding_side = "right"
    train_rows = tokenize_records(train_records, tokenizer, config.cutoff_len, config.train_on_inputs, config.prompt_style)
    if config.packing:
        train_rows = pack_rows(train_rows, config.cutoff_len)
    val_rows = (tokenize_records(val_records, tokenizer, config.cutoff_len, config.train_on_inputs, config.prompt_style)
                if val_records else None)

    args = training_arguments(config, world_size)
    batch = global_batch(args, world_size)
    trainable, total = parameter_counts(model)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_fingerprint(records, output_dir)  # the training questions' hashes, once the model has loaded
        print(f"[modetune] {config.preset} on {config.model}: {trainable:,} trainable of {total:,} parameters "
              f"({100 * trainable / total:.4f}%); {len(train_rows)} training "
              f"{f'blocks of {config.cutoff_len} tokens (packed)' if config.packing else 'records'}, "
              f"{len(val_rows or [])} validation; global batch {batch['global_batch']} ({batch['processes']} "
              f"process(es) x {batch['micro_batch_size']} x {batch['gradient_accumulation_steps']} accumulation)")
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    trainer = MoDTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=val_rows,
                         data_collator=collator, tokenizer_to_save=tokenizer, run_config=config)
    if any("messages" in record for record in train_records):  # conversations render with the chat template
        trainer.prompt_style = "chat"
    trainer.add_callback(_JsonlLogger(output_dir / "log.jsonl"))
    name_tensorboard_run(trainer, config)
    if config.router_warmup_steps > 0:
        trainer.add_callback(RouterWarmup(body_parameters(model), config.router_warmup_steps))
    for callback in callbacks:  # the caller's (the fault tests install theirs: tests/faults.py)
        if hasattr(callback, "install"):
            callback.install(trainer)
        trainer.add_callback(callback)
    started = time.perf_counter()
    if resume_from is not None and reached_end(resume_from, config):
        trainer.finish_from(resume_from)  # the Trainer would take one step too many
    else:
        trainer.train(resume_from_checkpoint=resume_from)
    final_dir = output_dir / "adapter"
    stage = stage_path(final_dir)  # the adapter appears whole or not at all
    if is_main:
        clean_leftovers(final_dir)
    trainer.save_model(str(stage))
    if is_main:
        shutil.copyfile(output_dir / FINGERPRINT_NAME, stage / FINGERPRINT_NAME)
        commit(stage, final_dir)
    val_loss = trainer.evaluate()["eval_loss"] if val_rows else None
    summary = summarise(output_dir, config, trainable, total, final_dir, time.perf_counter() - started, val_loss,
                        batch, write=is_main)  # summary, card and plots: written by the main process only
    if is_main:
        print(format_summary(summary))
        if config.push_to_hub:
            push_adapter(final_dir, config)
    return summary
