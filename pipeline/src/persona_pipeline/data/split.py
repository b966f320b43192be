"""Train/eval split by source, and the containment measure of leakage.

Generated answers are assembled from a persona file's pieces (facts by topic,
openers, closings, deflections, the domains it does not know) and from fixed
contrastive lines; real ones are transcript turns. Splitting finished samples
cannot keep those pieces apart (one fact sits in many answers), so the sources
are split first: :func:`hold_out` gives each persona a *train view* and an
*eval view* with disjoint topics (and their facts), domains and style phrases,
and :func:`split_templates` does the same for the contrastive lines; each side
is then generated from its own view. Transcript turns are split by
near-duplicate group (:func:`persona_pipeline.data.dedup.split_groups`).

What can still link the sides (a fact quoted in a transcript, a phrase shared
by two personas) is caught by :func:`settle`: samples linked by a shared
8-word answer run, a near-duplicate question or answer, or a seed group form
one group, and a group with members on both sides goes to train whole.

Leakage is measured by *containment*: the share of an eval answer's 8-word runs
(normalised words, see :func:`persona_pipeline.data.dedup.normalize_words`) that
occur in any train answer. Jaccard similarity misses a long quote inside a
longer answer; containment does not.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from persona_pipeline.data.dedup import Sample, near_duplicate_groups, word_runs
from persona_pipeline.data.personas import Persona
from persona_pipeline.data.synth import Templates

RUN_WORDS = 8  # a shared run this long is a quote, not a common phrase ("I don't know what to say")
T = TypeVar("T")


def _divide(items: Sequence[T], fraction: float, rng: random.Random) -> tuple[tuple[T, ...], tuple[T, ...]]:
    """(train, eval): about ``fraction`` of the items to eval, at least one on each side when there are two."""
    if len(items) < 2:
        return tuple(items), tuple(items)  # nothing to divide: both sides share it (settle() catches quotes)
    order = list(range(len(items)))
    rng.shuffle(order)
    k = min(len(items) - 1, max(1, round(fraction * len(items))))
    held = set(order[:k])
    return (tuple(x for i, x in enumerate(items) if i not in held), tuple(x for i, x in enumerate(items) if i in held))


def hold_out(p: Persona, fraction: float, seed: int) -> tuple[Persona, Persona]:
    """(train view, eval view) of a persona: disjoint topics with their facts, domains and style phrases.

    Identity, keywords and the system line stay whole: they define the persona on both sides.
    """
    rng = random.Random(f"{seed}|hold_out|{p.name}")
    topics = _divide(p.topics, fraction, rng)
    domains = _divide(p.does_not_know, fraction, rng)
    openers = _divide(p.style.openers, fraction, rng)
    closings = _divide(p.style.closings, fraction, rng)
    deflections = _divide(p.style.deflections, fraction, rng)
    views = []
    for side in (0, 1):
        style = dataclasses.replace(p.style, openers=openers[side], closings=closings[side], deflections=deflections[side])
        views.append(dataclasses.replace(
            p, topics=topics[side], facts=tuple(f for f in p.facts if f.topic in topics[side]),
            does_not_know=domains[side], style=style,
        ))
    return views[0], views[1]


def split_templates(fraction: float, seed: int) -> tuple[Templates, Templates]:
    """(train, eval) contrastive lines; the fixed mistaken-identity answer is train only."""
    rng = random.Random(f"{seed}|templates")
    full = Templates()
    domain, expert, redirect = (_divide(getattr(full, f), fraction, rng) for f in ("domain", "expert", "redirect"))
    return (Templates(domain[0], expert[0], redirect[0], True), Templates(domain[1], expert[1], redirect[1], False))


@dataclass(frozen=True)
class Contained:
    share: float  # of the eval answer's runs, the share found in train answers
    train_index: int | None  # a train answer holding one of them (None when share is 0)


def containment(train_answers: Sequence[str], eval_answers: Sequence[str], n: int = RUN_WORDS) -> list[Contained]:
    """Per eval answer: the share of its ``n``-word runs found in any train answer (0 when it has none)."""
    first: dict[str, int] = {}
    for i, a in enumerate(train_answers):
        for run in word_runs(a, n):
            first.setdefault(run, i)
    out = []
    for a in eval_answers:
        runs = word_runs(a, n)
        hits = sorted(first[r] for r in runs if r in first)
        out.append(Contained(len(hits) / len(runs) if runs else 0.0, hits[0] if hits else None))
    return out


@dataclass
class Settled:
    groups: list[int]  # group index per sample (what meta.group is built from)
    is_eval: list[bool]
    moved: int  # eval samples moved to train because their group reached into train


def settle(samples: Sequence[Sample], is_eval: Sequence[bool], threshold: float) -> Settled:
    """Group linked samples (seed group, near-duplicate, shared answer run) and keep each group on one side."""
    groups = near_duplicate_groups(samples, threshold, answer_run_words=RUN_WORDS)
    in_train = {g for g, e in zip(groups, is_eval, strict=True) if not e}
    final = [e and g not in in_train for g, e in zip(groups, is_eval, strict=True)]
    return Settled(groups, final, sum(e and not f for e, f in zip(is_eval, final, strict=True)))


def eval_count(n: int, fraction: float) -> int:
    """How many of ``n`` generated samples an eval view gets (at least one)."""
    return max(1, math.floor(fraction * n + 0.5))
