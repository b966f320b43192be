"""Near-duplicate detection, grouping, the group-aware split, leakage checks and the rephrasing method."""

from __future__ import annotations

import itertools
import random

from persona_pipeline.data.dedup import (
    Sample,
    cross_pairs,
    find_leaks,
    jaccard,
    near_duplicate_groups,
    shingles,
    similar_pairs,
    split_groups,
)
from persona_pipeline.data.rephrase import apply_synonyms, flip_contractions, transform

WORDS = "tea school poem child river exam garden festival soil book rain teacher cow leaf story light".split()


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    base = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n // 2)]
    # Near copies: one word changed or appended, so many pairs sit around the threshold.
    near = [t + " " + rng.choice(WORDS) if rng.random() < 0.5 else t.replace(t.split()[0], rng.choice(WORDS), 1) for t in base]
    return base + near


def test_normalisation_ignores_contractions_case_and_punctuation():
    assert shingles("I don't know, it's TRUE!") == shingles("i do not know it is true")
    assert jaccard(shingles("a b c d"), shingles("a b c d")) == 1.0
    assert shingles("") == frozenset() and jaccard(frozenset(), frozenset()) == 0.0


def test_prefix_filtered_search_matches_brute_force():
    texts = _random_texts(120, 7)
    sets = [shingles(t) for t in texts]
    for threshold in (0.4, 0.6, 0.8):
        brute = {(i, j) for i, j in itertools.combinations(range(len(sets)), 2) if jaccard(sets[i], sets[j]) >= threshold}
        assert {(i, j) for i, j, _ in similar_pairs(sets, threshold)} == brute
        left, right = sets[:60], sets[60:]
        brute_x = {(i, j) for i in range(60) for j in range(len(right)) if jaccard(left[i], right[j]) >= threshold}
        assert {(i, j) for i, j, _ in cross_pairs(left, right, threshold)} == brute_x


def test_groups_are_transitive_and_honour_seed_groups():
    samples = [
        Sample("How do you make compost for the tea garden?", "With cow dung and leaves.", "a"),
        Sample("How do you make compost for the tea garden today?", "Something else entirely here.", "b"),
        Sample("Unrelated question about poetry readings?", "An unrelated answer about poems.", "c"),
        Sample("A rephrased variant with other words?", "A different answer text too.", "a"),
    ]
    groups = near_duplicate_groups(samples, 0.6)
    assert groups[0] == groups[1] == groups[3]  # near-duplicate question; shared seed group
    assert groups[2] != groups[0]


def test_split_keeps_groups_whole_and_covers_every_stratum():
    rng = random.Random(3)
    groups, strata = [], []
    for g in range(200):
        size = rng.choice([1, 1, 2, 3])
        groups += [g] * size
        strata += [f"p{g % 3}/k{g % 4}"] * size
    eval_groups = split_groups(groups, strata, 0.15, seed=1)
    n_eval = sum(g in eval_groups for g in groups)
    assert 0.10 <= n_eval / len(groups) <= 0.20
    for s in set(strata):
        gs = {g for g, st in zip(groups, strata, strict=True) if st == s}
        assert gs & eval_groups and gs - eval_groups  # each stratum in both splits
    assert split_groups(groups, strata, 0.15, seed=1) == eval_groups  # deterministic


def test_find_leaks_reports_question_answer_and_group_leaks():
    train = [Sample("What is the best time to pick tea?", "The first flush in spring.", "g1"),
             Sample("Why write poems at night?", "Because the city is quiet then.", "g2")]
    evals = [Sample("What is the best time to pick the tea?", "Something new.", "g9"),
             Sample("Totally different?", "Because the city is quiet then!", "g8"),
             Sample("Fresh question here?", "Fresh answer here.", "g2"),
             Sample("Clean question?", "Clean answer.", "g7")]
    leaks = find_leaks(train, evals, 0.6, [s.seed_group for s in train], [s.seed_group for s in evals])
    assert {(lk.eval_index, lk.field) for lk in leaks} == {(0, "question"), (1, "answer"), (2, "group")}


def test_rephrasing_is_deterministic_and_documented_steps_apply():
    assert flip_contractions("I do not know what it is.") == "I don't know what it is."  # no contraction at the end
    assert flip_contractions("It's fine, I'm here.") == "It is fine, I am here."
    assert apply_synonyms("Maybe it is really big.") == "Perhaps it is truly large."
    args = ("Why do you farm this way?", "Well, it is a really long story.", ["Actually,", "Let me explain."], "src:1")
    a, b = transform(*args, 1), transform(*args, 1)
    assert a == b and a != args[:2]
    assert a[1] in ("Actually, it's a truly long story.", "Let me explain. It's a truly long story.")
    assert len({transform(*args, k) for k in range(1, 6)}) > 1  # variants differ
