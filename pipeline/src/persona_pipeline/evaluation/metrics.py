"""Text-overlap and length metrics: ROUGE-1/2/L F1 (rouge-score, stemming on), BLEU (sacrebleu), lengths.

All of them run offline (no metric downloads). Scores are on a 0-1 scale,
BLEU included (sacrebleu's 0-100 divided by 100), as in the reference
pipeline's report (ROUGE-1 0.345, ROUGE-2 0.149, BLEU 0.135).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _scorer():
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_sample(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F1 of each prediction against its reference."""
    scorer = _scorer()
    out = []
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        out.append({k: scores[k].fmeasure for k in ROUGE_TYPES})
    return out


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, exp smoothing), 0-1."""
    if not predictions:
        return 0.0
    return sacrebleu.corpus_bleu(list(predictions), [list(references)]).score / 100.0


def sentence_bleu(prediction: str, reference: str) -> float:
    """Smoothed sentence BLEU, 0-1 (per-sample score for predictions.jsonl; the corpus figure is the metric)."""
    return sacrebleu.sentence_bleu(prediction, [reference]).score / 100.0


def word_count(text: str) -> int:
    return len(text.split())


def length_stats(answers: Sequence[str], runaway: Sequence[bool]) -> dict[str, float]:
    """Answer length in words (mean / median / p90 / max) and the empty and runaway (max-token) rates."""
    n = len(answers)
    if not n:
        return {"words_mean": 0.0, "words_median": 0.0, "words_p90": 0.0, "words_max": 0, "empty_rate": 0.0, "runaway_rate": 0.0}
    words = sorted(word_count(a) for a in answers)
    p90 = words[min(n - 1, int(round(0.9 * (n - 1))))]
    return {
        "words_mean": sum(words) / n,
        "words_median": float(statistics.median(words)),
        "words_p90": float(p90),
        "words_max": words[-1],
        "empty_rate": sum(1 for a in answers if not a.strip()) / n,
        "runaway_rate": sum(1 for r in runaway if r) / n,
    }
