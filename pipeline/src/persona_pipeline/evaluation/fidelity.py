"""Persona fidelity: which persona an answer sounds like, and whether it claims another persona (blending).

*Sounds like* — a nearest-centroid classifier fitted on each persona's
**training** answers. Features are tf-idf weighted character 3-5-grams
(plain numpy, always available, deterministic); when sentence embeddings are
available a second classifier uses MiniLM vectors the same way. Each
classifier is scored on the held-out eval **references**, whose persona is
known, so the answer-level match rate comes with the accuracy that tells how
far it can be trusted.

*Blending* — an answer for persona P claims persona Q when it

- names itself Q ("I am Q", "I'm Q", "my name is Q"), or contains one of Q's
  ``identity`` phrases from ``data/personas/<q>.yaml`` (first-person phrases
  such as "my tea garden"), or
- claims Q's domain: at least :data:`DOMAIN_HITS` distinct keywords from Q's
  ``domain_keywords`` that P's list does not share, found in sentences that
  speak in the first person and are not negated, in an answer that does not
  name Q (so a contrastive deflection such as "I'd only be guessing about
  tea; Anis is the one to ask" is not counted).

The detector is also run on the eval *references* (which never blend): its
rate there is the false-positive rate, reported next to the answers' rate.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

NGRAMS = (3, 4, 5)
# Distinct other-persona domain keywords, in first-person claiming sentences, that make a blend.
DOMAIN_HITS = 2
# Training answers per persona embedded for the embedding centroids.
EMBED_CENTROID_TEXTS = 64
METHOD_TFIDF = "tf-idf character 3-5-grams, nearest persona centroid (cosine), fitted on training answers"
METHOD_EMBED = (
    "all-MiniLM-L6-v2 sentence embeddings, nearest persona centroid (cosine), "
    f"fitted on up to {EMBED_CENTROID_TEXTS} training answers per persona"
)

_FIRST_PERSON = re.compile(r"\b(i|i'm|i’m|i've|i’ve|i'd|me|my|mine|we|we're|our|ours|us)\b", re.I)
_NEGATION = re.compile(
    r"\b(not|no|never|nothing|neither|nor|don't|don’t|doesn't|isn't|wasn't|can't|cannot|wouldn't|haven't|n't)\b|n['’]t\b", re.I
)
_SENTENCES = re.compile(r"(?<=[.!?;])\s+|\n+")


def _normalise(text: str) -> str:
    return " " + " ".join(text.lower().split()) + " "


def _char_ngrams(text: str) -> Counter:
    t = _normalise(text)
    return Counter(t[i : i + n] for n in NGRAMS for i in range(len(t) - n + 1))


class TfidfChars:
    """Tf-idf over character n-grams with a vocabulary from the fitting texts (unseen n-grams are ignored)."""

    def fit(self, texts: Sequence[str]) -> TfidfChars:
        counts = [_char_ngrams(t) for t in texts]
        df: Counter = Counter()
        for c in counts:
            df.update(c.keys())
        self.vocab = {g: i for i, g in enumerate(sorted(df))}
        n = len(texts)
        self.idf = np.array([math.log((1 + n) / (1 + df[g])) + 1.0 for g in sorted(df)], dtype=np.float64)
        return self

    def sparse(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, unit-norm weights) of one text; empty arrays for text with no known n-gram."""
        items = [(self.vocab[g], c) for g, c in _char_ngrams(text).items() if g in self.vocab]
        if not items:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        idx = np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items))
        tf = np.fromiter((1.0 + math.log(c) for _, c in items), dtype=np.float64, count=len(items))
        w = tf * self.idf[idx]
        return idx, w / np.linalg.norm(w)


@dataclass
class CentroidClassifier:
    """Nearest centroid by cosine. ``similarities`` returns an (n, personas) matrix."""

    names: list[str]
    method: str
    similarities: Callable[[Sequence[str]], np.ndarray] = field(repr=False)

    def predict(self, texts: Sequence[str]) -> tuple[list[str | None], np.ndarray]:
        """Predicted persona per text (None for an empty text) and the similarity matrix."""
        sims = self.similarities(texts) if texts else np.zeros((0, len(self.names)))
        preds = [self.names[int(np.argmax(row))] if t.strip() and np.any(row) else None for t, row in zip(texts, sims, strict=True)]
        return preds, sims


def _group(texts: Sequence[str], labels: Sequence[str], names: Sequence[str]) -> dict[str, list[str]]:
    by: dict[str, list[str]] = {n: [] for n in names}
    for t, label in zip(texts, labels, strict=True):
        if label in by and t.strip():
            by[label].append(t)
    empty = [n for n, ts in by.items() if not ts]
    if empty:
        raise ValueError(f"no training answers for persona(s) {', '.join(empty)}")
    return by


def tfidf_classifier(texts: Sequence[str], labels: Sequence[str], names: Sequence[str]) -> CentroidClassifier:
    by = _group(texts, labels, names)
    vec = TfidfChars().fit([t for ts in by.values() for t in ts])
    cents = np.zeros((len(names), len(vec.vocab)))
    for k, n in enumerate(names):
        for t in by[n]:
            idx, w = vec.sparse(t)
            cents[k, idx] += w
    cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)

    def sims(batch: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(batch), len(names)))
        for i, t in enumerate(batch):
            idx, w = vec.sparse(t)
            if len(idx):
                out[i] = cents[:, idx] @ w
        return out

    return CentroidClassifier(list(names), METHOD_TFIDF, sims)


