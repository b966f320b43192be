"""``make demo``: every stage end to end on the tiny CPU model, then a table of what happened.

Each stage runs through the same entry point as its make target (the CLI's stage
table), in this process, so the demo exercises exactly what users run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_pipeline.core.config import Config, load_config
from persona_pipeline.core.errors import PipelineError


@dataclass
class Step:
    stage: str
    config: str  # "train", "eval" or "baseline"
    flags: list[str] = field(default_factory=list)
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def pipeline_steps(force: bool, gguf_types: tuple[str, ...]) -> list[Step]:
    """base-model .. compare, then a GGUF export and its check per type (shared with ``make quality``)."""
    f = ["--force"] if force else []
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
        steps += [Step("gguf", "train", ["--force"], [f"gguf.quant={quant}"]),
                  Step("gguf-check", "train", [], [f"gguf.quant={quant}"])]
    return steps


def plan(force: bool) -> list[Step]:
    return pipeline_steps(force, ("Q8_0",)) + [Step("publish-hf", "train", ["--dry-run"], ["publish.repo_id=demo/personas"])]


def _figures(step: Step, cfg: Config, run_dir: Path | None) -> tuple[str, str]:
    """One line of key figures and where the stage's output lies (read back from its files)."""
    out = cfg.outputs_dir
    if step.stage == "base-model":
        folder = cfg.resolve(cfg.model.name_or_path)
        info = _read_json(folder / "build_info.json") or _read_json(folder / "provenance.json")
        what = f", dequantized from {info['dequantized_from']}" if "dequantized_from" in info else f", vocab {info.get('vocab_size')}"
        return f"{info.get('parameters', 0) / 1e6:.1f}M params{what}", str(folder)
    if step.stage == "data":
        stats = _read_json(cfg.resolve(cfg.generate.output_dir) / "stats.json")
        recs = stats.get("records", {})
        return (f"{recs.get('train', '-')} train / {recs.get('eval', '-')} eval samples",
                str(cfg.resolve(cfg.generate.output_dir)))
    if run_dir is None:
        return "", ""
    if step.stage == "train":
        s = _read_json(run_dir / "train_summary.json")
        return (f"train loss {_fmt(s.get('final_train_loss'))}, eval loss {_fmt(s.get('base_eval_loss'))} -> "
                f"{_fmt(s.get('final_eval_loss'))}", str(run_dir))
    if step.stage == "merge":
        return "", str(run_dir / "merged")
    if step.stage == "eval":
        sub = "eval_baseline" if step.config == "baseline" else "eval"
        m = _read_json(run_dir / sub / "metrics.json").get("overall", {})
        return (f"R1 {_fmt(m.get('rouge1'))} R2 {_fmt(m.get('rouge2'))} RL {_fmt(m.get('rougeL'))} "
                f"BLEU {_fmt(m.get('bleu'))} blend {_fmt(m.get('blend_rate'))}", str(run_dir / sub))
    if step.stage == "compare":
        return "", str(run_dir / "compare")
    if step.stage == "gguf-check":
        quant = next((o.split("=", 1)[1] for o in step.overrides if o.startswith("gguf.quant=")), cfg.gguf.quant)
        c = _read_json(run_dir / "gguf" / f"check-{quant.upper()}.json")
        return (f"{quant}: top-1 agree {_fmt(c.get('top1_agreement'))}, max |dlogit| {_fmt(c.get('max_logit_diff'), 4)}, "
                f"greedy equal {c.get('greedy_equal', '-')}/{c.get('prompts', '-')}", str(run_dir / "gguf"))
    if step.stage == "gguf":
        return "", str(run_dir / "gguf")
    if step.stage == "publish-hf":
        return "", str(run_dir / "publish")
    return "", ""


def run_plan(cfg: Config, steps: list[Step], overrides: tuple[str, ...] = ()) -> str:
    """Run ``steps`` with the train config ``cfg`` and its eval siblings; returns the table of what happened."""
    from persona_pipeline.cli import STAGES, _resolve, build_parser, stage_kwargs
    from persona_pipeline.core.runs import resolve_run

    if cfg.source_file is None:
        raise PipelineError("demo: config has no source file")
    configs = {
        "train": cfg.source_file,
        "eval": _sibling(cfg.source_file, "eval_"),
        "baseline": _sibling(cfg.source_file, "eval_", "_baseline"),
    }
    stages = {s.name: s for s in STAGES}
    run_dir: Path | None = None
    total = time.perf_counter()
    for i, step in enumerate(steps, 1):
        argv = [step.stage, "--config", str(configs[step.config]), *step.flags]
        if "run" in stages[step.stage].options:
            argv += ["--run", str(run_dir) if run_dir else "latest"]
        argv += list(overrides) + step.overrides
        print(f"\n=== [{i}/{len(steps)}] {step.stage} ({configs[step.config].name}) ===", flush=True)
        stage_args = build_parser().parse_args(argv)
        stage_cfg = load_config(stage_args.config, stage_args.overrides)
        start = time.perf_counter()
        rc = _resolve(stages[step.stage].target)(stage_cfg, **stage_kwargs(stages[step.stage], stage_args)) or 0
        step.seconds = time.perf_counter() - start
        if rc != 0:
            raise PipelineError(f"stopped: stage {step.stage} exited with {rc}")
        if step.stage == "train":
            run_dir = resolve_run(stage_cfg.runs_dir, "latest")
        step.figures, step.output = _figures(step, stage_cfg, run_dir)
        print(f"[{step.stage}] {step.seconds:.1f}s  {step.figures}", flush=True)
    return _table(steps, time.perf_counter() - total)


def run(cfg: Config, *, force: bool = False, overrides: tuple[str, ...] = ()) -> int:
    print(run_plan(cfg, plan(force), overrides))
    return 0


def _table(steps: list[Step], elapsed: float) -> str:
    rows = [("stage", "time", "key figures", "output")]
    rows += [(s.stage + (" (baseline)" if s.config == "baseline" else ""), f"{s.seconds:.1f}s", s.figures, s.output)
             for s in steps]
    rows.append(("total", f"{elapsed:.1f}s", "", ""))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    sep = "  ".join("-" * w for w in widths)
    return "\n" + "\n".join([line(rows[0]), sep, *map(line, rows[1:-1]), sep, line(rows[-1])])
