"""Persona fine-tuning pipeline: LoRA / QLoRA fine-tuning of causal LMs to answer as documentary personas."""

__version__ = "0.1.0"
