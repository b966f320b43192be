"""Building the persona train/eval sets in memory (what `make data` writes and `make review` walks through).

See :mod:`persona_pipeline.stages.data` for the steps; :func:`make_drafts` gives the
samples of one side before grouping, :func:`build` the whole split.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.prompt_format import format_completion, format_prompt
from persona_pipeline.core.records import KINDS, Record
from persona_pipeline.data.dedup import Sample, near_duplicate_groups, split_groups
from persona_pipeline.data.personas import Persona
from persona_pipeline.data.rephrase import transform
from persona_pipeline.data.review import Decision, apply_decisions
from persona_pipeline.data.split import containment, eval_count, hold_out, settle, split_templates
from persona_pipeline.data.synth import ORIGINS, Draft, Templates, contrastive, hypothetical
from persona_pipeline.data.transcripts import Pair
from persona_pipeline.data.writer import ModelWriter


@dataclass
class Dataset:
    train: list[Record]
    eval: list[Record]
    stats: dict[str, Any]


def _extracted(pairs: list[Pair], personas: dict[str, Persona]) -> list[Draft]:
    # Pieces of one turn share the turn's source and so its seed group: they stay on one side of the split.
    return [
        Draft(p.persona, "extracted", p.question, p.answer, p.source, f"x:{p.source}", p.conversation, p.order,
              origin="quote", derived_question=p.derived)
        for p in pairs
        if p.persona in personas
    ]


def _transformed(drafts: list[Draft], personas: dict[str, Persona], per_sample: int) -> list[Draft]:
    out = []
    for d in drafts:
        for k in range(1, per_sample + 1):
            q, a = transform(d.question, d.answer, personas[d.persona].style.openers, d.source + "|" + d.question, k)
            if (q, a) != (d.question, d.answer):
                origin = "invented" if d.origin == "invented" else "quote_derived"
                out.append(Draft(d.persona, "transformed", q, a, d.source, d.seed_group, origin=origin))
    return out


def _dedupe_exact(drafts: list[Draft]) -> list[Draft]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for d in drafts:
        key = (d.persona, " ".join(d.question.lower().split()), " ".join(d.answer.lower().split()))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


def _compose_multi_turn(
    singles: list[tuple[Draft, str]], fraction: float, budget_words: int, rng: random.Random
) -> list[tuple[list[Draft], Draft, str]]:
    """(history, final, group) triples: natural transcript chains first, then same-persona pairings."""
    target = round(fraction * len(singles))
    out: list[tuple[list[Draft], Draft, str]] = []
    used: set[tuple[int, ...]] = set()
    # Natural: a persona's consecutive samples in one transcript conversation, in their real order
    # (the pieces of a split turn, or the next answer the persona gave).
    extracted = sorted(
        (i for i, (d, _) in enumerate(singles) if d.kind == "extracted"),
        key=lambda i: (singles[i][0].conversation or "", singles[i][0].persona, singles[i][0].order),
    )
    for a, b in zip(extracted, extracted[1:], strict=False):
        da, db = singles[a][0], singles[b][0]
        if len(out) >= target:
            break
        if da.conversation == db.conversation and da.persona == db.persona:
            if _words(da.question, da.answer, db.question, db.answer) <= budget_words:
                out.append(([da], db, singles[b][1]))
                used.add((a, b))
    # Synthetic: earlier turns from the same persona's own-domain samples, any kind last.
    by_persona: dict[str, list[int]] = defaultdict(list)
    for i, (d, _) in enumerate(singles):
        if d.kind in ("extracted", "hypothetical"):
            by_persona[d.persona].append(i)
    finals = list(range(len(singles)))
    rng.shuffle(finals)
    for f in finals:
        if len(out) >= target:
            break
        final, group = singles[f]
        # Not the final's own group: asking the same thing twice is not a conversation.
        pool = [i for i in by_persona.get(final.persona, []) if singles[i][1] != group]
        if not pool:
            continue
        n_hist = 2 if rng.random() < 0.25 and len(pool) > 1 else 1
        hist_idx = rng.sample(pool, n_hist)
        key = (*hist_idx, f)
        history = [singles[i][0] for i in hist_idx]
        if key in used or _words(final.question, final.answer, *(t for h in history for t in (h.question, h.answer))) > budget_words:
            continue
        used.add(key)
        out.append((history, final, group))
    return out


def _record(p: Persona, final: Draft, group: str, history: Sequence[Draft] = ()) -> Record:
    return {
        "prompt": format_prompt(p.name, p.system, final.question, [(h.question, h.answer) for h in history]),
        "completion": format_completion(final.answer),
        "meta": {
            "persona": p.name,
            "kind": final.kind,
            "group": group,
            "source": final.source,
            "origin": final.origin,
            "reviewed": final.reviewed,
            "writer": final.writer,
            "turns": len(history) + 1,
        },
    }


def _side_drafts(
    cfg: Config, views: dict[str, Persona], extracted: list[Draft], lines: Templates, is_eval: bool,
    decisions: dict[str, Decision], writer: ModelWriter | None = None, eval_answers: Sequence[str] = (),
) -> tuple[list[Draft], dict[str, int]]:
    """One side's single-turn drafts, generated only from that side's persona views and lines,
    with the review decisions applied (and the review counts).

    Decisions apply to the extracted / hypothetical / contrastive drafts first, so the
    transformed variants are built from reviewed (edited, not rejected) answers, and then
    to the transformed variants themselves.
    """
    g = cfg.generate
    n_hypo, n_contra = (eval_count(n, g.eval_fraction) for n in (g.hypothetical_per_persona, g.contrastive_per_persona))
    if not is_eval:
        n_hypo, n_contra = g.hypothetical_per_persona - n_hypo, g.contrastive_per_persona - n_contra
    hypo = [d for p in views.values() for d in hypothetical(p, n_hypo, g.seed)]
    contra = [d for p in views.values() for d in contrastive(p, n_contra, g.seed, lines)]
    if writer is not None:  # model-written answers to the same questions, filtered
        hypo = writer.rewrite(views, hypo, extracted, extracted + hypo + contra, eval_answers)
    base = extracted + hypo + contra
    if is_eval:  # generated seed groups are numbered per persona and side; transcript ones name their turn
        base = [dataclasses.replace(d, seed_group=f"eval|{d.seed_group}") for d in base]
    base, counts = apply_decisions(base, decisions)
    kept = [d for d in base if d.kind != "contrastive"]
    trans, more = apply_decisions(_transformed(kept, views, g.transformed_per_sample), decisions)
    for k, v in more.items():
        counts[k] += v
    return kept + trans + [d for d in base if d.kind == "contrastive"], counts


def _views(cfg: Config, personas: dict[str, Persona]) -> dict[str, tuple[Persona, Persona]]:
    """Each persona's (train, eval) views: topics and domains held out per side before generation."""
    return {name: hold_out(p, cfg.generate.eval_fraction, cfg.generate.seed) for name, p in personas.items()}


