"""`make data`: build the encrypted persona train/eval sets and a stats report.

Steps: load personas -> ingest transcripts (*extracted*) -> split the sources
(data/split.py: transcript turns by near-duplicate group; persona topics, facts,
domains and style phrases into a train and an eval view) -> per side,
*hypothetical* (templates, or with ``generate.writer: model`` written by a local
model on the train side, filtered; data/writer.py) and *contrastive* samples from
that side's views, the human review decisions of ``make review`` applied
(data/review.py), and *transformed* variants of its extracted and hypothetical
samples -> groups linking
near-duplicates and answers that share an 8-word run; a group reaching into
train goes to train whole -> multi-turn prompts composed inside each split (so
they cannot leak) -> write ``train.jsonl.enc``, ``eval.jsonl.enc`` and
``stats.json`` (counts only, no text).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from persona_pipeline.data.dedup import Sample, near_duplicate_groups, split_groups
from persona_pipeline.data.split import containment, eval_count, hold_out, settle, split_templates
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.stages.keys import ensure_key
from persona_pipeline.data.personas import Persona, load_personas
from persona_pipeline.core.prompt_format import format_completion, format_prompt
from persona_pipeline.core.records import Record, write_records
from persona_pipeline.data.rephrase import transform
from persona_pipeline.data.review import Decision, apply_decisions, load_decisions
from persona_pipeline.data.writer import ModelWriter
from persona_pipeline.data.synth import ORIGINS, Draft, Templates, contrastive, hypothetical
from persona_pipeline.data.transcripts import Pair, TranscriptStats, check_fact_sources, ingest_all

if TYPE_CHECKING:  # pragma: no cover
    from persona_pipeline.core.config import Config

log = logging.getLogger(__name__)

KINDS = ("extracted", "transformed", "hypothetical", "contrastive")
STATS_FILE = "stats.json"


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
    for a, b in zip(extracted, extracted[1:]):
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
                                 [d for d, gi in zip(extracted, ex_groups) if (gi in ex_eval) == bool(side)],
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
    eval_groups = {gi for gi, e in zip(group_idx, settled.is_eval) if e}

    rng = random.Random(g.seed)
    budget = cfg.data.max_length // 2  # words; leaves room for the system line and subword splits
    splits: dict[str, list[Record]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    multi: dict[str, int] = {}
    origins: dict[str, dict[str, int]] = {}
    for split in ("train", "eval"):
        singles = [(d, f"g{gi:04d}") for d, gi in zip(drafts, group_idx) if (gi in eval_groups) == (split == "eval")]
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


def _table(stats: dict[str, Any], transcripts: list[TranscriptStats]) -> str:
    lines = [f"{'persona':<10}{'split':<7}" + "".join(f"{k:>14}" for k in KINDS) + f"{'multi-turn':>12}{'total':>8}"]
    for split in ("train", "eval"):
        for name, row in stats["counts"][split].items():
            lines.append(f"{name:<10}{split:<7}" + "".join(f"{row[k]:>14}" for k in KINDS) + f"{'':>12}{sum(row.values()):>8}")
        lines.append(f"{'all':<10}{split:<7}" + "".join(
            f"{sum(r[k] for r in stats['counts'][split].values()):>14}" for k in KINDS
        ) + f"{stats['multi_turn'][split]:>12}{stats['records'][split]:>8}")
    lines.append("")
    lines.append(f"{'transcript':<40}{'status':<9}{'persona turns: found':>21}{'used':>6}{'dropped':>8}"
                 f"{'samples':>9}{'derived q':>10}{'split':>7}  unmapped / skipped speakers")
    for t in transcripts:
        found, used = sum(t.persona_turns.values()), sum(t.used_turns.values())
        lines.append(f"{t.file[:39]:<40}{t.status:<9}{found:>21}{used:>6}{found - used:>8}{sum(t.samples.values()):>9}"
                     f"{t.derived_questions:>10}{t.split_turns:>7}  "
                     f"{sum(t.unmapped_speakers.values())} / {sum(t.skipped_speakers.values())}")
        for who in sorted(t.persona_turns):
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(t.dropped.get(who, {}).items()))
            lines.append(f"  {who:<47}{t.persona_turns[who]:>21}{t.used_turns.get(who, 0):>6}"
                         f"{t.persona_turns[who] - t.used_turns.get(who, 0):>8}{t.samples.get(who, 0):>9}"
                         + (f"   dropped: {why}" if why else ""))
    lines.append("")
    share = stats["origin_share"]
    lines.append("origin of all records: " + ", ".join(f"{k} {share[k]:.1%}" for k in ORIGINS)
                 + f"; questions derived by rule: {stats['derived_questions']}")
    wr = stats["writer"]
    if wr["mode"] == "model":
        why = ", ".join(f"{n} {r}" for r, n in wr["filtered"].items() if n) or "none"
        lines.append(f"writer model {wr['model']}: {wr['written']} hypothetical answers written ({wr['cached']} cached), "
                     f"{wr['kept']} kept, {wr['written'] - wr['kept']} filtered ({why}) in {wr['seconds']:.1f}s")
    rv = stats["review"]
    lines.append(f"human review: {rv['accepted']} accepted, {rv['rejected']} rejected, {rv['edited']} edited, "
                 f"{rv['stale']} stale, {rv['unreviewed']} generated samples not reviewed yet (make review)")
    lines.append("persona facts: " + "; ".join(
        f"{name} {f['sourced']} sourced / {f['invented']} invented" + (f" ({f['unchecked_refs']} refs unchecked: transcript absent)" if f["unchecked_refs"] else "")
        for name, f in stats["facts"].items()))
    grp = stats["groups"]
    lines.append("")
    lines.append(f"near-duplicate groups: {grp['total']} ({grp['with_several_samples']} with several samples, "
                 f"largest {grp['largest']}); eval groups: {grp['eval']}")
    return "\n".join(lines)


def _volume_gate(cfg: Config, stats: dict[str, Any]) -> None:
    """The seed aims at ~1,500 quality samples: say where the data stands, warn when a writer could close the gap."""
    total = sum(stats["records"].values())
    target = cfg.generate.target_records
    quote = stats["origin_share"]["quote"]
    print(f"volume: {total} records (target ~{target}); real quotes {quote:.1%} of the records")
    if total < target and cfg.generate.writer == "model":
        log.warning("only %d records, below the target of ~%d: raise generate.hypothetical_per_persona "
                    "(the writer model writes one answer per hypothetical question) or add transcripts", total, target)


def _transcript_stats(t: TranscriptStats, with_labels: bool) -> dict[str, Any]:
    """One transcript's row of stats.json: turn counts per unknown speaker label, or only their totals."""
    row = dataclasses.asdict(t)
    if not with_labels:
        for field in ("unmapped_speakers", "skipped_speakers"):
            row[field] = {"labels": len(row[field]), "turns": sum(row[field].values())}
    return row


