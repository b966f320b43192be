"""Transcript parsing: lines -> speaker turns (the layout and who is who come from the speaker map).

Timestamps, headings, editorial notes, stage directions (``[Applause]``) and fillers
(``Mm.``, ``Yes.``) are dropped; consecutive lines of one speaker are merged. The
format is described in :mod:`persona_pipeline.data.transcripts`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from persona_pipeline.core.errors import DataError
from persona_pipeline.data.speaker_maps import SpeakerMap, fold_label

log = logging.getLogger(__name__)

# A plain line (no label) continues the current speaker when it starts in lower case
# (a sentence cut by an editorial note) or is a long, punctuated sentence; short
# unpunctuated lines are editors' notes ("In Bangladesh it's all about the certificate").
CONTINUATION_MIN_WORDS = 8
FILLER_WORDS = frozenset(
    "mm mmm mhm hmm hm uh um er erm ah aha oh yes yeah yep yup ok okay right sure huh no exactly "
    "absolutely indeed perfect great wow".split()
)

_TIME = r"\d{1,2}:\d{2}(?::\d{1,2})?"
_TIMESTAMP_LINE = re.compile(rf"^\(?\s*(?:(?:start|stop)\s*:?\s*)?{_TIME}|^TC\s*:", re.IGNORECASE)
_TIME_ONLY = re.compile(rf"^\(?{_TIME}\)?$")
_HEADER_LINE = re.compile(rf"^(?P<label>\S.*?)\s+(?P<time>{_TIME})\s*$")
_COLON_LINE = re.compile(r"^(?P<label>[A-Za-z][^:\t]{0,40}?)\s*:\s*(?P<text>.*)$")
_BLOCK_MARKER = re.compile(r"^(text|subtitles)\b.*:\s*$", re.IGNORECASE)
_BRACKETED = re.compile(r"^[\[(].*[\])]$")
_INLINE_NOISE = re.compile(rf"\[[^\]]*\]|\(\s*(?:(?:start|stop)\s*:?\s*)?{_TIME}\s*\)", re.IGNORECASE)
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-", "\u00a0": " "})


@dataclass
class Turn:
    label: str
    role: str  # persona name, "human", "skip" or "unmapped"
    line: int  # 1-based line where the turn starts
    section: int
    parts: list[str] = field(default_factory=list)
    end: int = 0  # 1-based line of the turn's last text (a fact's source must fall in line..end)

    def add(self, text: str, lineno: int) -> None:
        self.parts.append(text)
        self.end = max(self.end, lineno)

    @property
    def text(self) -> str:
        return " ".join(p for p in self.parts if p)

    @property
    def key(self) -> str:
        """Who spoke: consecutive turns with the same key are one turn."""
        return self.role if self.role not in ("skip", "unmapped") else f"{self.role}:{fold_label(self.label)}"


@dataclass
class TranscriptStats:
    """What ingestion did with one transcript (labels and counts only, never speech).

    Every persona turn is accounted for: ``persona_turns`` = ``used_turns`` + the
    turns in ``dropped`` (per persona and reason), and ``samples`` >= ``used_turns``
    because long turns are split into several samples.
    """

    file: str
    status: str = "ok"  # ok | missing
    lines: int = 0
    turns: int = 0
    usable_turns: int = 0
    persona_turns: dict[str, int] = field(default_factory=dict)
    used_turns: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # persona -> reason -> turns
    samples: dict[str, int] = field(default_factory=dict)
    derived_questions: int = 0  # samples whose question was derived (no question preceded the piece)
    split_turns: int = 0  # turns longer than max_answer_words, split at sentence boundaries
    unmapped_speakers: dict[str, int] = field(default_factory=dict)
    skipped_speakers: dict[str, int] = field(default_factory=dict)
    timestamps: int = 0
    notes: int = 0
    fillers: int = 0
    trimmed_questions: int = 0


def clean_text(text: str) -> str:
    """Normalise quotes/dashes, drop ``[Applause]``/``[?]`` marks and inline timestamps, collapse spaces."""
    text = _INLINE_NOISE.sub(" ", text.translate(_QUOTES)).replace("\u2026", "...")
    return " ".join(text.split())


def is_filler(text: str) -> bool:
    words = re.findall(r"[a-z']+", text.lower())
    return len(words) <= 3 and all(w in FILLER_WORDS for w in words)


def _is_continuation(text: str) -> bool:
    if text[:1].islower() or text[:1] in ".,;":
        return True
    return len(text.split()) >= CONTINUATION_MIN_WORDS and text.rstrip("\"')").endswith((".", "?", "!"))


def _decode(path: Path) -> list[str]:
    """The transcript's lines: UTF-8, with or without a BOM, any line endings (LF, CRLF, CR)."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}:1: UTF-16 text (byte-order mark 0x{data[:2].hex()})", hint="re-save the transcript as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})", hint="re-save the transcript as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: the transcript is empty", hint="remove it from generate.transcripts or fill it")
    return text.lstrip("\ufeff").splitlines()