def make_drafts(
    cfg: Config, personas: dict[str, Persona], pairs: list[Pair], decisions: dict[str, Decision] | None = None,
    writer: ModelWriter | None = None,
) -> tuple[list[list[Draft]], dict[str, int]]:
    """The train and eval sides' single-turn drafts (review decisions applied) and the review counts.

    The eval side is built first: a writer model's train answers are checked for leakage against it.
    """
    g = cfg.generate
    views = _views(cfg, personas)
    lines = split_templates(g.eval_fraction, g.seed)
    extracted = _extracted(pairs, personas)
    # Transcript turns: whole near-duplicate groups to one side, about eval_fraction of each persona's.
    ex_groups = near_duplicate_groups([Sample(d.question, d.answer, d.seed_group) for d in extracted], g.near_duplicate_threshold)
    ex_eval = split_groups(ex_groups, [d.persona for d in extracted], g.eval_fraction, g.seed)
    sides: list[list[Draft]] = [[], []]
    counts: dict[str, int] = {}
    for side in (1, 0):
        drafts, c = _side_drafts(cfg, {n: v[side] for n, v in views.items()},
                                 [d for d, gi in zip(extracted, ex_groups, strict=True) if (gi in ex_eval) == bool(side)],
                                 lines[side], bool(side), decisions or {}, writer if side == 0 else None,
                                 [d.answer for d in sides[1]])
        sides[side] = drafts
        counts = {k: counts.get(k, 0) + v for k, v in c.items()}
    return sides, counts


