"""Scoring generated answers: ROUGE/BLEU, semantic similarity, persona fidelity and blending,
lengths and stop reasons, per sample and aggregated overall and per persona."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import DataError
from persona_pipeline.core.records import persona_of
from persona_pipeline.data.personas import load_personas
from persona_pipeline.evaluation.fidelity import BlendDetector, accuracy_report, embedding_classifier, tfidf_classifier
from persona_pipeline.evaluation.intervals import intervals, slices
from persona_pipeline.evaluation.metrics import corpus_bleu, length_stats, rouge_per_sample, sentence_bleu

CONTRASTIVE = "contrastive"


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _aggregate(samples: list[dict]) -> dict[str, Any]:
    n = len(samples)
    sc = [s["scores"] for s in samples]
    contrastive = [s for s in samples if s["kind"] == CONTRASTIVE]
    out: dict[str, Any] = {"n": n, "n_contrastive": len(contrastive)}
    for k in ("rouge1", "rouge2", "rougeL"):
        out[k] = _mean([x[k] for x in sc])
    out["bleu"] = corpus_bleu([s["answer"] for s in samples], [s["reference"] for s in samples])
    out["semantic_similarity"] = _mean([x["semantic_similarity"] for x in sc])
    out["persona_match"] = _mean([float(x["persona_match"]) for x in sc])
    out["persona_match_embed"] = _mean([None if x["persona_match_embed"] is None else float(x["persona_match_embed"]) for x in sc])
    out["blend_rate"] = _mean([float(x["blend"]) for x in sc])
    out["blend_rate_contrastive"] = _mean([float(s["scores"]["blend"]) for s in contrastive])
    out.update(length_stats([s["answer"] for s in samples], [x["stop"] == "max_tokens" for x in sc]))
    out["ci"] = intervals(samples)
    return out


def score(cfg: Config, samples: list[dict], train_records: list[dict], embedder) -> tuple[dict, dict]:
    """Fill ``samples[i]["scores"]`` and return (metrics by group, fidelity description)."""
    names = cfg.eval.personas or sorted({s["persona"] for s in samples})
    answers = [s["answer"] for s in samples]
    refs = [s["reference"] for s in samples]
    labels = [s["persona"] for s in samples]

    rouge = rouge_per_sample(answers, refs)
    train_texts = [r["completion"].strip() for r in train_records]
    train_labels = [persona_of(r) or "" for r in train_records]
    try:
        clf = tfidf_classifier(train_texts, train_labels, names)
    except ValueError as exc:
        raise DataError(f"{cfg.resolve(cfg.data.train)}: {exc}; persona fidelity is fitted on the training answers",
                        hint="regenerate the data with `make data`") from None
    fidelity = {"tfidf": accuracy_report(clf, refs, labels), "embedding": None}
    predicted, _ = clf.predict(answers)

    similarity: list[float | None] = [None] * len(samples)
    predicted_embed: list[str | None] = [None] * len(samples)
    if embedder is not None:
        vec_a = embedder.encode(answers)
        vec_r = embedder.encode(refs)
        # An empty answer has nothing in common with its reference: 0, not the embedding of "".
        similarity = [float(a @ r) if ans.strip() else 0.0 for a, r, ans in zip(vec_a, vec_r, answers, strict=True)]
        eclf = embedding_classifier(train_texts, train_labels, names, embedder.encode)
        fidelity["embedding"] = accuracy_report(eclf, refs, labels)
        predicted_embed, _ = eclf.predict(answers)

    detector = BlendDetector.from_personas(load_personas(cfg))
    # References never blend: the detector's rate on them is its false-positive rate.
    ref_blend = [detector.detect(r, p)["blend"] for r, p in zip(refs, labels, strict=True)]
    fidelity["blend_on_references"] = {
        "rate": _mean([float(b) for b in ref_blend]),
        "per_persona": {n: _mean([float(b) for b, who in zip(ref_blend, labels, strict=True) if who == n]) for n in names},
    }
    for i, s in enumerate(tqdm(samples, desc="score", unit="answer", leave=False)):
        blend = detector.detect(s["answer"], s["persona"])
        s["scores"] = {
            **rouge[i],
            "bleu": sentence_bleu(s["answer"], s["reference"]),
            "semantic_similarity": similarity[i],
            "predicted_persona": predicted[i],
            "persona_match": predicted[i] == s["persona"],
            "predicted_persona_embed": predicted_embed[i],
            "persona_match_embed": None if embedder is None else predicted_embed[i] == s["persona"],
            "blend": blend["blend"],
            "blend_claimed": blend["claimed"],
            "blend_reason": blend["reason"],
            "blend_evidence": blend["evidence"],
            "words": len(s["answer"].split()),
            "new_tokens": s.pop("_new_tokens"),
            "stop": s.pop("_stop"),
        }
    groups = {"overall": _aggregate(samples)}
    groups["per_persona"] = {n: _aggregate([s for s in samples if s["persona"] == n]) for n in names}
    for by in ("per_origin", "per_kind"):
        groups[by] = {name: _aggregate([samples[i] for i in idx]) for name, idx in slices(samples, by).items()}
    return groups, fidelity
