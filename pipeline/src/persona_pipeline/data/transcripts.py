"""Transcript ingestion: line parsing, turn merging and question/answer pairing (speaker maps: :mod:`.speaker_maps`).

Transcripts are documentary slices in a loose ``Speaker<TAB>text`` layout (see
``../shared/data/README.md``). A label alone does not identify a persona, so
every transcript comes with a *speaker map* (YAML) that splits it into sections
(a section starts at a heading line) and says, per section, how lines are laid
out and which label means which persona::

    sections:
      - format: tab            # tab: "Label<TAB>text"; colon: "Label: text";
                               # header: "Label  MM:SS" line, speech on the next line(s)
        speakers: {Tilda: Tilda, Answer: Anis, Question: human}
        skip: [Lynn]           # known non-personas: skipped quietly (counted)
        unlisted: warn         # other labels: warn (default) or skip; counted either way
      - start: KAZI ANIS AHMED # the heading line where the next section begins
        ...

``human`` marks a questioner: their turns become the ``Human:`` side of a pair.
Pairs are (question turn, persona answer turn): a persona turn that follows a
``human`` turn, or another persona's turn containing a question mark.
Consecutive lines of one speaker are merged; timestamps, headings, editorial
notes, stage directions (``[Applause]``) and fillers (``Mm.``, ``Yes.``) are dropped.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import DataError
from persona_pipeline.data.personas import Persona
from persona_pipeline.data.speaker_maps import HUMAN, SpeakerMap, fold_label, load_speaker_map

log = logging.getLogger(__name__)

# A plain line (no label) continues the current speaker when it starts in lower case
# (a sentence cut by an editorial note) or is a long, punctuated sentence; short
# unpunctuated lines are editors' notes ("In Bangladesh it's all about the certificate").
CONTINUATION_MIN_WORDS = 8
MIN_ANSWER_WORDS = 4
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


# --------------------------------------------------------------------------- parsing


@dataclass
class Turn:
    label: str
    role: str  # persona name, "human", "skip" or "unmapped"
    line: int  # 1-based line where the turn starts
    section: int
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(p for p in self.parts if p)

    @property
    def key(self) -> str:
        """Who spoke: consecutive turns with the same key are one turn."""
        return self.role if self.role not in ("skip", "unmapped") else f"{self.role}:{fold_label(self.label)}"


@dataclass
class TranscriptStats:
    """What ingestion did with one transcript (labels and counts only, never speech)."""

    file: str
    status: str = "ok"  # ok | missing
    lines: int = 0
    turns: int = 0
    usable_turns: int = 0
    pairs: dict[str, int] = field(default_factory=dict)
    unmapped_speakers: dict[str, int] = field(default_factory=dict)
    skipped_speakers: dict[str, int] = field(default_factory=dict)
    unpaired_persona_turns: int = 0
    short_answers: int = 0
    question_turns: int = 0
    timestamps: int = 0
    notes: int = 0
    fillers: int = 0
    trimmed: int = 0


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
    data = path.read_bytes()
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
        turn = Turn(label=label.strip(), role=role, line=lineno, section=sec_idx)
        if text:
            turn.parts.append(text)
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
                    current.parts.append(text)
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
                current.parts.append(clean_text(stripped))
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
            current.parts.append(text)
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
        else:
            merged.append(Turn(t.label, t.role, t.line, t.section, list(t.parts)))
    stats.turns = len(merged)
    stats.usable_turns = sum(t.role not in ("skip", "unmapped") for t in merged)
    return merged


# --------------------------------------------------------------------------- pairing


@dataclass
class Pair:
    """One extracted (question, answer) pair; ``answer`` is a real turn of ``persona``."""

    persona: str
    question: str
    answer: str
    source: str  # "<file>:<line of the answer turn>"
    conversation: str  # "<file>#<section>": pairs in one conversation can chain into multi-turn prompts
    q_turn: int
    a_turn: int


_QUESTION_START = re.compile(
    r"^(do|does|did|would|could|can|will|shall|should|is|are|was|were|what|why|how|when|where|who|which)\b", re.I
)


def is_question(text: str) -> bool:
    """A turn that asks rather than answers: it ends on a question, or is a short question without its mark."""
    sents = _sentences(text)
    if not sents:
        return False
    return sents[-1].rstrip("\"')").endswith("?") or (len(text.split()) < 12 and bool(_QUESTION_START.match(text)))


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def trim_words(text: str, limit: int, keep: str) -> tuple[str, bool]:
    """Keep whole sentences from the start (``keep='head'``) or the end (``'tail'``) within ``limit`` words."""
    if len(text.split()) <= limit:
        return text, False
    sents = _sentences(text)
    if keep == "tail":
        sents = sents[::-1]
    out: list[str] = []
    n = 0
    for s in sents:
        w = len(s.split())
        if n + w > limit:
            break
        out.append(s)
        n += w
    if not out:  # one very long sentence: cut it at the word limit
        words = sents[0].split()
        return (" ".join(words[:limit]) if keep == "head" else " ".join(words[-limit:])), True
    return " ".join(out if keep == "head" else out[::-1]), True


def extract_pairs(
    turns: list[Turn], stats: TranscriptStats, *, max_question_words: int, max_answer_words: int
) -> list[Pair]:
    pairs: list[Pair] = []
    for i, turn in enumerate(turns):
        if turn.role in (HUMAN, "skip", "unmapped"):
            continue
        prev = turns[i - 1] if i > 0 else None
        asks = prev is not None and prev.section == turn.section and prev.key != turn.key and (
            prev.role == HUMAN or (prev.role not in ("skip", "unmapped") and "?" in prev.text)
        )
        if not asks:
            stats.unpaired_persona_turns += 1
            continue
        if len(turn.text.split()) < MIN_ANSWER_WORDS:
            stats.short_answers += 1
            continue
        nxt = turns[i + 1] if i + 1 < len(turns) else None
        if is_question(turn.text) and (nxt is None or nxt.role not in (HUMAN, "skip", "unmapped")):
            stats.question_turns += 1  # a moderator handing the next question to a guest is not an answer
            continue
        question, q_cut = trim_words(prev.text, max_question_words, "tail")
        answer, a_cut = trim_words(turn.text, max_answer_words, "head")
        stats.trimmed += int(q_cut) + int(a_cut)
        pairs.append(
            Pair(turn.role, question, answer, f"{stats.file}:{turn.line}", f"{stats.file}#{turn.section}", i - 1, i)
        )
        stats.pairs[turn.role] = stats.pairs.get(turn.role, 0) + 1
    return pairs


def ingest_transcript(
    path: Path, smap: SpeakerMap, *, max_question_words: int = 80, max_answer_words: int = 160
) -> tuple[list[Pair], TranscriptStats]:
    """Parse one transcript and pair its questions with persona answers.

    Raises DataError for an empty, non-UTF-8 or unusable transcript (no turn by a
    mapped speaker); warns about (and counts) labels the speaker map does not know.
    """
    turns, stats = parse_transcript(path, smap)
    if stats.usable_turns == 0:
        seen = Counter({**stats.unmapped_speakers, **stats.skipped_speakers})
        found = ", ".join(f"{k} ({v})" for k, v in seen.most_common(5)) or "none"
        raise DataError(
            f"{path}: no usable turns (no speech by a speaker mapped in {smap.path.name}; labels found: {found})",
            hint="check the layout (Speaker<TAB>text, or the section's format) and the speaker map",
        )
    for label, n in sorted(stats.unmapped_speakers.items()):
        log.warning("%s: speaker %r is not in %s; skipped %d turn(s)", path.name, label, smap.path.name, n)
    pairs = extract_pairs(turns, stats, max_question_words=max_question_words, max_answer_words=max_answer_words)
    return pairs, stats


def ingest_all(cfg: Config, personas: dict[str, Persona]) -> tuple[list[Pair], list[TranscriptStats]]:
    """Every transcript in ``generate.transcripts``; a missing transcript file is a warning, not an error."""
    pairs: list[Pair] = []
    all_stats: list[TranscriptStats] = []
    for src in cfg.generate.transcripts:
        path = cfg.resolve(src.path)
        smap = load_speaker_map(cfg.resolve(src.speaker_map), personas)
        if not path.is_file():
            log.warning("transcript not found, skipped: %s", path)
            all_stats.append(TranscriptStats(file=path.name, status="missing"))
            continue
        got, stats = ingest_transcript(
            path, smap, max_question_words=cfg.generate.max_question_words, max_answer_words=cfg.generate.max_answer_words
        )
        pairs.extend(got)
        all_stats.append(stats)
    return pairs, all_stats
