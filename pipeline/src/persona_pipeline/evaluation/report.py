"""``report.md`` of an eval folder, and the number formatting shared with ``compare``."""

from __future__ import annotations

from typing import Any


def fmt(v: Any, pct: bool = False) -> str:
    """3 decimals, a percentage with ``pct``, "n/a" for a metric that was not computed."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return str(v)


COLUMNS = [
    ("n", "n", False), ("rouge1", "ROUGE-1", False), ("rouge2", "ROUGE-2", False), ("rougeL", "ROUGE-L", False),
    ("bleu", "BLEU", False), ("semantic_similarity", "sem. sim.", False), ("persona_match", "persona match", True),
    ("blend_rate", "blend", True), ("blend_rate_contrastive", "blend (contrastive)", True),
    ("words_mean", "words (mean)", False), ("empty_rate", "empty", True), ("runaway_rate", "runaway", True),
]


def render_report(m: dict) -> str:
    """``report.md`` from ``metrics.json`` content."""
    from persona_pipeline.evaluation.fidelity import DOMAIN_HITS

    rows = [("overall", m["overall"])] + list(m["per_persona"].items())
    rows += [(f"{by.removeprefix('per_')}: {name}", g) for by in ("per_origin", "per_kind") for name, g in m.get(by, {}).items()]
    lines = [
        f"# Evaluation: {m['config']} ({m['model']['source']})",
        "",
        f"- model: `{m['model']['model']}`" + (f", adapter `{m['model']['adapter']}`" if m["model"].get("adapter") else ""),
        f"- eval set: `{m['eval_set']['path']}` (sha256 `{m['eval_set']['sha256'][:12]}`), {m['eval_set']['n_evaluated']} of {m['eval_set']['n_records']} samples",
        f"- decoding: {'sampling' if m['generation']['do_sample'] else 'greedy'}, {m['generation'].get('min_new_tokens', 0)} to {m['generation']['max_new_tokens']} new tokens, batch {m['generation']['batch_size']}, stop at EOS or `\\n\\nHuman:`",
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
        f"({m['timing']['answers_per_s']:.2f} answers/s, {m['timing']['new_tokens_per_s']:.0f} new tokens/s), scoring {m['timing']['score_s']:.1f}s",
        "",
        f"Per-sample answers and scores: `{m['predictions']}`.",
        "",
    ]
    return "\n".join(lines)
