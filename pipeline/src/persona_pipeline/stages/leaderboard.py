"""``make leaderboard``: one table over every evaluated run, beside the seed's targets and its reported result.

Reads ``runs/*/eval/metrics.json`` (fine-tuned), ``runs/*/eval_baseline/metrics.json``
and ``baselines/*/metrics.json`` (un-tuned) under ``paths.outputs``; nothing is
recomputed. Rows are sorted by ROUGE-L. The eval set column (its sha256 prefix)
says which rows are comparable: scores on different eval sets are not. A
metric with a bootstrap 95 % interval in the metrics file (``overall.ci``, see
:mod:`persona_pipeline.evaluation.intervals`) is shown as ``value [low, high]``.
Writes ``outputs/leaderboard.md`` and prints it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_write_text
from persona_pipeline.core.runs import BASELINES_DIR, LATEST, RunDir
from persona_pipeline.evaluation.report import fmt

LEADERBOARD = "leaderboard.md"
METRICS = (
    ("rouge1", "ROUGE-1", False), ("rouge2", "ROUGE-2", False), ("rougeL", "ROUGE-L", False), ("bleu", "BLEU", False),
    ("semantic_similarity", "sem. sim.", False), ("persona_match", "persona match", True), ("blend_rate", "blend", True),
)
# The seed project's figures (its README): the targets it set and what its Llama 3.1 8B Instruct run reached.
SEED_ROWS = (
    ("seed target", "", {"rouge1": "0.45-0.50", "rouge2": "0.20-0.25", "bleu": "0.18-0.22"}),
    ("seed result", "Llama 3.1 8B Instruct", {"rouge1": "0.345", "rouge2": "0.149", "bleu": "0.135"}),
)


def _cell(overall: dict[str, Any], key: str, pct: bool) -> str:
    """The value, with its 95 % interval when the eval recorded one (corpus BLEU has none)."""
    ci = (overall.get("ci") or {}).get(key)
    value = fmt(overall.get(key), pct)
    return f"{value} [{fmt(ci[0], pct)}, {fmt(ci[1], pct)}]" if ci else value


def _model_name(model: dict[str, Any]) -> str:
    name = str(model.get("model", "?"))
    return Path(name).name if name.startswith("/") else name


def evaluated(outputs: Path) -> list[tuple[str, Path]]:
    """(label, metrics.json) of every evaluation under ``outputs``."""
    found: list[tuple[str, Path]] = []
    runs = outputs / "runs"
    for path in sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink() and p.name != LATEST) if runs.is_dir() else []:
        run = RunDir(path)
        for evals, suffix in ((run.eval, ""), (run.eval_baseline, " (baseline)")):
            if evals.metrics.is_file():
                found.append((run.name + suffix, evals.metrics))
    base = outputs / BASELINES_DIR
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        if (folder / "metrics.json").is_file():
            found.append((f"{folder.name} (baseline, no run)", folder / "metrics.json"))
    return found


def rows(outputs: Path) -> list[list[str]]:
    """Table rows for every evaluation, best ROUGE-L first."""
    table = []
    for label, path in evaluated(outputs):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            o = m["overall"]
        except (OSError, ValueError, KeyError) as exc:
            raise PipelineError(f"{path}: unreadable eval metrics ({type(exc).__name__}: {exc})",
                                hint="re-run `make eval` for that run, or remove the folder") from None
        data = f"{m.get('train_set', {}).get('n_records', '?')} train / {m['eval_set']['n_evaluated']} eval"
        score = o.get("rougeL") if isinstance(o.get("rougeL"), float) else -1.0
        table.append((score, [label, str(m.get("config", "?")), _model_name(m.get("model", {})), data,
                              m["eval_set"]["sha256"][:8], *(_cell(o, k, pct) for k, _, pct in METRICS)]))
    return [r for _, r in sorted(table, key=lambda t: -t[0])]


def render(outputs: Path) -> str:
    header = ["run", "config", "model", "data", "eval set", *(label for _, label, _ in METRICS)]
    body = rows(outputs)
    lines = [
        "# Leaderboard",
        "",
        f"Every evaluated run under `{outputs}`, best ROUGE-L first; compare rows with the same eval set only. "
        "BLEU is corpus BLEU on a 0-1 scale, as the seed reports it; [low, high] is a bootstrap 95 % interval.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 5 + "---:|" * len(METRICS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    for label, model, figures in SEED_ROWS:
        lines.append("| " + " | ".join([label, "seed", model, "seed data", "-", *(figures.get(k, "-") for k, _, _ in METRICS)]) + " |")
    if not body:
        lines += ["", "No evaluated run yet: `make demo`, or `make train merge eval eval-baseline`."]
    return "\n".join(lines) + "\n"


def run(cfg: Config) -> int:
    text = render(cfg.outputs_dir)
    path = atomic_write_text(cfg.outputs_dir / LEADERBOARD, text)
    print(text, end="")
    print(f"\nwritten to {path}")
    return 0