def parse_transcript(path: Path, smap: SpeakerMap) -> tuple[list[Turn], TranscriptStats]:
    """Turn a transcript into merged speaker turns (in order), with the counts of what was dropped."""
    lines = _decode(path)
    stats = TranscriptStats(file=path.name, lines=len(lines))
    turns: list[Turn] = []
    sec_idx = 0
    section = smap.sections[0]
    current: Turn | None = None
    next_start = {i: s.start.casefold() for i, s in enumerate(smap.sections) if s.start}

    def open_turn(label: str, text: str, lineno: int) -> Turn:
        role = section.role(label)
        if role is None:
            role = "unmapped" if section.unlisted == "warn" else "skip"
        turn = Turn(label=label.strip(), role=role, line=lineno, section=sec_idx, end=lineno)
        if text:
            turn.add(text, lineno)
        turns.append(turn)
        return turn

    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped:
            if section.format == "header":
                current = None  # header-format speech ends at a blank line
            continue
        # A heading that opens the next section.
        if sec_idx + 1 in next_start and stripped.casefold() == next_start[sec_idx + 1]:
            sec_idx += 1
            section = smap.sections[sec_idx]
            current = None
            stats.notes += 1
            continue
        fmt = section.format
        if fmt == "tab" and "\t" in line:
            label, text = line.split("\t", 1)
            label, text = label.strip(), clean_text(text)
            if not label or _TIME_ONLY.match(label):
                if label:
                    stats.timestamps += 1
                if text and current is not None:
                    current.add(text, lineno)
                elif text:
                    stats.notes += 1
                continue
            current = open_turn(label, text, lineno)
            continue
        if _TIMESTAMP_LINE.match(stripped):
            stats.timestamps += 1
            continue
        if fmt == "header":
            m = _HEADER_LINE.match(stripped)
            if m or section.knows(stripped):
                current = open_turn(m["label"] if m else stripped, "", lineno)
            elif _BLOCK_MARKER.match(stripped):
                current = None  # on-screen text or subtitles: nobody's speech
                stats.notes += 1
            elif current is not None:
                current.add(clean_text(stripped), lineno)
            else:
                stats.notes += 1
            continue
        if fmt == "colon":
            m = _COLON_LINE.match(stripped)
            if m and not _TIMESTAMP_LINE.match(m["text"] or "x"):
                current = open_turn(m["label"], clean_text(m["text"]), lineno)
                continue
        if section.knows(stripped):  # a label alone on its line; the speech follows
            current = open_turn(stripped, "", lineno)
            continue
        text = clean_text(stripped)
        if current is not None and text and not _BRACKETED.match(stripped) and _is_continuation(text):
            current.add(text, lineno)
        else:
            stats.notes += 1

    return _merge(turns, stats), stats


def _merge(turns: list[Turn], stats: TranscriptStats) -> list[Turn]:
    """Drop empty and filler turns, then merge consecutive turns of the same speaker."""
    merged: list[Turn] = []
    for t in turns:
        if not t.text:
            continue
        if is_filler(t.text):
            stats.fillers += 1
            continue
        if t.role == "unmapped":
            stats.unmapped_speakers[t.label] = stats.unmapped_speakers.get(t.label, 0) + 1
        elif t.role == "skip":
            stats.skipped_speakers[t.label] = stats.skipped_speakers.get(t.label, 0) + 1
        if merged and merged[-1].key == t.key and merged[-1].section == t.section:
            merged[-1].parts.extend(t.parts)
            merged[-1].end = max(merged[-1].end, t.end)
        else:
            merged.append(Turn(t.label, t.role, t.line, t.section, list(t.parts), t.end))
    stats.turns = len(merged)
    stats.usable_turns = sum(t.role not in ("skip", "unmapped") for t in merged)
    return merged
