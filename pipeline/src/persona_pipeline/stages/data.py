"""`make data`: build the encrypted persona train/eval sets and a stats report.

Steps: load personas -> ingest transcripts (*extracted*) -> *hypothetical* and
*contrastive* samples from persona files -> *transformed* variants of extracted
and hypothetical samples -> near-duplicate groups (transformed variants share
their source's group) -> group-aware split, stratified by persona and kind ->
multi-turn prompts composed inside each split (so they cannot leak) -> write
``train.jsonl.enc``, ``eval.jsonl.enc`` and ``stats.json`` (counts only, no text).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import ensure_key
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.core.prompt_format import format_completion, format_prompt
from persona_pipeline.core.records import KINDS, Record, write_records
from persona_pipeline.core.runs import DATA_STATS
from persona_pipeline.data.dedup import Sample, near_duplicate_groups, split_groups
from persona_pipeline.data.personas import Persona, load_personas
from persona_pipeline.data.rephrase import transform
from persona_pipeline.data.synth import Draft, contrastive, hypothetical
from persona_pipeline.data.transcripts import Pair, TranscriptStats, ingest_all

log = logging.getLogger(__name__)



@dataclass
class Dataset:
    train: list[Record]
    eval: list[Record]
    stats: dict[str, Any]


def _extracted(pairs: list[Pair], personas: dict[str, Persona]) -> list[Draft]:
    return [
        Draft(p.persona, "extracted", p.question, p.answer, p.source, f"x:{p.source}", p.conversation, p.q_turn, p.a_turn)
        for p in pairs
        if p.persona in personas
    ]


def _transformed(drafts: list[Draft], personas: dict[str, Persona], per_sample: int) -> list[Draft]:
    out = []
    for d in drafts:
        for k in range(1, per_sample + 1):
            q, a = transform(d.question, d.answer, personas[d.persona].style.openers, d.source + "|" + d.question, k)
            if (q, a) != (d.question, d.answer):
                out.append(Draft(d.persona, "transformed", q, a, d.source, d.seed_group))
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
    # Natural: the next question in the same transcript conversation follows this answer directly.
    extracted = sorted(
        (i for i, (d, _) in enumerate(singles) if d.kind == "extracted"),
        key=lambda i: (singles[i][0].conversation or "", singles[i][0].a_turn),
    )
    for a, b in zip(extracted, extracted[1:], strict=False):
        da, db = singles[a][0], singles[b][0]
        if len(out) >= target:
            break
        if da.conversation == db.conversation and da.persona == db.persona and db.q_turn == da.a_turn + 1:
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
            "turns": len(history) + 1,
        },
    }


def build(cfg: Config, personas: dict[str, Persona], pairs: list[Pair]) -> Dataset:
    """Everything except reading inputs and writing outputs (pure and deterministic)."""
    g = cfg.generate
    extracted = _extracted(pairs, personas)
    hypo = [d for p in personas.values() for d in hypothetical(p, g.hypothetical_per_persona, g.seed)]
    contra = [d for p in personas.values() for d in contrastive(p, g.contrastive_per_persona, g.seed)]
    trans = _transformed(extracted + hypo, personas, g.transformed_per_sample)
    drafts = _dedupe_exact(extracted + hypo + trans + contra)

    samples = [Sample(d.question, d.answer, d.seed_group) for d in drafts]
    group_idx = near_duplicate_groups(samples, g.near_duplicate_threshold)
    base_kind = {d.seed_group: d.kind for d in drafts if d.kind != "transformed"}
    strata = [f"{d.persona}/{base_kind.get(d.seed_group, d.kind)}" for d in drafts]
    eval_groups = split_groups(group_idx, strata, g.eval_fraction, g.seed)

    rng = random.Random(g.seed)
    budget = cfg.data.max_length // 2  # words; leaves room for the system line and subword splits
    splits: dict[str, list[Record]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    multi: dict[str, int] = {}
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
        "groups": {
            "total": len(sizes),
            "eval": len(eval_groups),
            "largest": max(sizes.values(), default=0),
            "with_several_samples": sum(v > 1 for v in sizes.values()),
        },
        "near_duplicate_threshold": g.near_duplicate_threshold,
        "eval_fraction_target": g.eval_fraction,
    }
    return Dataset(splits["train"], splits["eval"], stats)


def _table(stats: dict[str, Any], transcripts: list[TranscriptStats]) -> str:
    lines = [f"{'persona':<10}{'split':<7}" + "".join(f"{k:>14}" for k in KINDS) + f"{'multi-turn':>12}{'total':>8}"]
    for split in ("train", "eval"):
        for name, row in stats["counts"][split].items():
            lines.append(f"{name:<10}{split:<7}" + "".join(f"{row[k]:>14}" for k in KINDS) + f"{'':>12}{sum(row.values()):>8}")
        lines.append(f"{'all':<10}{split:<7}" + "".join(
            f"{sum(r[k] for r in stats['counts'][split].values()):>14}" for k in KINDS
        ) + f"{stats['multi_turn'][split]:>12}{stats['records'][split]:>8}")
    lines.append("")
    lines.append(f"{'transcript':<44}{'status':<9}{'pairs':>6}  unmapped / skipped speakers")
    for t in transcripts:
        pairs = ", ".join(f"{k} {v}" for k, v in sorted(t.pairs.items())) or "0"
        unm = sum(t.unmapped_speakers.values())
        skp = sum(t.skipped_speakers.values())
        lines.append(f"{t.file[:43]:<44}{t.status:<9}{sum(t.pairs.values()):>6}  {unm} / {skp}   ({pairs})")
    grp = stats["groups"]
    lines.append("")
    lines.append(f"near-duplicate groups: {grp['total']} ({grp['with_several_samples']} with several samples, "
                 f"largest {grp['largest']}); eval groups: {grp['eval']}")
    return "\n".join(lines)


def run(cfg: Config) -> int:
    start = time.perf_counter()
    personas = load_personas(cfg)
    pairs, tstats = ingest_all(cfg, personas)
    dataset = build(cfg, personas, pairs)
    key = ensure_key(cfg)

    out_dir = cfg.resolve(cfg.generate.output_dir)
    train_path, eval_path = out_dir / "train.jsonl.enc", out_dir / "eval.jsonl.enc"
    for name, path in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        if cfg.resolve(path).resolve() not in (train_path.resolve(), eval_path.resolve()):
            log.warning("%s=%s is not where `make data` writes (%s); later stages will not read these files",
                        name, path, out_dir)
    stats = dict(dataset.stats)
    stats["transcripts"] = [dataclasses.asdict(t) for t in tstats]
    stats["seconds"] = round(time.perf_counter() - start, 3)
    write_records(train_path, dataset.train, key)
    write_records(eval_path, dataset.eval, key)
    atomic_write_json(out_dir / DATA_STATS, stats)
    print(_table(stats, tstats))
    print(f"\nwrote {len(dataset.train)} train + {len(dataset.eval)} eval records (encrypted) to {out_dir} "
          f"in {stats['seconds']:.2f}s; stats: {out_dir / DATA_STATS}")
    missing = [t.file for t in tstats if t.status == "missing"]
    if missing:
        print(f"note: {len(missing)} transcript(s) not found and skipped: {', '.join(missing)}", file=sys.stderr)
    return 0

