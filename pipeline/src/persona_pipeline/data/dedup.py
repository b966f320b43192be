"""Near-duplicate detection, near-duplicate groups, the group-aware train/eval split, and leakage checks.

Similarity is the Jaccard index of word 3-gram sets ("shingles") after
normalisation (lower case, straight quotes, contractions expanded, punctuation
dropped), so "don't" and "do not" or a changed comma do not hide a duplicate.
All-pairs search uses prefix filtering: with tokens ordered rarest first, two
sets with Jaccard >= t must share one of the first ``|x| - ceil(t*|x|) + 1``
tokens of each, so only those are indexed. It is exact, and fast for a few
thousand samples.

A *sample* is compared on its last question and on its answer; two samples are
near-duplicates when either pair of texts is.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_CONTRACTIONS = [
    (r"\bcan't\b", "cannot"),
    (r"\bwon't\b", "will not"),
    (r"\blet's\b", "let us"),
    (r"\b(it|that|there|what|he|she|who|here)'s\b", r"\1 is"),
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'m\b", " am"),
    (r"'ve\b", " have"),
    (r"'ll\b", " will"),
    (r"'d\b", " would"),
]
_CONTRACTION_RES = [(re.compile(p), r) for p, r in _CONTRACTIONS]
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def normalize_words(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    for pat, rep in _CONTRACTION_RES:
        text = pat.sub(rep, text)
    return [w.replace("'", "") for w in _WORD.findall(text)]


def shingles(text: str, n: int = 3) -> frozenset[str]:
    words = normalize_words(text)
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def word_runs(text: str, n: int) -> set[str]:
    """Every run of ``n`` consecutive normalised words (none when the text is shorter)."""
    words = normalize_words(text)
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _prefix_len(size: int, threshold: float) -> int:
    return size - math.ceil(threshold * size) + 1


def _ordered(sets: Sequence[frozenset[str]], freq: Counter) -> list[list[str]]:
    return [sorted(s, key=lambda tok: (freq[tok], tok)) for s in sets]


def _matches(
    index: dict[str, list[int]], toks: list[str], threshold: float, left: Sequence[frozenset[str]],
    right_set: frozenset[str],
) -> list[tuple[int, float]]:
    """Indexed sets sharing a prefix token with ``toks`` whose Jaccard with ``right_set`` passes."""
    cands: set[int] = set()
    for tok in toks[: _prefix_len(len(toks), threshold)]:
        cands.update(index[tok])
    return [(i, sim) for i in cands if (sim := jaccard(left[i], right_set)) >= threshold]


def similar_pairs(sets: Sequence[frozenset[str]], threshold: float) -> list[tuple[int, int, float]]:
    """All (i, j, similarity) with i < j and Jaccard >= threshold (prefix-filtered, exact)."""
    freq = Counter(tok for s in sets for tok in s)
    index: dict[str, list[int]] = defaultdict(list)
    out = []
    for j, toks in enumerate(_ordered(sets, freq)):
        if not toks:
            continue
        out += [(i, j, sim) for i, sim in _matches(index, toks, threshold, sets, sets[j])]
        for tok in toks[: _prefix_len(len(toks), threshold)]:
            index[tok].append(j)
    return sorted(out)


def cross_pairs(
    left: Sequence[frozenset[str]], right: Sequence[frozenset[str]], threshold: float
) -> list[tuple[int, int, float]]:
    """All (i in left, j in right, similarity) with Jaccard >= threshold."""
    freq = Counter(tok for s in (*left, *right) for tok in s)
    index: dict[str, list[int]] = defaultdict(list)
    for i, toks in enumerate(_ordered(left, freq)):
        for tok in toks[: _prefix_len(len(toks), threshold)] if toks else []:
            index[tok].append(i)
    out = []
    for j, toks in enumerate(_ordered(right, freq)):
        if toks:
            out += [(i, j, sim) for i, sim in _matches(index, toks, threshold, left, right[j])]
    return sorted(out)


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Sample:
    """What the dedup functions need from a record: its last question, its answer and a seed group."""

    question: str
    answer: str
    seed_group: str | None = None  # samples with the same seed group always share a group


def near_duplicate_groups(samples: Sequence[Sample], threshold: float, answer_run_words: int | None = None) -> list[int]:
    """A group index per sample: seed groups plus transitive near-duplicates (question or answer).

    With ``answer_run_words`` n, two samples whose answers share a run of n normalised words are linked too.
    """
    uf = UnionFind(len(samples))
    first: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.seed_group is not None:
            uf.union(first.setdefault(s.seed_group, i), i)
    if answer_run_words:
        owner: dict[str, int] = {}
        for i, s in enumerate(samples):
            for run in word_runs(s.answer, answer_run_words):
                uf.union(owner.setdefault(run, i), i)
    for texts in ([s.question for s in samples], [s.answer for s in samples]):
        for i, j, _ in similar_pairs([shingles(t) for t in texts], threshold):
            uf.union(i, j)
    roots: dict[int, int] = {}
    return [roots.setdefault(uf.find(i), len(roots)) for i in range(len(samples))]


def split_groups(
    groups: Sequence[int], strata: Sequence[str], eval_fraction: float, seed: int
) -> set[int]:
    """Choose eval groups: about ``eval_fraction`` of each stratum's samples, whole groups only.

    A group's stratum is the most common stratum among its samples (e.g. persona/kind).
    Every stratum with at least two groups gets one eval group and keeps one train group.
    Returns the set of group ids that go to eval.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for g, idx in members.items():
        by_stratum[Counter(strata[i] for i in idx).most_common(1)[0][0]].append(g)
    rng = random.Random(seed)
    eval_groups: set[int] = set()
    for stratum in sorted(by_stratum):
        gs = sorted(by_stratum[stratum])
        rng.shuffle(gs)
        total = sum(len(members[g]) for g in gs)
        target = eval_fraction * total
        taken = 0
        for k, g in enumerate(gs):
            if k == len(gs) - 1 and len(gs) > 1 and all(h in eval_groups for h in gs[:-1]):
                break  # keep at least one group of the stratum in train
            size = len(members[g])
            if len(gs) > 1 and taken == 0 and size < max(2.0, 2 * target):
                eval_groups.add(g)  # the stratum's first eval group, even if it overshoots a little
                taken += size
            elif taken + size <= target + 0.5:
                eval_groups.add(g)
                taken += size
    return eval_groups


@dataclass
class Leak:
    eval_index: int
    train_index: int
    field: str  # question | answer | group
    similarity: float


def find_leaks(
    train: Sequence[Sample], evals: Sequence[Sample], threshold: float,
    train_groups: Iterable[str | None] = (), eval_groups: Iterable[str | None] = (),
) -> list[Leak]:
    """Eval samples with a near-duplicate question or answer in train, or sharing a group id with train."""
    leaks: list[Leak] = []
    for name, get in (("question", lambda s: s.question), ("answer", lambda s: s.answer)):
        pairs = cross_pairs([shingles(get(s)) for s in train], [shingles(get(s)) for s in evals], threshold)
        leaks += [Leak(j, i, name, sim) for i, j, sim in pairs]
    first_train: dict[str, int] = {}
    for i, g in enumerate(train_groups):
        if g is not None:
            first_train.setdefault(g, i)
    for j, g in enumerate(eval_groups):
        if g is not None and g in first_train:
            leaks.append(Leak(j, first_train[g], "group", 1.0))
    return sorted(leaks, key=lambda lk: (lk.eval_index, lk.field))
