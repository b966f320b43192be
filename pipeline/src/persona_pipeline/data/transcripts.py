"""Transcript ingestion: question/answer pairs from a transcript's turns (parsing: :mod:`.turns`; speaker maps: :mod:`.speaker_maps`).

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
Every persona turn becomes a sample (see :func:`extract_pairs`): one that follows a
``human`` turn, or another persona's turn containing a question mark, is paired with
that question; one that no question preceded (a monologue, a reply to another persona,
a turn after an interruption) gets a question derived from its content
(:func:`derive_question`); a turn longer than ``generate.max_answer_words`` is split into
pieces at sentence boundaries (:func:`split_answer`), each a sample, in conversation order.
Consecutive lines of one speaker are merged; timestamps, headings, editorial
notes, stage directions (``[Applause]``) and fillers (``Mm.``, ``Yes.``) are dropped.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import DataError
from persona_pipeline.data.personas import Persona
from persona_pipeline.data.speaker_maps import HUMAN, SpeakerMap, load_speaker_map
from persona_pipeline.data.turns import TranscriptStats, Turn, parse_transcript

log = logging.getLogger(__name__)

MIN_ANSWER_WORDS = 4
# --------------------------------------------------------------------------- samples


@dataclass
class Pair:
    """One extracted sample: ``answer`` is real speech of ``persona`` (a whole turn or a piece of one)."""

    persona: str
    question: str
    answer: str
    source: str  # "<file>:<line where the turn starts>" (every piece of a turn shares it)
    conversation: str  # "<file>#<section>": samples in one conversation chain into multi-turn prompts
    order: int  # position in the conversation (real order; the pieces of a turn are consecutive)
    derived: bool  # True: the question comes from derive_question, not from the transcript
    piece: int = 0  # 0-based piece of a turn split at sentence boundaries
    end: int = 0  # last line of the turn (a persona fact's source may point anywhere in source..end)


_QUESTION_START = re.compile(
    r"^(do|does|did|would|could|can|will|shall|should|is|are|was|were|what|why|how|when|where|who|which)\b", re.I
)
DROP_SHORT = f"shorter than {MIN_ANSWER_WORDS} words"
DROP_HANDOVER = "asks the next speaker"


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


def split_answer(text: str, limit: int) -> list[str]:
    """Split a long turn into pieces of whole sentences, each at most ``limit`` words, of similar size.

    The number of pieces is the fewest that fit (ceil(words / limit)); a piece closes once it
    reaches the even share, so a 170-word turn with limit 160 gives two ~85-word pieces, not
    160 + 10. A single sentence longer than ``limit`` is cut at word boundaries.
    """
    words = len(text.split())
    if words <= limit:
        return [text]
    sents: list[str] = []
    for s in _sentences(text):
        ws = s.split()
        sents.extend(" ".join(ws[k : k + limit]) for k in range(0, len(ws), limit))
    target = words / math.ceil(words / limit)
    pieces: list[list[str]] = [[]]
    n = 0
    for s in sents:
        w = len(s.split())
        if pieces[-1] and (n + w > limit or n >= target):
            pieces.append([])
            n = 0
        pieces[-1].append(s)
        n += w
    out = [" ".join(p) for p in pieces]
    if len(out) > 1 and len(out[-1].split()) < MIN_ANSWER_WORDS:  # a stray tail joins its neighbour
        out[-2:] = [out[-2] + " " + out[-1]]
    return out


# Common English words that say nothing about what a turn is about (for derive_question).
_STOPWORDS = frozenset("""
a about above after again against all almost also although always am among an and another any anyone anything are
around as at away back be because been before being below between both but by came can cannot come could did do
does doing done down during each either else enough even ever every everyone everything few first for from further
get gets getting give go goes going gone good got great had has have having he her here hers herself him himself his
how however i if in into is it its itself just keep kind know known last least less let like little lot lots made
make makes making many may maybe me mean means might more most much must my myself need never new next no nor not
nothing now of off often oh okay on once one only or other others our ours ourselves out over own part people
perhaps place put quite rather really right said same say saying says see seem seems she should since so some
someone something sometimes sort still such sure take than that the their theirs them themselves then there these
they thing things think this those though thought through time times to together too towards two under until up upon
us use used very want wanted was way ways we well went were what whatever when where whether which while who whole
whom whose why will with within without would yeah yes yet you your yours yourself actually anyway basically called
certainly course definitely different especially exactly fact feel felt find found gave given going happen happened
important interesting left long look looking looked mind moment obviously probably quite simply tell told try trying
understand wonderful year years day days able thank thanks please
""".split())
# Frames for a derived question; the two content words make questions of different turns differ
# (identical questions would make unrelated samples near-duplicates of each other).
DERIVED_FRAMES = (
    "What do you think about {a} and {b}?",
    "Can you tell me about {a} and {b}?",
    "How do you see {a} and {b}?",
    "What comes to mind when you think of {a} and {b}?",
    "Talk to me about {a} and {b}.",
    "What would you say about {a} and {b}?",
)
SINGLE_FRAMES = ("What do you think about {a}?", "Can you tell me about {a}?", "What would you say about {a}?")


_NOUN_CUES = frozenset("the a an this that these those my our your their his her its of about for with".split())


def key_words(text: str, n: int = 2) -> list[str]:
    """The ``n`` words that best name what ``text`` is about (a cheap stand-in for a noun tagger).

    Candidates are content words (4+ letters, not in ``_STOPWORDS``, not ``-ly``): names
    (capitalised in mid-sentence, such as ``Dhaka``) and words right after a determiner,
    possessive or ``of/about/for/with`` come first; then any other content word. Within
    each class, more frequent first, ties by first occurrence. Names keep their capital.
    """
    tokens = list(re.finditer(r"[A-Za-z][A-Za-z'-]*", text))
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    shown: dict[str, str] = {}
    cued: set[str] = set()
    for pos, m in enumerate(tokens):
        word = m.group().strip("'-").removesuffix("'s")
        low = word.lower()
        if low.endswith("s") and low[:-1] in counts:  # "questions" after "question": one word
            low = low[:-1]
        if len(low) < 4 or low in _STOPWORDS or low.endswith("ly"):
            continue
        counts[low] += 1
        first.setdefault(low, pos)
        mid_sentence = m.start() > 0 and not re.search(r"[.!?]\s*[\"']?\s*$", text[: m.start()])
        if word[:1].isupper() and mid_sentence:
            shown[low] = word
            cued.add(low)
        else:
            shown.setdefault(low, low)
        if pos > 0 and tokens[pos - 1].group().lower() in _NOUN_CUES:
            cued.add(low)
    ranked = sorted(counts, key=lambda w: (w not in cued, -counts[w], first[w]))
    return [shown[w] for w in ranked[:n]]


def derive_question(answer: str, source: str) -> str:
    """A question for a persona turn (or piece) that no question preceded. The documented rule:

    take the two most frequent content words of the answer (``key_words``) and put them in one
    of ``DERIVED_FRAMES``, chosen by a stable hash of the sample's source and piece, so the
    question is about what the speaker actually talks about and the data stays deterministic.
    """
    words = key_words(answer)
    frames = DERIVED_FRAMES if len(words) == 2 else SINGLE_FRAMES
    frame = frames[zlib.crc32(source.encode()) % len(frames)]
    if not words:
        return "What would you like to say?"
    return frame.format(a=words[0], b=words[-1])


def extract_pairs(
    turns: list[Turn], stats: TranscriptStats, *, max_question_words: int, max_answer_words: int
) -> list[Pair]:
    """Every persona turn becomes one or more samples, in the order of the conversation.

    The first piece of a turn that follows a question (a ``human`` turn, or another persona's
    turn with a question mark) is paired with that question; every other piece gets a derived
    question (:func:`derive_question`). A turn is dropped only when it is shorter than
    ``MIN_ANSWER_WORDS`` or is itself a question handed to the next (persona) speaker; drops are
    counted per persona and reason in ``stats.dropped``.
    """
    pairs: list[Pair] = []
    order: dict[int, int] = defaultdict(int)
    for i, turn in enumerate(turns):
        if turn.role in (HUMAN, "skip", "unmapped"):
            continue
        who = turn.role
        stats.persona_turns[who] = stats.persona_turns.get(who, 0) + 1
        nxt = turns[i + 1] if i + 1 < len(turns) else None
        reason = None
        if len(turn.text.split()) < MIN_ANSWER_WORDS:
            reason = DROP_SHORT
        elif is_question(turn.text) and nxt is not None and nxt.section == turn.section and nxt.role not in (HUMAN, "skip", "unmapped"):
            reason = DROP_HANDOVER  # a moderator handing the next question to a guest is not an answer
        if reason:
            stats.dropped.setdefault(who, {})
            stats.dropped[who][reason] = stats.dropped[who].get(reason, 0) + 1
            continue
        prev = turns[i - 1] if i > 0 else None
        asks = prev is not None and prev.section == turn.section and prev.key != turn.key and (
            prev.role == HUMAN or (prev.role not in ("skip", "unmapped") and "?" in prev.text)
        )
        pieces = split_answer(turn.text, max_answer_words)
        stats.split_turns += int(len(pieces) > 1)
        source = f"{stats.file}:{turn.line}"
        for k, piece in enumerate(pieces):
            if k == 0 and asks and prev is not None:
                question, cut = trim_words(prev.text, max_question_words, "tail")
                stats.trimmed_questions += int(cut)
            else:
                question = derive_question(piece, f"{source}#{k}")
                stats.derived_questions += 1
            conv = f"{stats.file}#{turn.section}"
            pairs.append(Pair(who, question, piece, source, conv, order[turn.section], not (k == 0 and asks), k, turn.end))
            order[turn.section] += 1
        stats.used_turns[who] = stats.used_turns.get(who, 0) + 1
        stats.samples[who] = stats.samples.get(who, 0) + len(pieces)
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


def check_fact_sources(personas: dict[str, Persona], pairs: list[Pair], transcripts: list[TranscriptStats]) -> dict[str, dict[str, int]]:
    """Check every ``facts[].source`` against the ingested turns; count sourced / invented facts.

    A ref ``file:line`` must fall inside a used turn of that persona in that transcript
    (a DataError names the persona file and fact otherwise). Refs to a transcript that is
    absent on this machine or not in ``generate.transcripts`` are counted as ``unchecked_refs``.
    """
    spans: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for p in pairs:
        file, line = p.source.rsplit(":", 1)
        spans[(p.persona, file)].append((int(line), p.end))
    status = {t.file: t.status for t in transcripts}
    out: dict[str, dict[str, int]] = {}
    for persona in personas.values():
        counts = {"facts": len(persona.facts), "sourced": 0, "invented": 0, "unchecked_refs": 0}
        for i, fact in enumerate(persona.facts):
            counts["sourced" if fact.source else "invented"] += 1
            for ref in fact.source:
                file, line = ref.rsplit(":", 1)
                if status.get(file, "missing") == "missing":  # absent here, or not in this config
                    counts["unchecked_refs"] += 1
                    continue
                if not any(a <= int(line) <= b for a, b in spans.get((persona.name, file), [])):
                    raise DataError(
                        f"{persona.path}: facts[{i}].source: {ref} is not inside a turn of {persona.name}",
                        hint=f"point at a line of one of {persona.name}'s turns in {file} (see its speaker map), "
                             "or mark the fact `invented: true`",
                    )
        out[persona.name] = counts
    return out
