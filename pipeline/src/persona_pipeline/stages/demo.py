"""``make demo``: every stage end to end on the tiny CPU model, then a table of what happened; ``make
quality``: the same on a real pretrained model (SmolLM2), with GGUF F16 and Q8_0.

Each stage runs through the same entry point as its make target (the stage table,
with the options it declares), in this process, so the demo exercises exactly
what users run. The key figures are read back from the files the stages wrote;
a missing file is an error, not a blank cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_pipeline.core.config import Config, load_config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.gguf_source import PROVENANCE
from persona_pipeline.core.runs import BUILD_INFO, DATA_STATS, RunDir, read_json
from persona_pipeline.stages import by_name, resolve


@dataclass
class Step:
    stage: str
    config: str  # "train", "eval" or "baseline"
    options: dict[str, Any] = field(default_factory=dict)  # keyword options the stage declares
    overrides: list[str] = field(default_factory=list)
    seconds: float = 0.0
    figures: str = ""
    output: str = ""


def _sibling(train_config: Path, prefix: str, suffix: str = "") -> Path:
    """configs/train_tiny.yaml -> configs/eval_tiny.yaml / configs/eval_tiny_baseline.yaml."""
    name = train_config.name
    if not name.startswith("train_"):
        raise PipelineError(
            f"demo needs a train_<model>.yaml config, got {train_config}",
            hint="use TRAIN_CONFIG=configs/train_tiny.yaml",
        )
    path = train_config.with_name(f"{prefix}{name[len('train_'):-len('.yaml')]}{suffix}.yaml")
    if not path.is_file():
        raise PipelineError(f"demo: {path} not found (the eval config matching {train_config.name})")
    return path


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


DEMO_QUANT = "Q8_0"
QUALITY_QUANTS = ("F16", "Q8_0")


def pipeline_steps(force: bool, gguf_types: tuple[str, ...]) -> list[Step]:
    """base-model .. compare, then a GGUF export and its llama.cpp check per type (demo and quality)."""
    f = {"force": force}
    steps = [
        Step("base-model", "train", f),
        Step("data", "train"),
        Step("validate-data", "train"),
        Step("tokenize", "train", f),
        Step("train", "train"),
        Step("merge", "train"),
        Step("eval", "baseline"),
        Step("eval", "eval"),
        Step("compare", "eval"),
    ]
    for quant in gguf_types:
        steps += [Step("gguf", "train", {"force": True}, [f"gguf.quant={quant}"]),
                  Step("gguf-check", "train", {}, [f"gguf.quant={quant}"])]
    return steps


def plan(force: bool) -> list[Step]:
    return [*pipeline_steps(force, (DEMO_QUANT,)),
            Step("publish-hf", "train", {"dry_run": True}, ["publish.repo_id=demo/personas"])]


def quality_plan(force: bool) -> list[Step]:
    """`make quality`: the same pipeline on a real pretrained model; F16 must match transformers in llama.cpp."""
    return pipeline_steps(force, QUALITY_QUANTS)


def _figures(step: Step, cfg: Config, run: RunDir | None) -> tuple[str, str]:
    """One line of key figures and where the stage's output lies (read back from its files)."""
    if step.stage == "base-model":
        model_dir = cfg.resolve(cfg.model.name_or_path)
        if cfg.base_model.from_gguf is not None:
            info = read_json(model_dir / PROVENANCE, written_by="make base-model")
            return f"{info['parameters'] / 1e6:.1f}M params, dequantized from {info['dequantized_from']}", str(model_dir)
        info = read_json(model_dir / BUILD_INFO, written_by="make base-model")
        return f"{info['parameters'] / 1e6:.1f}M params, vocab {info['vocab_size']}", str(model_dir)
    if step.stage == "data":
        out = cfg.resolve(cfg.generate.output_dir)
        recs = read_json(out / DATA_STATS, written_by="make data")["records"]
        return f"{recs['train']} train / {recs['eval']} eval samples", str(out)
    if run is None:
        return "", ""
    if step.stage == "train":
        s = read_json(run.train_summary, written_by="make train")
        return (f"train loss {_fmt(s['final_train_loss'])}, eval loss {_fmt(s['base_eval_loss'])} -> "
                f"{_fmt(s['final_eval_loss'])}", str(run.path))
    if step.stage == "merge":
        return "", str(run.merged)
    if step.stage == "eval":
        folder = run.eval_baseline if step.config == "baseline" else run.eval
        m = read_json(folder.metrics, written_by="make eval")["overall"]
        return (f"R1 {_fmt(m['rouge1'])} R2 {_fmt(m['rouge2'])} RL {_fmt(m['rougeL'])} "
                f"BLEU {_fmt(m['bleu'])} blend {_fmt(m['blend_rate'])}", str(folder.path))
    if step.stage == "compare":
        return "", str(run.compare)
    if step.stage == "gguf-check":
        quant = next(o.split("=", 1)[1] for o in step.overrides if o.startswith("gguf.quant="))
        c = read_json(run.gguf_check(quant), written_by="make gguf-check")
        agree = (f"{quant}: top-1 agree {_fmt(c['top1_agreement'])}, max |dlogit| {_fmt(c['max_logit_diff'], 4)}, "
                 f"greedy equal {c['greedy_equal']}/{c['prompts']}") if c["mode"] == "llama.cpp" else \
            f"tensors only: max rel. error {c['max_rel_rms_error']:.2e}"
        return agree, str(run.gguf)
    if step.stage == "gguf":
        return "", str(run.gguf)
    if step.stage == "publish-hf":
        return "", str(run.publish)
    return "", ""


