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
import sys
import time
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import ensure_key
from persona_pipeline.core.fsutil import atomic_write_many, json_bytes
from persona_pipeline.core.records import KINDS, encode_records
from persona_pipeline.core.runs import DATA_STATS
from persona_pipeline.data.dataset import build
from persona_pipeline.data.personas import load_personas
from persona_pipeline.data.review import load_decisions
from persona_pipeline.data.synth import ORIGINS
from persona_pipeline.data.transcripts import TranscriptStats, check_fact_sources, ingest_all
from persona_pipeline.data.writer import ModelWriter

log = logging.getLogger(__name__)


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
        f"{name} {f['sourced']} sourced / {f['invented']} invented"
        + (f" ({f['unchecked_refs']} refs unchecked: transcript absent)" if f["unchecked_refs"] else "")
        for name, f in stats["facts"].items()))
    grp = stats["groups"]
    lines.append("")
    lines.append(f"near-duplicate groups: {grp['total']} ({grp['with_several_samples']} with several samples, "
                 f"largest {grp['largest']}); eval groups: {grp['eval']}")
    return "\n".join(lines)


def _transcript_stats(t: TranscriptStats, with_labels: bool) -> dict[str, Any]:
    """One transcript's row of stats.json: turn counts per unknown speaker label, or only their totals."""
    row = dataclasses.asdict(t)
    if not with_labels:
        for field in ("unmapped_speakers", "skipped_speakers"):
            row[field] = {"labels": len(row[field]), "turns": sum(row[field].values())}
    return row


def _volume_gate(cfg: Config, stats: dict[str, Any]) -> None:
    """The seed aims at ~1,500 quality samples: say where the data stands, warn when a writer could close the gap."""
    total = sum(stats["records"].values())
    target = cfg.generate.target_records
    quote = stats["origin_share"]["quote"]
    print(f"volume: {total} records (target ~{target}); real quotes {quote:.1%} of the records")
    if total < target and cfg.generate.writer == "model":
        log.warning("only %d records, below the target of ~%d: raise generate.hypothetical_per_persona "
                    "(the writer model writes one answer per hypothetical question) or add transcripts", total, target)


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
    # One set: the three files are replaced together or not at all (a full disk or a kill mid-write
    # leaves the previous set, never a new train split beside an old eval split).
    atomic_write_many({
        train_path: encode_records(train_path, dataset.train, key),
        eval_path: encode_records(eval_path, dataset.eval, key),
        out_dir / DATA_STATS: json_bytes(stats),
    })
    print(_table(stats, tstats))
    print(f"\nwrote {len(dataset.train)} train + {len(dataset.eval)} eval records (encrypted) to {out_dir} "
          f"in {stats['seconds']:.2f}s; stats: {out_dir / DATA_STATS}")
    _volume_gate(cfg, stats)
    missing = [t.file for t in tstats if t.status == "missing"]
    if missing:
        print(f"note: {len(missing)} transcript(s) not found and skipped: {', '.join(missing)}", file=sys.stderr)
    return 0

