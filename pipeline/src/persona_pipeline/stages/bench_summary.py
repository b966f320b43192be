"""``make bench`` epilogue: gather outputs/bench/*.json into outputs/bench/summary.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_write_text
from persona_pipeline.core.runs import bench_file


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rows(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Flatten nested figures into (dotted key, text); a {median, min, max} dict reads "median [min-max]"."""
    if isinstance(value, dict):
        if set(value) == {"median", "min", "max"}:
            return [(prefix, f"{_shown(value['median'])} [{_shown(value['min'])}-{_shown(value['max'])}]")]
        return [row for k, v in value.items() for row in _rows(f"{prefix}.{k}" if prefix else str(k), v)]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [(prefix, f"{len(value)} entries (see the JSON)")]
    return [(prefix, _shown(value))]


def _figures(data: dict) -> dict[str, Any]:
    """The part of a result file worth a table: its summary, or (a profile) its phase shares and top operators."""
    if "summary" in data:
        return data["summary"]
    if data.get("name") == "profile_train":
        top = {o["op"]: o["share"] for o in data.get("top_operators_by_self_cpu", [])[:8]}
        return {"step_seconds_profiled": data.get("step_seconds_profiled"), "threads": data.get("threads"),
                "phase_share_of_step": data.get("phase_share_of_step", {}), "top_operator_share": top}
    return {}


def summarize(bench_dir: Path) -> str:
    files = sorted([*bench_dir.glob("bench_*.json"), *bench_dir.glob("profile_*.json")])
    if not files:
        raise PipelineError(f"no benchmark results in {bench_dir}", hint="run `make bench-train bench-eval` first")
    lines = ["# Benchmarks", "", "Each benchmark runs its variants side by side in one run; "
             "figures are medians [min-max over repeats].", ""]
    for path in files:
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise PipelineError(f"{path}: not valid JSON ({exc})") from None
        lines += [f"## {path.stem}", ""]
        if data.get("reference"):
            lines += [f"Reference approach: {data['reference']}", ""]
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {key} | {text} |" for key, text in _rows("", _figures(data))]
        if data.get("command"):
            lines += ["", f"Reproduce: `{data['command']}`"]
        lines.append("")
    return "\n".join(lines)


def run(cfg: Config) -> int:
    out = bench_file(cfg.outputs_dir, "summary.md")
    text = summarize(out.parent)
    out = atomic_write_text(out, text)
    print(text)
    print(f"written: {out}")
    return 0
