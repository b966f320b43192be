"""``make bench`` epilogue: gather outputs/bench/*.json into outputs/bench/summary.md."""

from __future__ import annotations

import json
from pathlib import Path

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_write_text
from persona_pipeline.core.runs import bench_file


def summarize(bench_dir: Path) -> str:
    files = sorted(p for p in bench_dir.glob("bench_*.json"))
    if not files:
        raise PipelineError(f"no benchmark results in {bench_dir}", hint="run `make bench-train bench-eval` first")
    lines = ["# Benchmarks", "", "Each benchmark runs its variants side by side in one process; figures are medians.", ""]
    for path in files:
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise PipelineError(f"{path}: not valid JSON ({exc})") from None
        lines += [f"## {path.stem}", ""]
        if data.get("reference"):
            lines += [f"Reference approach: {data['reference']}", ""]
        summary = data.get("summary", {})
        lines += ["| figure | value |", "|---|---|"]
        for key, value in summary.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
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
