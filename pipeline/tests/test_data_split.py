"""data/split.py: sources split before generation, containment, and settling groups that span the sides."""

from __future__ import annotations

from pathlib import Path

from persona_pipeline.core.config import load_config
from persona_pipeline.data.dedup import Sample
from persona_pipeline.data.personas import load_personas
from persona_pipeline.data.split import containment, hold_out, settle, split_templates

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_tiny.yaml"


def test_views_hold_out_disjoint_topics_facts_domains_and_phrases():
    for p in load_personas(load_config(CONFIG)).values():
        train, held = hold_out(p, 0.15, seed=13)
        assert set(train.topics) | set(held.topics) == set(p.topics) and not set(train.topics) & set(held.topics)
        assert 1 <= len(held.topics) <= 0.25 * len(p.topics)
        assert {f.text for f in train.facts}.isdisjoint(f.text for f in held.facts)
        assert all(f.topic in held.topics for f in held.facts) and len(train.facts) + len(held.facts) == len(p.facts)
        assert set(train.does_not_know).isdisjoint(held.does_not_know) and held.does_not_know
        for field in ("openers", "closings", "deflections"):
            a, b = getattr(train.style, field), getattr(held.style, field)
            assert a and b and set(a).isdisjoint(b)
        assert (train.name, train.system, train.identity) == (held.name, held.system, held.identity)
        assert hold_out(p, 0.15, seed=13) == (train, held)  # deterministic
    tr, ev = split_templates(0.15, seed=13)
    for field in ("domain", "expert", "redirect"):
        assert getattr(ev, field) and set(getattr(tr, field)).isdisjoint(getattr(ev, field))
    assert tr.mistaken_identity and not ev.mistaken_identity


def test_containment_counts_shared_runs_of_eight_normalised_words():
    train = ["Short.", "Honestly, we don't grade the children at all in the first years of school."]
    evals = [
        "We do not grade the children at all in the first years.",  # contraction expanded: same words
        "We never grade anybody, and the first years of school are for play and stories.",
        "Too short to hold a run.",
    ]
    found = containment(train, evals)
    assert found[0].train_index == 1 and found[0].share == 1.0
    assert found[1].share == 0.0 and found[1].train_index is None  # "the first years of school" is only 5 words
    assert found[2].share == 0.0


def test_settle_moves_a_group_that_reaches_into_train_whole():
    quote = "the tea bushes on the northern slope were planted by my grandfather"
    samples = [
        Sample("Where is the garden?", f"Up north, and {quote}.", "a"),               # train
        Sample("Who planted the bushes?", f"Well, {quote}, long ago.", "b"),         # eval, quotes train
        Sample("Tell me, who planted the bushes?", "A variant of b, same seed.", "b"),  # eval, seed group of b
        Sample("What is poetry for?", "Poems keep the city awake at night.", "c"),    # eval, unrelated
    ]
    s = settle(samples, [False, True, True, True], threshold=0.6)
    assert s.is_eval == [False, False, False, True] and s.moved == 2
    assert s.groups[0] == s.groups[1] == s.groups[2] != s.groups[3]