def _spread(items: list[str], k: int) -> list[str]:
    """At most ``k`` items, evenly spaced (deterministic)."""
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def embedding_classifier(
    texts: Sequence[str], labels: Sequence[str], names: Sequence[str], encode, max_per_persona: int = EMBED_CENTROID_TEXTS
) -> CentroidClassifier:
    """``encode(texts) -> unit vectors``; centroids are the normalised means of each persona's vectors.

    A centroid settles after a few dozen answers; capping them keeps a CPU eval from spending
    most of its time embedding the training set (the reference accuracy shows the cap costs nothing).
    """
    by = _group(texts, labels, names)
    cents = np.stack([encode(_spread(by[n], max_per_persona)).mean(axis=0) for n in names])
    cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
    return CentroidClassifier(list(names), METHOD_EMBED, lambda batch: encode(list(batch)) @ cents.T)


def accuracy_report(clf: CentroidClassifier, texts: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, per-persona recall and the confusion counts of ``clf`` on texts of known persona."""
    preds, _ = clf.predict(texts)
    confusion: dict[str, Counter] = {n: Counter() for n in clf.names}
    for p, label in zip(preds, labels, strict=True):
        confusion.setdefault(label, Counter())[p or "none"] += 1
    per = {n: (c[n] / sum(c.values()) if sum(c.values()) else None) for n, c in confusion.items()}
    correct = sum(1 for p, label in zip(preds, labels, strict=True) if p == label)
    return {
        "method": clf.method,
        "accuracy": correct / len(labels) if labels else None,
        "per_persona": per,
        "confusion": {n: dict(c) for n, c in confusion.items()},
        "n": len(labels),
    }


# --------------------------------------------------------------------------- blending


def _phrase_re(phrase: str) -> re.Pattern:
    words = [re.escape(w) for w in phrase.lower().replace("’", "'").split()]
    # Whole words, any whitespace between them, an optional plural / possessive on the last one.
    return re.compile(r"\b" + r"\s+".join(words) + r"(?:s|es|'s)?\b")


def _stem(word: str) -> str:
    """Crude plural folding so that "exam" and "exams" count as one keyword."""
    return re.sub(r"(?:es|s)$", "", word) if len(word) > 3 else word


@dataclass
class _Terms:
    name: str
    name_claim: re.Pattern
    identity: list[tuple[str, re.Pattern]]
    keywords: dict[str, re.Pattern]


class BlendDetector:
    """Flags answers that claim another persona's identity or domain (see the module docstring)."""

    def __init__(self, identity: Mapping[str, Sequence[str]], keywords: Mapping[str, Sequence[str]]):
        self.terms: dict[str, _Terms] = {}
        for name in identity.keys() | keywords.keys():
            n = re.escape(name.lower())
            self.terms[name] = _Terms(
                name=name,
                name_claim=re.compile(rf"\b(?:i am|i'm|my name is|call me|this is)\s+{n}\b"),
                identity=[(p, _phrase_re(p)) for p in identity.get(name, ())],
                keywords={k.lower(): _phrase_re(k) for k in keywords.get(name, ())},
            )

    @classmethod
    def from_personas(cls, personas: Mapping) -> BlendDetector:
        """From :func:`persona_pipeline.data.personas.load_personas` output (``identity``, ``domain_keywords``)."""
        return cls({n: p.identity for n, p in personas.items()}, {n: p.domain_keywords for n, p in personas.items()})

    def detect(self, answer: str, persona: str) -> dict:
        """``{"blend": bool, "claimed": other persona or None, "reason": identity|domain|None, "evidence": [...]}``"""
        text = " ".join(answer.lower().replace("’", "'").split())
        own = self.terms.get(persona)
        own_kw = set(own.keywords) if own else set()
        sentences = [s for s in _SENTENCES.split(text) if s.strip()]
        for other, t in self.terms.items():
            if other == persona:
                continue
            hits = [m.group(0) for m in [t.name_claim.search(text)] if m]
            hits += [p for p, rx in t.identity if rx.search(text)]
            if hits:
                return {"blend": True, "claimed": other, "reason": "identity", "evidence": hits}
        for other, t in self.terms.items():
            if other == persona:
                continue
            if re.search(rf"\b{re.escape(other.lower())}\b", text):
                continue  # talking about Q ("ask Anis about tea") is not claiming to be Q
            claiming = [s for s in sentences if _FIRST_PERSON.search(s) and not _NEGATION.search(s)]
            found = sorted({_stem(k) for k, rx in t.keywords.items() if k not in own_kw and any(rx.search(s) for s in claiming)})
            if len(found) >= DOMAIN_HITS:
                return {"blend": True, "claimed": other, "reason": "domain", "evidence": found}
        return {"blend": False, "claimed": None, "reason": None, "evidence": []}
