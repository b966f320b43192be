"""``persona-pipeline <stage> --config FILE [key=value ...]``: one subcommand per pipeline stage.

The config is loaded and validated before the stage module is imported, so
configuration mistakes fail fast (exit 2) without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from dataclasses import dataclass

from persona_pipeline.core.errors import PipelineError

DEFAULT_CONFIG = "configs/train_tiny.yaml"


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", imported lazily
    help: str
    options: tuple[str, ...] = ()
    needs_config: bool = True


STAGES: tuple[Stage, ...] = (
    Stage("base-model", "stages.base_model:run", "build the tiny local base model, or turn a GGUF shipped in a wheel into a HF folder (no Hub)", ("force",)),
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
    Stage("bench-train", "stages.bench_train:run", "benchmark: our batching vs padding to max_length", ("overrides",)),
    Stage("bench-eval", "stages.bench_eval:run", "benchmark: batched vs one-at-a-time generation"),
    Stage("bench-format", "stages.bench_format:run", "benchmark: plain Human:/Name: prompt vs the model's chat template"),
    Stage("bench-summary", "stages.bench_summary:run", "collect outputs/bench/*.json into outputs/bench/summary.md"),
    Stage("demo", "stages.demo:run", "the whole pipeline end to end on the tiny model", ("force", "overrides")),
    Stage("quality", "stages.quality:run", "the whole pipeline on a real pretrained model (SmolLM2), GGUF F16 + Q8_0", ("force", "overrides")),
    Stage("show-config", "cli:show_config", "print the resolved, validated config"),
)

_OPTION_ARGS: dict[str, tuple[tuple[str, ...], dict]] = {
    "force": (("--force",), dict(action="store_true", help="rebuild even if the output exists")),
    "run": (("--run",), dict(default="latest", help="run name, folder, or 'latest' (default)")),
    "resume": (("--resume",), dict(default=None, help="continue a run from its last checkpoint ('latest', a name or a folder)")),
    "dry_run": (("--dry-run",), dict(action="store_true", help="stage everything locally, send nothing")),
    "input": (("--input",), dict(default=None, help="input file")),
    "output": (("--output",), dict(default=None, help="output file or folder")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona-pipeline",
        description="Persona fine-tuning pipeline: data -> tokenize -> train -> merge -> eval -> gguf -> publish.",
        epilog="Every stage takes --config FILE and any number of key=value overrides, "
        "e.g. `persona-pipeline train --config configs/train_tiny.yaml train.epochs=1`.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for stage in STAGES:
        sp = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        sp.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default: {DEFAULT_CONFIG})")
        for opt in stage.options:
            if opt == "overrides":  # the key=value list below, passed through as well
                continue
            flags, kwargs = _OPTION_ARGS[opt]
            sp.add_argument(*flags, **kwargs)
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="override config values")
        sp.set_defaults(_stage=stage)
    return parser


def show_config(cfg) -> int:
    from persona_pipeline.core.config import dump_config

    print(dump_config(cfg), end="")
    return 0


def stage_kwargs(stage: Stage, args: argparse.Namespace) -> dict:
    """The declared options of ``stage`` as keyword arguments (a stage's signature is its CLI)."""
    kwargs = {opt: getattr(args, opt) for opt in stage.options if opt != "overrides"}
    if "overrides" in stage.options:
        kwargs["overrides"] = tuple(args.overrides)
    return kwargs


def _resolve(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(f"persona_pipeline.{module}"), func)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    stage: Stage = args._stage
    start = time.perf_counter()
    try:
        from persona_pipeline.core.config import load_config

        cfg = load_config(args.config, args.overrides)
        rc = _resolve(stage.target)(cfg, **stage_kwargs(stage, args)) or 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"\ninterrupted: {stage.name}", file=sys.stderr)
        return 130
    if rc == 0 and os.environ.get("PERSONA_PIPELINE_QUIET_SUMMARY") != "1":
        print(f"[{stage.name}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