def run(cfg: Config, *, force: bool = False, overrides: tuple[str, ...] = ()) -> int:
    return _run_plan(cfg, plan(force), overrides)


def quality(cfg: Config, *, force: bool = False, overrides: tuple[str, ...] = ()) -> int:
    return _run_plan(cfg, quality_plan(force), overrides)


def _run_plan(cfg: Config, steps: list[Step], overrides: tuple[str, ...]) -> int:
    if cfg.source_file is None:
        raise PipelineError("demo: config has no source file")
    configs = {
        "train": cfg.source_file,
        "eval": _sibling(cfg.source_file, "eval_"),
        "baseline": _sibling(cfg.source_file, "eval_", "_baseline"),
    }
    run_dir: RunDir | None = None
    total = time.perf_counter()
    for i, step in enumerate(steps, 1):
        stage = by_name(step.stage)
        kwargs = dict(step.options)
        if "run" in stage.options:
            kwargs["run"] = str(run_dir.path) if run_dir else "latest"
        unknown = set(kwargs) - set(stage.options)
        if unknown:  # the plan may only use options the stage declares, as the CLI does
            raise PipelineError(f"demo plan: {step.stage} does not take {', '.join(sorted(unknown))}")
        print(f"\n=== [{i}/{len(steps)}] {step.stage} ({configs[step.config].name}) ===", flush=True)
        stage_cfg = load_config(configs[step.config], [*overrides, *step.overrides])
        start = time.perf_counter()
        rc = resolve(stage)(stage_cfg, **kwargs) or 0
        step.seconds = time.perf_counter() - start
        if rc != 0:
            raise PipelineError(f"demo stopped: stage {step.stage} exited with {rc}")
        if step.stage == "train":
            run_dir = RunDir.resolve(stage_cfg.runs_dir, "latest")
        step.figures, step.output = _figures(step, stage_cfg, run_dir)
        print(f"[{step.stage}] {step.seconds:.1f}s  {step.figures}", flush=True)
    elapsed = time.perf_counter() - total
    print(_table(steps, elapsed))
    return 0


def _table(steps: list[Step], elapsed: float) -> str:
    rows = [("stage", "time", "key figures", "output")]
    rows += [(s.stage + (" (baseline)" if s.config == "baseline" else ""), f"{s.seconds:.1f}s", s.figures, s.output)
             for s in steps]
    rows.append(("total", f"{elapsed:.1f}s", "", ""))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n" + "\n".join([line(rows[0]), sep, *map(line, rows[1:-1]), sep, line(rows[-1])])
