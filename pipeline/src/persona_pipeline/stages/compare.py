"""``make compare``: baseline vs fine-tuned, as a markdown table, a PNG bar chart and a row in TRAINING_LOG.md.

Every per-sample metric gets a 95 % bootstrap interval, and every change a
paired-bootstrap interval (:mod:`persona_pipeline.evaluation.intervals`),
overall and per slice: origin (real transcript quotes vs generated), kind and
persona. A change is called better or worse only when its interval excludes
zero; otherwise it is "no clear change", whatever the point estimates say.

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
from persona_pipeline.evaluation.intervals import N_BOOT, PER_SAMPLE, mean_interval, paired_difference, slices, values
from persona_pipeline.evaluation.report import MARKS, METRIC_ROWS, change_text, ci_text, fmt
from persona_pipeline.evaluation.results import load_eval
from persona_pipeline.evaluation.scoring import CONTRASTIVE

log = logging.getLogger(__name__)

# The slice table and chart: the quality metrics, then runaway rate and answer length beside them.
SLICE_METRICS = ["rougeL", "semantic_similarity", "persona_match", "runaway_rate", "words_mean"]
CHART_METRICS = ["rougeL", "semantic_similarity", "persona_match", "runaway_rate", "words_mean"]
SLICE_GROUPS = ["per_origin", "per_persona", "per_kind"]
# Rows before issue 11 sit under the old "## Runs" heading: a leaky split and no intervals, not comparable.
RUNS_HEADING = "## Runs (eval split by source, 95 % intervals)"
LOG_COLUMNS = ["date", "run", "config", "train / eval", "epochs", "eval set", "ROUGE-L real", "ROUGE-L generated",
               "sem. sim. real", "sem. sim. generated", "persona match", "blend", "runaway", "words (mean)"]


def _check_same_set(base: dict, tuned: dict, base_dir: Path, tuned_dir: Path) -> None:
    b, t = base["eval_set"], tuned["eval_set"]
    if b["sha256"] != t["sha256"] or b["prompts_sha256"] != t["prompts_sha256"]:
        raise PipelineError(
            f"baseline and fine-tuned evals used different eval sets: {base_dir} ({b['path']}, sha256 {b['sha256'][:12]}, "
            f"{b['n_evaluated']} samples) vs {tuned_dir} ({t['path']}, sha256 {t['sha256'][:12]}, {t['n_evaluated']} samples)",
            hint="run `make eval-baseline RUN=<run>` and `make eval RUN=<run>` with the same data.eval and eval.max_samples",
        )


def _verdict(d: dict[str, Any], better: bool | None) -> str | None:
    if better is None:
        return None
    if not d["excludes_zero"]:
        return "no clear change"
    return "better" if (d["diff"] > 0) == better else "worse"


def _paired_metrics(base: list[dict], tuned: list[dict]) -> dict[str, dict[str, Any]]:
    """Per metric: both means with intervals, and the paired change with its interval and verdict."""
    direction = {k: better for k, _, better in METRIC_ROWS}
    out = {}
    for key in PER_SAMPLE:
        b, t = values(base, key), values(tuned, key)
        if b is None or t is None:
            continue
        d = paired_difference(b, t)
        out[key] = {"n": len(t), "baseline": float(b.mean()), "baseline_ci": mean_interval(b),
                    "fine_tuned": float(t.mean()), "fine_tuned_ci": mean_interval(t),
                    "change": d["diff"], "change_ci": d["ci"], "verdict": _verdict(d, direction.get(key))}
    return out


def paired_comparison(base_preds: list[dict], tuned_preds: list[dict]) -> dict[str, Any]:
    """``overall`` and each slice group (origin, persona, kind) -> slice -> metric -> :func:`_paired_metrics` entry.

    The two prediction lists hold the same prompts in the same order (checked by ``load_eval``).
    """
    out: dict[str, Any] = {"overall": _paired_metrics(base_preds, tuned_preds)}
    for by in SLICE_GROUPS:
        out[by] = {name: _paired_metrics([base_preds[i] for i in idx], [tuned_preds[i] for i in idx])
                   for name, idx in slices(tuned_preds, by).items()}
    contrastive = out["per_kind"].get(CONTRASTIVE, {})
    if "blend_rate" in contrastive:
        out["overall"]["blend_rate_contrastive"] = contrastive["blend_rate"]
    return out


def _cell(e: dict[str, Any]) -> str:
    """``base → tuned, change [CI] mark`` for the slice table and the log."""
    return f"{e['baseline']:.3f} → {e['fine_tuned']:.3f}, {change_text(e)}"


def render_table(base: dict, tuned: dict, paired: dict[str, Any]) -> str:
    """The comparison markdown: overall metrics with intervals, then one row per slice."""
    es, cont = tuned["eval_set"], tuned["eval_set"].get("containment")
    overlap = (f"{cont['references_sharing_run']} of {cont['n']} references share a run of {cont['run_words']} words "
               "with a training answer") if cont else "not measured (re-run `make eval`)"
    lines = [
        "# Baseline vs fine-tuned",
        "",
        f"- eval set: `{es['path']}` (sha256 `{es['sha256'][:12]}`), {es['n_evaluated']} samples, same prompts for both",
        f"- overlap with training: {overlap}",
        f"- baseline: `{base['model']['model']}` ({base['created']})",
        f"- fine-tuned: `{tuned['model'].get('adapter') or tuned['model']['model']}` ({tuned['created']})",
        f"- [low, high]: 95 % percentile bootstrap over the prompts ({N_BOOT} resamples); a change's interval is a paired "
        "bootstrap. ✓ better / ✗ worse only when the change's interval excludes 0; ≈ no clear change.",
        f"- persona match reads against the persona classifier's accuracy on the references: "
        f"{fmt(tuned['fidelity']['tfidf']['accuracy'], True)} (its ceiling)",
        "",
        "| metric | baseline | fine-tuned | change | |",
        "|---|---:|---:|---:|---|",
    ]
    over = paired["overall"]
    for key, label, _ in METRIC_ROWS:
        if key in over:
            e = over[key]
            row = (f"| {label} | {ci_text(e['baseline'], e['baseline_ci'])} | {ci_text(e['fine_tuned'], e['fine_tuned_ci'])} "
                   f"| {ci_text(e['change'], e['change_ci'], True)} | {MARKS[e['verdict']]} {e['verdict'] or '—'} |")
            lines.append(row.replace("|  ", "| "))
        elif base["overall"].get(key) is not None or tuned["overall"].get(key) is not None:
            b, t = base["overall"].get(key), tuned["overall"].get(key)
            change = "n/a" if b is None or t is None else f"{t - b:+.3f}"
            why = "no interval (corpus BLEU is not a per-sample mean)" if key == "bleu" else "no interval"
            lines.append(f"| {label} | {fmt(b)} | {fmt(t)} | {change} | {why} |")
    labels = {k: lab for k, lab, _ in METRIC_ROWS}
    lines += ["", "## By slice", "", "Each cell: baseline → fine-tuned, change [95 % interval].", "",
              "| slice | n | " + " | ".join(labels[k] for k in SLICE_METRICS) + " |",
              "|---|---:|" + "---|" * len(SLICE_METRICS)]
    for by in SLICE_GROUPS:
        for name, metrics in paired[by].items():
            n = next(iter(metrics.values()))["n"] if metrics else 0
            cells = [_cell(metrics[k]) if k in metrics else "n/a" for k in SLICE_METRICS]
            lines.append(f"| {by.removeprefix('per_')}: {name} | {n} | " + " | ".join(cells) + " |")
    notices = {m["embeddings"]["notice"] for m in (base, tuned) if m["embeddings"].get("notice")}
    if notices:
        lines += [""] + [f"Note: {n}" for n in sorted(notices)]
    lines += ["", "![baseline vs fine-tuned](comparison.png)", ""]
    return "\n".join(lines)


def render_chart(tuned: dict, paired: dict[str, Any], path: Path) -> None:
    """One panel per metric: baseline and fine-tuned means with 95 % intervals, overall and per slice."""
    groups = [("overall", paired["overall"])] + [(name, m) for by in ("per_origin", "per_persona") for name, m in paired[by].items()]
    keys = [k for k in CHART_METRICS if k in paired["overall"]]
    labels = {k: lab for k, lab, _ in METRIC_ROWS}
    cols = 3
    rows = (len(keys) + cols - 1) // cols
    # A bare Figure (no pyplot): no GUI backend, no global figure state to close.
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    x = np.arange(len(groups))
    for ax, key in zip(axes.flat, keys, strict=False):  # spare panels (more axes than metrics) are switched off below
        for side, dx, color in (("baseline", -0.2, "#9aa5b1"), ("fine_tuned", 0.2, "#2f6fb3")):
            es = [m.get(key) for _, m in groups]
            mean = np.array([e[side] if e else np.nan for e in es])
            err = np.array([[e[side] - e[side + "_ci"][0], e[side + "_ci"][1] - e[side]] if e else [0, 0] for e in es]).T
            ax.bar(x + dx, mean, 0.4, yerr=err, capsize=3, label=side.replace("_", "-"), color=color)
        for i, (_, m) in enumerate(groups):
            if key in m and m[key]["verdict"] in ("better", "worse"):
                ax.annotate(MARKS[m[key]["verdict"]], (i, 1.02), xycoords=("data", "axes fraction"), ha="center", fontsize=11)
        ax.set_title(labels[key] + (" (lower is better)" if key.endswith("_rate") else ""), fontsize=10, pad=14)
        ax.set_xticks(x, [g for g, _ in groups], fontsize=8, rotation=30)
        if key.endswith(("_rate", "_match")):  # shares: the whole 0-1 scale; scores and lengths: their own
            ax.set_ylim(0, 1.0)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{tuned['config']}: baseline vs fine-tuned on {tuned['eval_set']['n_evaluated']} held-out samples "
                 "(bars: 95 % intervals; ✓/✗: the paired change excludes 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- TRAINING_LOG.md


def _run_facts(cfg: Config, run: RunDir, tuned: dict) -> dict:
    """Epochs (from the run's training summary) and data sizes of the run."""
    summary = read_json(run.train_summary, written_by="make train")
    return {"epochs": summary.get("epochs", cfg.train.epochs), "train": tuned.get("train_set", {}).get("n_records"),
            "eval": tuned["eval_set"]["n_evaluated"]}


def log_row(cfg: Config, run: RunDir, tuned: dict, paired: dict[str, Any]) -> str:
    facts = _run_facts(cfg, run, tuned)
    try:
        run_label = str(run.path.resolve().relative_to(cfg.resolve(cfg.paths.training_log).resolve().parent))
    except ValueError:
        run_label = str(run.path)
    epochs = facts["epochs"]
    cont = tuned["eval_set"].get("containment")
    eval_set = f"`{tuned['eval_set']['sha256'][:8]}`" + (
        f", {cont['references_sharing_run']}/{cont['n']} quote train" if cont else "")
    origin = paired.get("per_origin", {})

    def cell(group: dict, key: str) -> str:
        return _cell(group[key]) if key in group else "n/a"

    cells = [
        _dt.date.today().isoformat(), f"`{run_label}`", tuned["config"], f"{facts['train']} / {facts['eval']}",
        f"{epochs:g}" if isinstance(epochs, (int, float)) else str(epochs), eval_set,
        cell(origin.get("real", {}), "rougeL"), cell(origin.get("generated", {}), "rougeL"),
        cell(origin.get("real", {}), "semantic_similarity"), cell(origin.get("generated", {}), "semantic_similarity"),
        *(cell(paired["overall"], k) for k in ("persona_match", "blend_rate", "runaway_rate", "words_mean")),
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
    tuned, tuned_preds = load_eval(cfg, tuned_dir, "fine-tuned", f"run `make eval RUN={run.name}` first")
    base, base_preds = load_eval(cfg, base_dir, "baseline", f"run `make eval-baseline RUN={run.name}` first")
    _check_same_set(base, tuned, base_dir.path, tuned_dir.path)
    paired = paired_comparison(base_preds, tuned_preds)

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
        "paired": paired,
    }
    out = run.compare
    with atomic_dir(out) as tmp:
        (tmp / "comparison.md").write_text(render_table(base, tuned, paired), encoding="utf-8")
        render_chart(tuned, paired, tmp / "comparison.png")
        (tmp / run.comparison.name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log_path = cfg.resolve(cfg.paths.training_log)
    row = log_row(cfg, run, tuned, paired)
    append_log_row(log_path, row, row.split(" | ")[1])
    result["training_log"] = str(log_path)
    result["compare_dir"] = str(out)
    return result


def run(cfg: Config, *, run: str = "latest") -> int:
    res = compare(cfg, RunDir.resolve(cfg.runs_dir, run))
    print(f"comparison: {res['compare_dir']}/comparison.md (+ comparison.png); row added to {res['training_log']}")
    print("  baseline → fine-tuned, change [95 % interval]; ✓/✗ only when the interval excludes 0")
    slices_shown = [("overall", res["paired"]["overall"]), *res["paired"].get("per_origin", {}).items()]
    for name, metrics in slices_shown:
        for k in ("rougeL", "semantic_similarity", "persona_match", "runaway_rate"):
            if k in metrics:
                print(f"  {name:10s} {k:20s} {_cell(metrics[k])}")
    return 0