def run(cfg: Config) -> int:
    start = time.perf_counter()
    personas = load_personas(cfg)
    pairs, tstats = ingest_all(cfg, personas)
    facts = check_fact_sources(personas, pairs, tstats)
    key = ensure_key(cfg)
    writer = ModelWriter(cfg, key) if cfg.generate.writer == "model" else None
    dataset = build(cfg, personas, pairs, load_decisions(cfg.resolve(cfg.generate.review_file), key), writer)

    out_dir = cfg.resolve(cfg.generate.output_dir)
    train_path, eval_path = out_dir / "train.jsonl.enc", out_dir / "eval.jsonl.enc"
    for name, path in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        if cfg.resolve(path).resolve() not in (train_path.resolve(), eval_path.resolve()):
            log.warning("%s=%s is not where `make data` writes (%s); later stages will not read these files",
                        name, path, out_dir)
    stats = dict(dataset.stats)
    stats["facts"] = facts
    stats["transcripts"] = [_transcript_stats(t, cfg.generate.stats_speaker_labels) for t in tstats]
    stats["seconds"] = round(time.perf_counter() - start, 3)
    write_records(train_path, dataset.train, key)
    write_records(eval_path, dataset.eval, key)
    atomic_write_json(out_dir / STATS_FILE, stats)
    print(_table(stats, tstats))
    print(f"\nwrote {len(dataset.train)} train + {len(dataset.eval)} eval records (encrypted) to {out_dir} "
          f"in {stats['seconds']:.2f}s; stats: {out_dir / STATS_FILE}")
    _volume_gate(cfg, stats)
    missing = [t.file for t in tstats if t.status == "missing"]
    if missing:
        print(f"note: {len(missing)} transcript(s) not found and skipped: {', '.join(missing)}", file=sys.stderr)
    return 0

