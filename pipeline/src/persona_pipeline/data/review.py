"""Human review decisions: stored encrypted, keyed by sample id and content hash, applied by `make data`.

``make review`` records, per generated sample, *accept*, *reject* or *edit* (with the
edited answer) in ``generate.review_file``: JSON encrypted with the data key
(AES-256-GCM, like the datasets), so neither the samples nor the edits reach the disk
in plaintext. A decision holds the sample's content hash: when generation later
produces different text under the same id, the decision is *stale* and not applied
(the sample is reviewed again).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from persona_pipeline.core.crypto import decrypt_bytes, encrypt_bytes
from persona_pipeline.core.errors import DataError
from persona_pipeline.core.fsutil import atomic_write_bytes
from persona_pipeline.data.synth import Draft

DECISIONS = ("accept", "reject", "edit")
VERSION = 1


def sample_id(d: Draft) -> str:
    """Stable across `make data` runs: who, which kind, which seed, which question."""
    return hashlib.sha256(f"{d.persona}|{d.kind}|{d.seed_group}|{d.question}".encode()).hexdigest()[:12]


def content_hash(d: Draft) -> str:
    return hashlib.sha256(f"{d.question}\n{d.answer}".encode()).hexdigest()[:16]


def needs_review(d: Draft) -> bool:
    """Generated text: everything except a real quote answering the question really asked of it."""
    return not (d.kind == "extracted" and not d.derived_question)


@dataclass
class Decision:
    hash: str
    decision: str  # accept | reject | edit
    answer: str | None = None  # the edited answer (edit only)
    at: str = ""


def load_decisions(path: Path, key: bytes) -> dict[str, Decision]:
    """Decisions by sample id; an absent file is an empty review."""
    if not path.is_file():
        return {}
    data = json.loads(decrypt_bytes(path.read_bytes(), key, str(path)))
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("decisions"), dict):
        raise DataError(f"{path}: not a review file of version {VERSION}", hint="move it away and run make review again")
    out = {}
    for sid, raw in data["decisions"].items():
        if not isinstance(raw, dict) or raw.get("decision") not in DECISIONS or not isinstance(raw.get("hash"), str):
            raise DataError(f"{path}: decision {sid!r} is malformed", hint="move the file away and run make review again")
        out[sid] = Decision(raw["hash"], raw["decision"], raw.get("answer"), raw.get("at", ""))
    return out


def save_decisions(path: Path, decisions: dict[str, Decision], key: bytes) -> None:
    body = {"version": VERSION, "decisions": {sid: vars(d) for sid, d in sorted(decisions.items())}}
    atomic_write_bytes(path, encrypt_bytes(json.dumps(body, ensure_ascii=False).encode(), key), mode=0o600)


def decide(d: Draft, decision: str, answer: str | None = None) -> Decision:
    if decision not in DECISIONS:
        raise ValueError(decision)
    return Decision(content_hash(d), decision, answer if decision == "edit" else None,
                    datetime.now(timezone.utc).isoformat(timespec="seconds"))


def apply_decisions(drafts: list[Draft], decisions: dict[str, Decision]) -> tuple[list[Draft], dict[str, int]]:
    """Drop rejected drafts, replace edited answers; count what happened (stale = text changed since review)."""
    counts = {"accepted": 0, "rejected": 0, "edited": 0, "stale": 0, "unreviewed": 0}
    out = []
    for d in drafts:
        dec = decisions.get(sample_id(d))
        if dec is None or dec.hash != content_hash(d):
            counts["stale" if dec else "unreviewed"] += int(needs_review(d))
            out.append(d)
        elif dec.decision == "reject":
            counts["rejected"] += 1
        elif dec.decision == "edit" and dec.answer:
            counts["edited"] += 1
            out.append(replace(d, answer=dec.answer, reviewed="edit"))
        else:
            counts["accepted"] += 1
            out.append(replace(d, reviewed="accept"))
    return out, counts
