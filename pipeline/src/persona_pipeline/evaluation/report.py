"""``report.md`` of an eval folder, and the metric rows and number formatting shared with
``compare`` and the model card."""

from __future__ import annotations

from typing import Any

from persona_pipeline.core.prompt_format import STOP, escape_newlines
from persona_pipeline.evaluation.fidelity import DOMAIN_HITS


def fmt(v: Any, pct: bool = False) -> str:
    """3 decimals, a percentage with ``pct``, "n/a" for a metric that was not computed."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return str(v)


# (key in metrics, label, higher is better): compare's table and the model card.
METRIC_ROWS = [
    ("rouge1", "ROUGE-1", True), ("rouge2", "ROUGE-2", True), ("rougeL", "ROUGE-L", True), ("bleu", "BLEU", True),
    ("semantic_similarity", "semantic similarity", True), ("persona_match", "persona match", True),
    ("persona_match_embed", "persona match (embeddings)", True), ("blend_rate", "blend rate", False),
    ("blend_rate_contrastive", "blend rate (contrastive)", False), ("words_mean", "words (mean)", None),
    ("empty_rate", "empty answers", False), ("runaway_rate", "runaway answers", False),
]

# (key in metrics, label, as a percentage): report.md and the eval stage's summary line.
COLUMNS = [
    ("n", "n", False), ("rouge1", "ROUGE-1", False), ("rouge2", "ROUGE-2", False), ("rougeL", "ROUGE-L", False),
    ("bleu", "BLEU", False), ("semantic_similarity", "sem. sim.", False), ("persona_match", "persona match", True),
    ("blend_rate", "blend", True), ("blend_rate_contrastive", "blend (contrastive)", True),
    ("words_mean", "words (mean)", False), ("empty_rate", "empty", True), ("runaway_rate", "runaway", True),
]


def render_report(m: dict) -> str:
    """``report.md`` from ``metrics.json`` content."""
    rows = [("overall", m["overall"])] + list(m["per_persona"].items())
    rows += [(f"{by.removeprefix('per_')}: {name}", g) for by in ("per_origin", "per_kind") for name, g in m.get(by, {}).items()]
    es, gen, timing = m["eval_set"], m["generation"], m["timing"]
    lines = [
        f"# Evaluation: {m['config']} ({m['model']['source']})",
        "",
        f"- model: `{m['model']['model']}`" + (f", adapter `{m['model']['adapter']}`" if m["model"].get("adapter") else ""),
        f"- eval set: `{es['path']}` (sha256 `{es['sha256'][:12]}`), {es['n_evaluated']} of {es['n_records']} samples",
        f"- decoding: {'sampling' if gen['do_sample'] else 'greedy'}, {gen.get('min_new_tokens', 0)} to {gen['max_new_tokens']} "
        f"new tokens, batch {gen['batch_size']}, stop at EOS or `{escape_newlines(STOP)}`",
        f"- {m['created']}",
        "",
        "| group | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, g in rows:
        lines.append(f"| {name} | " + " | ".join(fmt(g.get(k), pct) for k, _, pct in COLUMNS) + " |")
    f = m["fidelity"]
    lines += ["", "## Persona fidelity", ""]
    for key, label in (("tfidf", "persona match"), ("embedding", "persona match (embeddings)")):
        rep = f.get(key)
        if rep is None:
            continue
        per = ", ".join(f"{n} {fmt(v, True)}" for n, v in rep["per_persona"].items())
        lines.append(f"- **{label}**: {rep['method']}. It identifies the persona of the held-out *reference* answers "
                     f"with accuracy **{fmt(rep['accuracy'], True)}** ({per}): the ceiling against which the model's match rate is read.")
    lines += [
        f"- **blend**: share of answers that claim another persona: its name (\"I am X\") or one of its identity phrases, "
        f"or at least {DOMAIN_HITS} of its domain keywords in first-person, non-negated sentences of an answer that does not name it. "
        "Reported on all answers and on the contrastive items (questions outside the persona's domain). "
        f"On the references, which never blend, it fires for {fmt(f['blend_on_references']['rate'], True)} (its false-positive rate).",
        "",
        "## Semantic similarity",
        "",
        ("Cosine of all-MiniLM-L6-v2 sentence embeddings (mean pooling) of answer and reference; empty answers score 0."
         if m["embeddings"]["available"] else f"**{m['embeddings']['notice']}**"),
        "",
        "## Timing",
        "",
        f"load {m['timing']['load_s']:.1f}s, generation {m['timing']['generate_s']:.1f}s "
        f"({timing['answers_per_s']:.2f} answers/s, {timing['new_tokens_per_s']:.0f} new tokens/s), scoring {timing['score_s']:.1f}s",
        "",
        f"Per-sample answers and scores: `{m['predictions']}`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- paired changes (compare, model card)


MARKS = {"better": "✓", "worse": "✗", "no clear change": "≈", None: ""}


def ci_text(v: float, ci: list[float], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(v)} [{f.format(ci[0])}, {f.format(ci[1])}]"


def change_text(e: dict[str, Any]) -> str:
    """``change [CI] mark`` of a :func:`_paired_metrics` entry (also used by the model card)."""
    return f"{ci_text(e['change'], e['change_ci'], True)} {MARKS[e['verdict']]}".rstrip()
