"""Slices of an eval set and bootstrap 95 % confidence intervals of its per-sample metrics.

A metric here is the mean of a per-sample score (ROUGE, semantic similarity,
persona match, blend, runaway, words), so its interval comes from resampling
samples: the percentile bootstrap with ``N_BOOT`` resamples and a fixed seed,
so the same predictions always give the same interval. A baseline vs
fine-tuned difference uses the *paired* bootstrap: both models answered the
same prompts, so one resample of prompt indices is applied to both, which
keeps the prompt-to-prompt variation out of the difference. Corpus BLEU is not
a per-sample mean and gets no interval.

Slices: ``origin`` (``real``: the reference is a real transcript quote,
``meta.origin`` = quote; ``generated``: rephrased quotes and answers built from
persona files, quote_derived or invented), ``kind`` (``meta.kind``) and ``persona``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
SEED = 0

# metric key in metrics.json -> its per-sample value in predictions.jsonl (None: not scored)
PER_SAMPLE: dict[str, Callable[[dict], float | None]] = {
    "rouge1": lambda s: s["scores"]["rouge1"],
    "rouge2": lambda s: s["scores"]["rouge2"],
    "rougeL": lambda s: s["scores"]["rougeL"],
    "semantic_similarity": lambda s: s["scores"]["semantic_similarity"],
    "persona_match": lambda s: float(s["scores"]["persona_match"]),
    "persona_match_embed": lambda s: None if s["scores"]["persona_match_embed"] is None else float(s["scores"]["persona_match_embed"]),
    "blend_rate": lambda s: float(s["scores"]["blend"]),
    "words_mean": lambda s: float(s["scores"]["words"]),
    "empty_rate": lambda s: float(not s["answer"].strip()),
    "runaway_rate": lambda s: float(s["scores"]["stop"] == "max_tokens"),
}


def origin(sample: dict) -> str | None:
    """``real`` for verbatim transcript speech (``meta.origin`` quote), ``generated`` for the rest, else None."""
    value = sample.get("origin")
    if not value:
        return None
    return "real" if value == "quote" else "generated"


SLICERS: dict[str, Callable[[dict], str | None]] = {
    "per_origin": origin,
    "per_kind": lambda s: s.get("kind"),
    "per_persona": lambda s: s.get("persona"),
}


def slices(samples: Sequence[dict], by: str) -> dict[str, list[int]]:
    """Sample indices per value of the ``by`` slicer (``per_origin``, ``per_kind``, ``per_persona``), sorted."""
    out: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        key = SLICERS[by](s)
        if key is not None:
            out.setdefault(str(key), []).append(i)
    return dict(sorted(out.items()))


def values(samples: Sequence[dict], key: str) -> np.ndarray | None:
    """The per-sample values of a metric, or None when any sample lacks it."""
    vals = [PER_SAMPLE[key](s) for s in samples]
    return None if not vals or any(v is None for v in vals) else np.asarray(vals, dtype=float)


def _percentiles(rows: np.ndarray) -> list[float]:
    lo, hi = np.percentile(rows, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return [float(lo), float(hi)]


def _resample_means(x: np.ndarray) -> np.ndarray:
    idx = np.random.default_rng(SEED).integers(0, len(x), size=(N_BOOT, len(x)))
    return x[idx].mean(axis=1)


def mean_interval(x: np.ndarray) -> list[float]:
    """[low, high] of the mean of ``x`` (percentile bootstrap)."""
    return _percentiles(_resample_means(x))


def paired_difference(base: np.ndarray, tuned: np.ndarray) -> dict[str, Any]:
    """Mean of ``tuned - base`` over the same prompts, its [low, high] interval, and whether it excludes 0."""
    if base.shape != tuned.shape:
        raise ValueError(f"paired samples differ in length: {base.shape} vs {tuned.shape}")
    diff = tuned - base
    low, high = _percentiles(_resample_means(diff))
    return {"diff": float(diff.mean()), "ci": [low, high], "excludes_zero": bool(low > 0 or high < 0)}


def intervals(samples: Sequence[dict]) -> dict[str, list[float]]:
    """Metric -> [low, high] for every per-sample metric that all samples have."""
    out = {}
    for key in PER_SAMPLE:
        x = values(samples, key)
        if x is not None:
            out[key] = mean_interval(x)
    return out
