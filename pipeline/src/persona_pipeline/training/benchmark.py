"""What the training benchmarks share: the benchmark config and the command that reproduces a result."""

from __future__ import annotations

import dataclasses

from persona_pipeline.core.config import Config


def without_lora_dropout(cfg: Config) -> Config:
    """The config with LoRA dropout off: random masks would blur comparisons between variants."""
    return dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, lora_dropout=0.0))


def config_arg(cfg: Config) -> str:
    """The config as ``make ... TRAIN_CONFIG=`` takes it (relative to pipeline/ when inside it)."""
    if cfg.source_file is None:
        return "configs/train_tiny.yaml"
    try:
        return str(cfg.source_file.relative_to(cfg.root))
    except ValueError:
        return str(cfg.source_file)
