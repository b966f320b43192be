"""The ``TrainingArguments`` that ``make train`` builds from the config (one definition, shared with the benchmarks)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainingArguments

from persona_pipeline.core.config import Config


def training_arguments(cfg: Config, output_dir: Path, *, has_cuda: bool, dtype: torch.dtype) -> TrainingArguments:
    """The Trainer settings of ``make train`` (checkpoints under ``output_dir``); also used by bench-train-trl."""
    t = cfg.train
    by_steps = t.save_steps is not None and t.save_steps > 0
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        optim=t.optim,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="epoch",
        save_strategy="steps" if by_steps else "epoch",
        save_steps=t.save_steps if by_steps else 500,
        save_total_limit=t.save_total_limit,
        seed=cfg.seed,
        bf16=has_cuda and dtype == torch.bfloat16,
        fp16=has_cuda and dtype == torch.float16,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        dataloader_pin_memory=has_cuda,
        use_cpu=not has_cuda,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[r for r in t.report_to if r != "tensorboard"] or "none",
    )
