"""The Hugging Face ``TrainingArguments`` of a run (:func:`training_arguments`) and its global batch."""

from __future__ import annotations

import torch

from ..utils.errors import ConfigError
from .config import TrainConfig


def training_arguments(config: TrainConfig, world_size: int = 1):
    """The HF ``TrainingArguments`` of a run; a trainer option left unset (``optim``, ``warmup_ratio``,
    ``neftune_noise_alpha``, ``run_name``, ``project``) is not passed: the Trainer's own default."""
    from transformers import TrainingArguments

    accumulation = max(1, config.batch_size // (config.micro_batch_size * world_size))
    options = {"optim": config.optim, "neftune_noise_alpha": config.neftune_noise_alpha, "run_name": config.run_name,
               "project": config.project}
    return TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm or 0.0,
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
        torch_compile=config.torch_compile,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to=config.report_to,
        remove_unused_columns=False,
        prediction_loss_only=True,
        disable_tqdm=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        # transformers 5: a warmup_steps below 1 is a ratio of the steps (rounded up)
        warmup_steps=config.warmup_steps if config.warmup_ratio is None else config.warmup_ratio,
        **{key: value for key, value in options.items() if value is not None},
    )


def global_batch(args, world_size: int) -> dict:
    """How the Trainer makes up the global batch: its processes (the launcher's ``WORLD_SIZE``, which
    the accumulation was computed for, must be the process group's size), micro batch, accumulation."""
    if args.world_size != world_size:
        raise ConfigError(f"WORLD_SIZE is {world_size} but the Trainer runs {args.world_size} process(es): the "
                          "gradient accumulation would not make up batch_size. Launch with torchrun or accelerate.")
    micro, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    return {"processes": args.world_size, "micro_batch_size": micro, "gradient_accumulation_steps": accumulation,
            "global_batch": args.world_size * micro * accumulation}
