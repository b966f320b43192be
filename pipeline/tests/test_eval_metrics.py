"""Metrics against values computed independently (by hand or with a separate implementation), fidelity and blending."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from conftest import needs_embeddings
from persona_pipeline.evaluation.fidelity import BlendDetector, accuracy_report, tfidf_classifier
from persona_pipeline.evaluation.metrics import corpus_bleu, length_stats, rouge_per_sample


def test_rouge_matches_hand_computed_values():
    # ref: the cat sat on the mat / pred: the cat is on the mat
    # unigrams: 5 of 6 match both ways; bigrams: "the cat", "on the", "the mat" = 3 of 5; LCS "the cat on the mat" = 5.
    s = rouge_per_sample(["the cat is on the mat"], ["the cat sat on the mat"])[0]
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)


def test_rouge_uses_stemming():
    # Porter stemming maps "running" and "runs" to "run": 1 match, P = 1/3, R = 1/4, F = 2/7 (0 without stemming).
    s = rouge_per_sample(["a child runs"], ["the children are running"])[0]
    assert s["rouge1"] == pytest.approx(2 / 7)


def _bleu_by_formula(hyps: list[str], refs: list[str]) -> float:
    """Papineni et al. corpus BLEU, written out: clipped n-gram precisions (n=1..4), geometric mean, brevity penalty."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs, strict=True):
        ht, rt = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(ht), ref_len + len(rt)
        for n in range(1, 5):
            hc = Counter(tuple(ht[i : i + n]) for i in range(len(ht) - n + 1))
            rc = Counter(tuple(rt[i : i + n]) for i in range(len(rt) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(ht) - n + 1, 0)
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def test_corpus_bleu_matches_the_formula():
    # No punctuation and no zero n-gram counts, so sacrebleu's tokenizer and smoothing do not come into play.
    hyps = ["the cat is on the mat today", "a quick brown fox jumps over the dog"]
    refs = ["the cat sat on the mat today", "the quick brown fox jumps over the lazy dog"]
    expected = _bleu_by_formula(hyps, refs)
    assert 0.3 < expected < 0.7
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, abs=1e-6)
    assert corpus_bleu(refs, refs) == pytest.approx(1.0)


def test_length_stats():
    st = length_stats(["one two three", "", "a b c d e f g h i j"], [False, False, True])
    assert st["words_mean"] == pytest.approx(13 / 3)
    assert st["words_median"] == 3
    assert st["words_max"] == 10
    assert st["empty_rate"] == pytest.approx(1 / 3)
    assert st["runaway_rate"] == pytest.approx(1 / 3)


def test_tfidf_persona_classifier_and_its_reference_accuracy():
    train = {
        "Tilda": ["children learn in the forest without exams", "our school has no exams, the children build things",
                  "storytelling in the school every morning"],
        "Anis": ["the tea garden needs compost and patience", "our cooperative of women picks tea in the monsoon",
                 "organic soil makes better tea"],
    }
    texts = [t for ts in train.values() for t in ts]
    labels = [n for n, ts in train.items() for _ in ts]
    clf = tfidf_classifier(texts, labels, ["Tilda", "Anis"])
    held_out = ["the children at school love the forest", "compost keeps the tea bushes healthy"]
    rep = accuracy_report(clf, held_out, ["Tilda", "Anis"])
    assert rep["accuracy"] == 1.0
    assert rep["confusion"] == {"Tilda": {"Tilda": 1}, "Anis": {"Anis": 1}}
    preds, sims = clf.predict(["", "tea"])
    assert preds == [None, "Anis"] and sims.shape == (2, 2)
    with pytest.raises(ValueError, match="Ahsan"):
        tfidf_classifier(texts, labels, ["Tilda", "Anis", "Ahsan"])


@pytest.fixture
def detector():
    return BlendDetector(
        identity={"Tilda": ["our school in the Highlands"], "Anis": ["my tea garden"], "Ahsan": ["our literary festival"]},
        keywords={"Tilda": ["school", "exams", "children"], "Anis": ["tea", "compost", "cooperative", "children"],
                  "Ahsan": ["poetry", "festival"]},
    )


@pytest.mark.parametrize(
    "answer, persona, claimed, reason",
    [
        ("I'm Anis, and I love this work.", "Tilda", "Anis", "identity"),
        ("Every morning I walk through my tea garden.", "Tilda", "Anis", "identity"),
        ("I spread compost and our cooperative picks the tea.", "Tilda", "Anis", "domain"),
        # Talking about the other persona is not claiming to be them.
        ("Tea and compost are Anis's world; ask Anis.", "Tilda", None, None),
        # Negated first-person sentences do not claim a domain.
        ("I don't know anything about tea or compost.", "Tilda", None, None),
        # Keywords the persona shares ("children") do not count; one other keyword is not enough.
        ("I love the children and our tea breaks.", "Tilda", None, None),
        ("Our school has no exams; the children build things.", "Tilda", None, None),
        ("I am Ahsan, a poet.", "Ahsan", None, None),
        # "tea" and "teas" are one keyword, not two.
        ("I drink tea, all sorts of teas.", "Tilda", None, None),
    ],
)
def test_blend_detector(detector, answer, persona, claimed, reason):
    res = detector.detect(answer, persona)
    assert res["blend"] is (claimed is not None)
    assert res["claimed"] == claimed and res["reason"] == reason


def test_embeddings_absent_or_off_gives_a_notice_not_a_zero(monkeypatch):
    from conftest import CONFIGS
    from persona_pipeline.core.config import load_config
    from persona_pipeline.core.errors import PipelineError
    from persona_pipeline.evaluation import embeddings

    emb, status = embeddings.load_embedder(load_config(CONFIGS / "eval_tiny.yaml", ["eval.embeddings=off"]))
    assert emb is None and not status.available and "eval.embeddings=off" in status.notice

    # Package missing: auto carries on with a notice naming the fix, required stops; nothing is installed.
    monkeypatch.setattr(embeddings, "_model_folder", lambda: None)
    emb, status = embeddings.load_embedder(load_config(CONFIGS / "eval_tiny.yaml", ["eval.embeddings=auto"]))
    assert emb is None and "not installed" in status.notice and "make install" in status.notice
    with pytest.raises(PipelineError, match="eval.embeddings=required"):
        embeddings.load_embedder(load_config(CONFIGS / "eval_tiny.yaml", ["eval.embeddings=required"]))


@needs_embeddings
def test_minilm_embeddings_rank_paraphrases_above_unrelated_text():
    from conftest import CONFIGS
    from persona_pipeline.core.config import load_config
    from persona_pipeline.evaluation import embeddings

    emb, status = embeddings.load_embedder(load_config(CONFIGS / "eval_tiny.yaml", ["eval.embeddings=required"]))
    assert status.available
    v = emb.encode(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert v.shape == (3, 384)
    # The published all-MiniLM-L6-v2 similarity of the first pair is about 0.755.
    assert float(v[0] @ v[1]) == pytest.approx(0.755, abs=0.01)
    assert float(v[0] @ v[2]) < 0.2
