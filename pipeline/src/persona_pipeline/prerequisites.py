"""What a stage needs that a fresh clone lacks, built first so that every target works in any order.

``make bench`` (or tokenize, train, eval, validate-data) on a fresh clone builds
the tiny base model and the generated datasets it needs, through the same
stages as ``make base-model`` and ``make data``, as ``make demo`` does. Only
what those targets write is built: a model folder elsewhere, a Hub id, or your
own data.train / data.eval paths are never created here (their errors stay).
This sits above the stages, beside the CLI: a stage never runs another stage.
"""

from __future__ import annotations

import os
from pathlib import Path

from persona_pipeline.core.config import Config, model_location
from persona_pipeline.stages import by_name, resolve

# stage -> what it reads that a fresh clone does not have
NEEDS: dict[str, tuple[str, ...]] = {
    "tokenize": ("base-model", "data"),
    "train": ("base-model", "data"),
    "eval": ("base-model", "data"),
    "validate-data": ("data",),
    "bench-train": ("base-model", "data"),
    "bench-train-trl": ("base-model", "data"),
    "profile-train": ("base-model", "data"),
    "bench-eval": ("base-model", "data"),
    "bench-format": ("base-model", "data"),
}


def _base_model_missing(cfg: Config) -> str | None:
    folder = Path(model_location(cfg))
    built_here = folder.is_absolute() and folder.resolve().is_relative_to((cfg.outputs_dir / "models").resolve())
    if built_here and not (folder / "config.json").is_file():
        return f"base model {folder} is missing: building it first (as `make base-model` does)"
    return None


def _data_missing(cfg: Config) -> str | None:
    out_dir = cfg.resolve(cfg.generate.output_dir)
    wanted = [cfg.resolve(cfg.data.train), cfg.resolve(cfg.data.eval)]
    generated = [out_dir / "train.jsonl.enc", out_dir / "eval.jsonl.enc"]
    if [p.resolve() for p in wanted] == [p.resolve() for p in generated] and not any(p.exists() for p in wanted):
        return f"no datasets in {out_dir}: generating them first (as `make data` does)"
    return None


MISSING = {"base-model": _base_model_missing, "data": _data_missing}


def build_missing(stage: str, cfg: Config) -> None:
    """Run the stages that make what ``stage`` needs and is missing (nothing when all is there)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # several torchrun processes must not build it at once
        return
    if stage == "eval" and cfg.eval.source != "base":  # a run's eval needs a trained run first: not built here
        return
    for need in NEEDS.get(stage, ()):
        notice = MISSING[need](cfg)
        if notice:
            print(f"notice: {notice}", flush=True)
            resolve(by_name(need))(cfg)
