"""Bootstrap intervals and the paired baseline-vs-fine-tuned difference (evaluation/intervals.py)."""

from __future__ import annotations

import numpy as np
import pytest

from persona_pipeline.evaluation.intervals import mean_interval, origin, paired_difference, slices, values


def test_mean_interval_brackets_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    small, large = rng.uniform(0, 1, 20), rng.uniform(0, 1, 500)
    for x in (small, large):
        lo, hi = mean_interval(x)
        assert lo < x.mean() < hi
    width = lambda x: np.subtract(*mean_interval(x)[::-1])  # noqa: E731
    assert width(large) < width(small) / 3
    # About 1.96 standard errors each side for a large sample.
    assert width(large) == pytest.approx(2 * 1.96 * large.std() / np.sqrt(len(large)), rel=0.15)
    assert mean_interval(small) == mean_interval(small)  # fixed seed: same data, same interval


def test_paired_difference_sees_a_small_consistent_gain_that_unpaired_intervals_hide():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 60)  # prompts differ a lot in difficulty
    tuned = base + 0.04 + rng.normal(0, 0.01, 60)  # every prompt gains a little
    lo_b, hi_b = mean_interval(base)
    lo_t, hi_t = mean_interval(tuned)
    assert lo_t < hi_b  # the two intervals overlap: unpaired, this would not be a win
    d = paired_difference(base, tuned)
    assert d["excludes_zero"] and 0.03 < d["ci"][0] < d["diff"] < d["ci"][1] < 0.05


def test_paired_difference_of_noise_includes_zero():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 80)
    d = paired_difference(base, base + rng.normal(0, 0.2, 80))
    assert d["ci"][0] < 0 < d["ci"][1] and not d["excludes_zero"]
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference(base, base[:-1])


def _sample(kind: str, origin: str | None, persona: str, rouge: float) -> dict:
    scores = {"rouge1": rouge, "rouge2": rouge, "rougeL": rouge, "semantic_similarity": None, "persona_match": True,
              "persona_match_embed": None, "blend": False, "words": 5, "stop": "eos"}
    return {"kind": kind, "origin": origin, "persona": persona, "answer": "five words in this answer", "scores": scores}


def test_slices_by_origin_kind_and_persona():
    samples = [
        _sample("extracted", "quote", "Tilda", 0.5),
        _sample("transformed", "quote_derived", "Tilda", 0.4),  # a rephrased quote is not a real quote
        _sample("transformed", "invented", "Tilda", 0.3),
        _sample("contrastive", "invented", "Anis", 0.2),
        _sample("hypothetical", None, "Anis", 0.1),  # a record without meta.origin is in no origin slice
    ]
    assert [origin(s) for s in samples] == ["real", "generated", "generated", "generated", None]
    assert slices(samples, "per_origin") == {"generated": [1, 2, 3], "real": [0]}
    assert slices(samples, "per_kind")["transformed"] == [1, 2]
    assert slices(samples, "per_persona") == {"Anis": [3, 4], "Tilda": [0, 1, 2]}
    assert values(samples, "rougeL").tolist() == [0.5, 0.4, 0.3, 0.2, 0.1]
    assert values(samples, "semantic_similarity") is None  # not scored: no interval, never a zero
    assert values(samples, "runaway_rate").tolist() == [0.0] * 5