def build(
    cfg: Config, personas: dict[str, Persona], pairs: list[Pair], decisions: dict[str, Decision] | None = None,
    writer: ModelWriter | None = None,
) -> Dataset:
    """Everything except reading inputs and writing outputs (deterministic; the writer model is greedy and cached)."""
    g = cfg.generate
    sides, review = make_drafts(cfg, personas, pairs, decisions, writer)
    views = _views(cfg, personas)
    drafts = _dedupe_exact(sides[0] + sides[1])  # an exact duplicate keeps its train copy
    eval_ids = {id(d) for d in sides[1]}
    settled = settle([Sample(d.question, d.answer, d.seed_group) for d in drafts],
                     [id(d) in eval_ids for d in drafts], g.near_duplicate_threshold)
    group_idx = settled.groups
    eval_groups = {gi for gi, e in zip(group_idx, settled.is_eval, strict=True) if e}

    rng = random.Random(g.seed)
    budget = cfg.data.max_length // 2  # words; leaves room for the system line and subword splits
    splits: dict[str, list[Record]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    multi: dict[str, int] = {}
    origins: dict[str, dict[str, int]] = {}
    for split in ("train", "eval"):
        singles = [(d, f"g{gi:04d}") for d, gi in zip(drafts, group_idx, strict=True) if (gi in eval_groups) == (split == "eval")]
        records = [_record(personas[d.persona], d, grp) for d, grp in singles]
        chains = _compose_multi_turn(singles, g.multi_turn_fraction, budget, rng)
        records += [_record(personas[final.persona], final, grp, hist) for hist, final, grp in chains]
        rng.shuffle(records)
        splits[split] = records
        multi[split] = len(chains)
        table = {name: {k: 0 for k in KINDS} for name in personas}
        for r in records:
            table[r["meta"]["persona"]][r["meta"]["kind"]] += 1
        counts[split] = table
        origins[split] = {o: sum(r["meta"]["origin"] == o for r in records) for o in ORIGINS}

    sizes: dict[int, int] = defaultdict(int)
    for gi in group_idx:
        sizes[gi] += 1
    stats = {
        "config": cfg.name,
        "personas": sorted(personas),
        "records": {s: len(r) for s, r in splits.items()},
        "counts": counts,
        "multi_turn": multi,
        "singles_by_kind": {k: sum(d.kind == k for d in drafts) for k in KINDS},
        # Provenance of every record (train + eval): real quotes, quote-derived, invented.
        "origin": origins,
        "origin_share": _shares({o: sum(origins[s][o] for s in origins) for o in ORIGINS}),
        "derived_questions": sum(d.derived_question for d in drafts),
        # Human review (make review): decisions applied to this data; stale = text changed since review.
        "review": review,
        "writer": dataclasses.asdict(writer.report) if writer else {"mode": "templates"},
        "groups": {
            "total": len(sizes),
            "eval": len(eval_groups),
            "largest": max(sizes.values(), default=0),
            "with_several_samples": sum(v > 1 for v in sizes.values()),
        },
        "near_duplicate_threshold": g.near_duplicate_threshold,
        "held_out": {
            name: {"topics": len(v[1].topics), "of_topics": len(personas[name].topics),
                   "domains": len(v[1].does_not_know), "of_domains": len(personas[name].does_not_know)}
            for name, v in views.items()
        },
        "moved_to_train": settled.moved,
        "eval_answers_sharing_8_word_run": sum(c.share > 0 for c in containment(
            [r["completion"] for r in splits["train"]], [r["completion"] for r in splits["eval"]])),
        "eval_fraction_target": g.eval_fraction,
    }
    return Dataset(splits["train"], splits["eval"], stats)


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: round(v / total, 4) if total else 0.0 for k, v in counts.items()}
