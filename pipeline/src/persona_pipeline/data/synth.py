"""The *hypothetical* and *contrastive* kinds, built from persona files (no model, deterministic).

Hypothetical: questions come from each fact's ``ask`` list and from topic
frames ("What does {topic} mean to you?"); the answer is one of the persona's
openers, the fact (plus a companion fact on the same topic) and sometimes a
closing phrase, all written in the persona's voice in its YAML file.

A hypothetical answer is ``quote_derived`` when every fact in it has a transcript
source (``facts[].source`` in the persona file), else ``invented``; contrastive
answers are ``invented`` (the deflections are written for this project).

Contrastive: questions about the domains in ``does_not_know`` (and, when the
domain has an ``expert``, a few that mistake this persona for that one). The
answer declines in the persona's own voice (``style.deflections``), names the
persona who would know, and steers back to one of its own topics and facts,
so the model learns where one persona ends and the next begins.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from persona_pipeline.data.personas import Domain, Fact, Persona
from persona_pipeline.data.rephrase import attach_opener, openers_for

# The topic sits early or in the middle and the fixed words are few, so that two frames
# filled with different short topics ("Dhaka", "translation") are not near-duplicates.
TOPIC_FRAMES = [
    "What does {topic} mean to you?",
    "What has {topic} taught you?",
    "Tell me what {topic} means to you.",
    "Why does {topic} matter so much to you?",
    "Is {topic} misunderstood, do you think?",
    "How would you explain {topic} to a child?",
    "How did {topic} first come into your life?",
    "What surprises people most about {topic}?",
]

CONTRASTIVE_FRAMES = [
    "What's your advice on {domain}?",
    "Can you explain {domain} to me?",
    "I'd love your expert opinion on {domain}.",
    "What do you know about {domain}?",
    "What's the most important thing to get right in {domain}?",
    "Could you teach me the basics of {domain}?",
    "Where would a beginner start with {domain}?",
]
MISTAKEN_FRAMES = [
    "You're {expert}, aren't you? Tell me about {domain}.",
    "I hear you are the expert on {domain}. Where should I start?",
]
DOMAIN_LINES = [
    "{Domain} is not something I know much about.",
    "I'd only be guessing about {domain}, and you deserve better than a guess.",
    "When it comes to {domain}, I'm an enthusiastic amateur at best.",
    "I have never had my hands in {domain}, so anything I said would be made up.",
]
EXPERT_LINES = [
    "{expert} is the one to ask about that.",
    "You really want {expert} for that; it's {expert}'s world, not mine.",
    "Ask {expert}, who lives and breathes it.",
]
REDIRECT_LINES = [
    "What I can talk about is {topic}. {fact}",
    "My own world is {topic}. {fact}",
    "Where I can help is with {topic}. {fact}",
]


@dataclass(frozen=True)
class Templates:
    """The fixed answer lines of contrastive samples; train and eval draw from disjoint sets (data/split.py)."""

    domain: tuple[str, ...] = tuple(DOMAIN_LINES)
    expert: tuple[str, ...] = tuple(EXPERT_LINES)
    redirect: tuple[str, ...] = tuple(REDIRECT_LINES)
    # "No, I'm <name>, <system>." is the same words every time, so only one side may use it.
    mistaken_identity: bool = True


@dataclass
class Draft:
    """A single-turn sample before grouping and splitting."""

    persona: str
    kind: str
    question: str
    answer: str
    source: str
    seed_group: str
    conversation: str | None = None  # extracted: transcript conversation, for natural multi-turn chains
    order: int = -1  # extracted: position in the conversation (real order)
    # Provenance (ORIGINS): a real quote, derived from quotes (a sourced fact, a transformed quote),
    # or invented (a fact without a transcript source, deflections written for this project).
    origin: str = "invented"
    derived_question: bool = False  # extracted: the question was derived, not asked in the transcript
    reviewed: str | None = None  # accept | edit once a person reviewed it (make review)
    writer: str = "templates"  # templates | model (hypothetical answers written by generate.writer_model)


ORIGINS = ("quote", "quote_derived", "invented")


def facts_origin(facts: Sequence[Fact]) -> str:
    """``quote_derived`` when every fact in an answer has a transcript source, else ``invented``."""
    return "quote_derived" if all(f.source for f in facts) else "invented"


def _answer(p: Persona, rng: random.Random, facts: Sequence[Fact], closing: bool) -> str:
    body = " ".join(f.text for f in facts)
    options = openers_for(body, p.style.openers)
    text = attach_opener(rng.choice(options), body) if options else body
    if closing:
        text += " " + rng.choice(p.style.closings)
    return text


def hypothetical(p: Persona, n: int, seed: int) -> list[Draft]:
    """``n`` question/answer pairs in ``p``'s voice: fact questions first, then topic frames."""
    rng = random.Random(f"{seed}|hypothetical|{p.name}")
    fact_items: list[tuple[str, list[Fact]]] = []
    for fact in p.facts:
        companions = [f for f in p.facts_for(fact.topic) if f is not fact]
        for ask in fact.ask:
            extra = [rng.choice(companions)] if companions and rng.random() < 0.6 else []
            fact_items.append((ask, [fact, *extra]))
    rng.shuffle(fact_items)
    frame_items: list[tuple[str, list[Fact]]] = []
    for k, frame in enumerate(TOPIC_FRAMES):
        for topic in p.topics:
            facts = p.facts_for(topic)
            chosen = [facts[k % len(facts)]] + ([facts[(k + 1) % len(facts)]] if len(facts) > 1 else [])
            frame_items.append((frame.format(topic=topic), chosen))
    rng.shuffle(frame_items)  # when n is small, spread the frame questions over topics and frames
    items = (fact_items + frame_items)[:n]
    return [
        Draft(p.name, "hypothetical", q, _answer(p, rng, facts, closing=rng.random() < 0.5), p.source, f"h:{p.name}:{i}",
              origin=facts_origin(facts))
        for i, (q, facts) in enumerate(items)
    ]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def contrastive(p: Persona, n: int, seed: int, lines: Templates = Templates()) -> list[Draft]:
    """``n`` samples where ``p`` is asked about a domain it does not know and says so, in its own voice."""
    rng = random.Random(f"{seed}|contrastive|{p.name}")
    items: list[tuple[str, Domain, bool]] = []
    for k in range(max(len(CONTRASTIVE_FRAMES), len(MISTAKEN_FRAMES))):
        for d in p.does_not_know:
            if k < len(CONTRASTIVE_FRAMES):
                items.append((CONTRASTIVE_FRAMES[(k + len(items)) % len(CONTRASTIVE_FRAMES)].format(domain=d.domain), d, False))
            if d.expert and k < len(MISTAKEN_FRAMES) and lines.mistaken_identity:
                items.append((MISTAKEN_FRAMES[k].format(expert=d.expert, domain=d.domain), d, True))
    # Interleave so the first n cover every domain and both question styles.
    plain = [it for it in items if not it[2]]
    mistaken = [it for it in items if it[2]]
    ordered: list[tuple[str, Domain, bool]] = []
    while plain or mistaken:
        ordered.extend(plain[:3])
        plain = plain[3:]
        ordered.extend(mistaken[:1])
        mistaken = mistaken[1:]
    facts = list(p.facts)
    rng.shuffle(facts)  # redirects cycle through all facts before any repeats
    drafts = []
    for i, (question, d, mistaken_identity) in enumerate(ordered[:n]):
        parts = []
        if mistaken_identity:
            parts.append(f"No, I'm {p.name}, {p.system.rstrip('.')}.")
        else:
            parts.append(rng.choice(p.style.deflections))
            parts.append(rng.choice(lines.domain).format(domain=d.domain, Domain=_cap(d.domain)))
        if d.expert:
            parts.append(rng.choice(lines.expert).format(expert=d.expert))
        fact = facts[i % len(facts)]
        parts.append(rng.choice(lines.redirect).format(topic=fact.topic, fact=fact.text))
        drafts.append(Draft(p.name, "contrastive", question, " ".join(parts), p.source, f"c:{p.name}:{i}"))
    return drafts
