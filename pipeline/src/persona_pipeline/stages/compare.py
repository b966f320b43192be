"""``make compare``: baseline vs fine-tuned, as a markdown table, a PNG bar chart and a row in TRAINING_LOG.md.

Both evals must come from the same eval set: the eval-set hashes in the two
``metrics.json`` files must be equal, and each ``predictions.jsonl[.enc]``
must hold exactly the (prompt, reference) pairs its metrics were computed on.
Otherwise compare stops before writing anything.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_dir, atomic_write_text
from persona_pipeline.core.runs import RunDir, baseline_eval_dir, read_json
from persona_pipeline.evaluation.report import METRIC_ROWS, fmt
from persona_pipeline.evaluation.results import load_eval

log = logging.getLogger(__name__)

PER_PERSONA_METRICS = ("rougeL", "bleu", "semantic_similarity", "persona_match", "blend_rate")
CHART_METRICS = ["rouge1", "rouge2", "rougeL", "bleu", "semantic_similarity", "persona_match", "blend_rate", "runaway_rate"]
RUNS_HEADING = "## Runs"
LOG_COLUMNS = ["date", "run", "config", "train / eval", "epochs", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU",
               "sem. sim.", "persona match", "blend", "baseline ROUGE-L"]


def _check_same_set(base: dict, tuned: dict, base_dir: Path, tuned_dir: Path) -> None:
    b, t = base["eval_set"], tuned["eval_set"]
    if b["sha256"] != t["sha256"] or b["prompts_sha256"] != t["prompts_sha256"]:
        raise PipelineError(
            f"baseline and fine-tuned evals used different eval sets: {base_dir} ({b['path']}, sha256 {b['sha256'][:12]}, "
            f"{b['n_evaluated']} samples) vs {tuned_dir} ({t['path']}, sha256 {t['sha256'][:12]}, {t['n_evaluated']} samples)",
            hint="run `make eval-baseline RUN=<run>` and `make eval RUN=<run>` with the same data.eval and eval.max_samples",
        )


def _delta(b: Any, t: Any, better: bool | None) -> str:
    if b is None or t is None:
        return "n/a"
    d = t - b
    mark = "" if better is None or abs(d) < 1e-12 else (" ✓" if (d > 0) == better else " ✗")
    return f"{d:+.3f}{mark}"


def render_table(base: dict, tuned: dict) -> str:
    """The comparison markdown: overall metrics, then ROUGE-L / BLEU / fidelity per persona."""
    es = tuned["eval_set"]
    lines = [
        "# Baseline vs fine-tuned",
        "",
        f"- eval set: `{es['path']}` (sha256 `{es['sha256'][:12]}`), {es['n_evaluated']} samples, same prompts for both",
        f"- baseline: `{base['model']['model']}` ({base['created']})",
        f"- fine-tuned: `{tuned['model'].get('adapter') or tuned['model']['model']}` ({tuned['created']})",
        "",
        "| metric | baseline | fine-tuned | change |",
        "|---|---:|---:|---:|",
    ]
    for key, label, better in METRIC_ROWS:
        b, t = base["overall"].get(key), tuned["overall"].get(key)
        if b is None and t is None:
            continue
        lines.append(f"| {label} | {fmt(b)} | {fmt(t)} | {_delta(b, t, better)} |")
    lines += ["", "## Per persona", "", "| persona | metric | baseline | fine-tuned | change |", "|---|---|---:|---:|---:|"]
    for name, tp in tuned["per_persona"].items():
        bp = base["per_persona"].get(name, {})
        for key, label, better in METRIC_ROWS:
            if key in PER_PERSONA_METRICS and (bp.get(key) is not None or tp.get(key) is not None):
                lines.append(f"| {name} | {label} | {fmt(bp.get(key))} | {fmt(tp.get(key))} | {_delta(bp.get(key), tp.get(key), better)} |")
    notices = {m["embeddings"]["notice"] for m in (base, tuned) if m["embeddings"].get("notice")}
    if notices:
        lines += [""] + [f"Note: {n}" for n in sorted(notices)]
    lines += ["", "![baseline vs fine-tuned](comparison.png)", ""]
    return "\n".join(lines)


def render_chart(base: dict, tuned: dict, path: Path) -> None:
    """One bar-chart panel per metric: overall and each persona, baseline vs fine-tuned."""
    keys = [k for k in CHART_METRICS if base["overall"].get(k) is not None or tuned["overall"].get(k) is not None]
    labels = {k: lab for k, lab, _ in METRIC_ROWS}
    groups = ["overall", *tuned["per_persona"]]
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    # A bare Figure (no pyplot): no GUI backend, no global figure state to close.
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    x = np.arange(len(groups))

    def vals(m: dict, key: str) -> list[float]:
        src = [m["overall"], *[m["per_persona"].get(g, {}) for g in groups[1:]]]
        return [float(s.get(key) or 0.0) for s in src]

    for ax, key in zip(axes.flat, keys, strict=False):  # zip stops at the metrics: spare panels are switched off below
        ax.bar(x - 0.2, vals(base, key), 0.4, label="baseline", color="#9aa5b1")
        ax.bar(x + 0.2, vals(tuned, key), 0.4, label="fine-tuned", color="#2f6fb3")
        ax.set_title(labels[key] + (" (lower is better)" if key.endswith("_rate") else ""), fontsize=10)
        ax.set_xticks(x, groups, fontsize=8)
        ax.set_ylim(0, max(1.0, *vals(base, key), *vals(tuned, key)) if key != "bleu" else None)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{tuned['config']}: baseline vs fine-tuned on {tuned['eval_set']['n_evaluated']} held-out samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- TRAINING_LOG.md


def _run_facts(cfg: Config, run: RunDir, tuned: dict) -> dict:
    """Epochs (from the run's training summary) and data sizes of the run."""
    summary = read_json(run.train_summary, written_by="make train")
    return {"epochs": summary.get("epochs", cfg.train.epochs), "train": tuned.get("train_set", {}).get("n_records"),
            "eval": tuned["eval_set"]["n_evaluated"]}


def log_row(cfg: Config, run: RunDir, base: dict, tuned: dict) -> str:
    facts = _run_facts(cfg, run, tuned)
    o = tuned["overall"]
    try:
        run_label = str(run.path.resolve().relative_to(cfg.resolve(cfg.paths.training_log).resolve().parent))
    except ValueError:
        run_label = str(run.path)
    epochs = facts["epochs"]
    cells = [
        _dt.date.today().isoformat(), f"`{run_label}`", tuned["config"], f"{facts['train']} / {facts['eval']}",
        f"{epochs:g}" if isinstance(epochs, (int, float)) else str(epochs),
        fmt(o.get("rouge1")), fmt(o.get("rouge2")), fmt(o.get("rougeL")), fmt(o.get("bleu")),
        fmt(o.get("semantic_similarity")), fmt(o.get("persona_match"), True), fmt(o.get("blend_rate"), True),
        fmt(base["overall"].get("rougeL")),
    ]
    return "| " + " | ".join(cells) + " |"


def append_log_row(log_path: Path, row: str, run_key: str) -> None:
    """Add ``row`` to the table under "## Runs" (created if missing); replaces the row of the same run."""
    text = log_path.read_text(encoding="utf-8") if log_path.is_file() else "# Training log\n"
    lines = text.rstrip("\n").split("\n")
    header = ["| " + " | ".join(LOG_COLUMNS) + " |", "|" + "---|" * len(LOG_COLUMNS)]
    if RUNS_HEADING not in lines:
        lines += ["", RUNS_HEADING, "", *header]
    h = lines.index(RUNS_HEADING)
    # The table: the first line starting with "|" after the heading, and the "|" lines that follow it.
    start = next((i for i in range(h + 1, len(lines)) if lines[i].startswith("|") or lines[i].startswith("## ")), len(lines))
    if start == len(lines) or not lines[start].startswith("|"):
        lines[h + 1 : h + 1] = ["", *header]
        start = h + 2
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    table = [ln for ln in lines[start:end] if run_key not in ln]
    lines[start:end] = table + [row]
    atomic_write_text(log_path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- stage


def compare(cfg: Config, run: RunDir) -> dict:
    """Write ``run/compare/`` (comparison.md, comparison.png, comparison.json) and the TRAINING_LOG row."""
    tuned_dir = run.eval
    base_dir = baseline_eval_dir(cfg.outputs_dir, cfg.name, run)
    tuned, _ = load_eval(cfg, tuned_dir, "fine-tuned", f"run `make eval RUN={run.name}` first")
    base, _ = load_eval(cfg, base_dir, "baseline", f"run `make eval-baseline RUN={run.name}` first")
    _check_same_set(base, tuned, base_dir.path, tuned_dir.path)

    result = {
        "run_dir": str(run.path),
        "baseline_dir": str(base_dir.path),
        "eval_set": tuned["eval_set"],
        "overall": {k: {"baseline": base["overall"].get(k), "fine_tuned": tuned["overall"].get(k)} for k, _, _ in METRIC_ROWS},
        "per_persona": {
            n: {k: {"baseline": base["per_persona"].get(n, {}).get(k), "fine_tuned": tuned["per_persona"][n].get(k)}
                for k, _, _ in METRIC_ROWS}
            for n in tuned["per_persona"]
        },
    }
    out = run.compare
    with atomic_dir(out) as tmp:
        (tmp / "comparison.md").write_text(render_table(base, tuned), encoding="utf-8")
        render_chart(base, tuned, tmp / "comparison.png")
        (tmp / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log_path = cfg.resolve(cfg.paths.training_log)
    row = log_row(cfg, run, base, tuned)
    append_log_row(log_path, row, row.split(" | ")[1])
    result["training_log"] = str(log_path)
    result["compare_dir"] = str(out)
    return result


def run(cfg: Config, *, run: str = "latest") -> int:
    res = compare(cfg, RunDir.resolve(cfg.runs_dir, run))
    o = res["overall"]
    print(f"comparison: {res['compare_dir']}/comparison.md (+ comparison.png); row added to {res['training_log']}")
    for k in ("rouge1", "rouge2", "rougeL", "bleu", "persona_match", "blend_rate"):
        print(f"  {k:14s} baseline {fmt(o[k]['baseline'])}  fine-tuned {fmt(o[k]['fine_tuned'])}")
    return 0
