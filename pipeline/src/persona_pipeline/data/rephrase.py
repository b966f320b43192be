"""The *transformed* kind: a documented, deterministic rephrasing of a (question, answer) pair.

Variant ``k`` of a pair is a pure function of its text and ``k`` (choices come
from SHA-256 of ``"<source>|<k>"``, never from Python's salted ``hash``):

Question
  1. contraction style flipped (``do not`` <-> ``don't``; contracting only where a word follows);
  2. the ``SYNONYMS`` table, applied to whole words (capitalisation kept);
  3. one of the short ``QUESTION_FRAMES`` ("Tell me, ...", "... Honestly?"). Frames stay
     short on purpose: a long shared frame would make unrelated short questions
     near-duplicates of each other and merge their groups.

Answer
  1. the opening discourse marker ("Well,", "Yes,", "You know,", or one of the
     persona's ``style.openers``) is replaced by another of the persona's openers
     that reads correctly before the rest, or one is prepended when there is none;
  2. contraction style flipped and the synonym table applied to the rest.

The content (facts, claims, order of sentences) is unchanged, so a transformed
sample always shares its source's near-duplicate group.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

# (expanded, contracted): expanding is always safe; contracting needs a following word
# ("I know what it is." must not become "what it's.").
CONTRACTIONS: list[tuple[str, str]] = [
    ("I am", "I'm"), ("it is", "it's"), ("that is", "that's"), ("there is", "there's"), ("what is", "what's"),
    ("do not", "don't"), ("does not", "doesn't"), ("did not", "didn't"), ("is not", "isn't"),
    ("are not", "aren't"), ("was not", "wasn't"), ("cannot", "can't"), ("will not", "won't"),
    ("we are", "we're"), ("they are", "they're"), ("you are", "you're"), ("I would", "I'd"),
    ("I will", "I'll"), ("let us", "let's"), ("would not", "wouldn't"), ("could not", "couldn't"),
]

# Whole-word swaps that keep meaning in this material; each word is rewritten at most once.
SYNONYMS: list[tuple[str, str]] = [
    ("really", "truly"), ("perhaps", "maybe"), ("maybe", "perhaps"), ("wonderful", "marvellous"),
    ("beautiful", "lovely"), ("difficult", "hard"), ("huge", "enormous"), ("amazing", "astonishing"),
    ("I think", "I believe"), ("I remember", "I recall"), ("of course", "naturally"),
    ("a lot of", "plenty of"), ("little by little", "bit by bit"), ("everyone", "everybody"),
    ("actually", "in fact"), ("simply", "just"), ("began", "started"),
    ("begin", "start"), ("important", "essential"), ("often", "frequently"), ("big", "large"),
    ("quickly", "fast"), ("kids", "children"),
]

# "{lc}": the question with its first letter in lower case (only used when that reads correctly).
QUESTION_FRAMES: list[str] = ["{q}", "Tell me, {lc}", "So, {lc}", "{q} Honestly?", "Out of curiosity, {lc}", "And {lc}"]

GENERIC_OPENERS = ("Well,", "Yes,", "Yeah,", "So,", "You know,", "Oh,", "Look,", "Honestly,", "Absolutely,")

# Sentence-initial words that read lower case after "Well, ..."; any other first word (a name,
# "Drumduan", "Kanchenjunga") only gets a full-sentence opener such as "Oh, that's a lovely question."
_LOWERABLE = frozenset(
    "a an and as at but by every for from in it its many most much my no nobody not of on one our since so "
    "some that the their there these they this those to unlike we what when where which while who why with "
    "yes you your instead here after before because if once then today now how can could do does did is are "
    "was were would will should have has had".split()
    # common nouns and verbs that open sentences in the persona files and transcripts
    + "play lessons music making healing tall green farmers jobs organic sessions several teenagers "
    "translation moderating women children students parents people teachers everything nothing "
    "everyone somebody someone".split()
)

_FLAGS = re.IGNORECASE
_EXPAND = [(re.compile(rf"\b{re.escape(short)}\b", _FLAGS), full) for full, short in CONTRACTIONS]
_CONTRACT = [(re.compile(rf"\b{re.escape(full)}\b(?=\s+[A-Za-z])", _FLAGS), short) for full, short in CONTRACTIONS]
_SYNONYMS = [(re.compile(rf"\b{re.escape(src)}\b", _FLAGS), dst) for src, dst in SYNONYMS]


def _choose(seed: str, n: int, salt: str) -> int:
    digest = hashlib.sha256(f"{seed}|{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % n


def _match_case(src: str, rep: str) -> str:
    if rep.startswith(("I ", "I'")):  # "I" stays upper case wherever it is
        return rep
    return rep[:1].upper() + rep[1:] if src[:1].isupper() else rep


def flip_contractions(text: str) -> str:
    """Expand every contraction if the text uses any, otherwise contract where a word follows."""
    expand = any(pat.search(text) for pat, _ in _EXPAND)
    for pat, rep in _EXPAND if expand else _CONTRACT:
        text = pat.sub(lambda m, rep=rep: _match_case(m.group(0), rep), text)
    return text


def apply_synonyms(text: str) -> str:
    done: list[tuple[int, int, str]] = []
    for pat, dst in _SYNONYMS:
        for m in pat.finditer(text):
            if not any(a < m.end() and m.start() < b for a, b, _ in done):
                done.append((m.start(), m.end(), _match_case(m.group(0), dst)))
    for a, b, rep in sorted(done, reverse=True):
        text = text[:a] + rep + text[b:]
    return text


def _lowerable(text: str) -> bool:
    first = text.split(" ", 1)[0]
    return first == "I" or first.startswith("I'") or first.lower().strip(".,;:!?") in _LOWERABLE


def openers_for(text: str, openers: Sequence[str]) -> list[str]:
    """The openers that read correctly in front of ``text``."""
    return [o for o in openers if o and (not o.endswith(",") or _lowerable(text))]


def attach_opener(opener: str, text: str) -> str:
    """``"Well," + "It is..."`` -> ``"Well, it is..."``; a full-sentence opener is simply prepended."""
    first = text.split(" ", 1)[0]
    if not opener.endswith(","):
        text = text[:1].upper() + text[1:]
    elif not (first == "I" or first.startswith("I'")):
        text = text[:1].lower() + text[1:]
    return f"{opener} {text}"


def split_opener(answer: str, openers: Sequence[str]) -> tuple[str, str]:
    """(opening marker, rest); the marker is one of ``openers`` or ``GENERIC_OPENERS``, or ""."""
    for o in sorted({*openers, *GENERIC_OPENERS}, key=len, reverse=True):
        bare = o.rstrip(",")  # transcripts often drop the comma: "Well that is..."
        if answer.lower().startswith(bare.lower()) and (len(answer) == len(bare) or not answer[len(bare)].isalnum()):
            return o, answer[len(bare):].lstrip(" ,")
    return "", answer


def rephrase_question(question: str, seed: str) -> str:
    q = apply_synonyms(flip_contractions(question))
    frames = [f for f in QUESTION_FRAMES if "{lc}" not in f or _lowerable(q)]
    if q == question:  # no word changed: the frame must make the difference
        frames = [f for f in frames if f != "{q}"]
    frame = frames[_choose(seed, len(frames), "frame")]
    return frame.format(q=q, lc=q if q.startswith(("I ", "I'")) else q[:1].lower() + q[1:])


def rephrase_answer(answer: str, openers: Sequence[str], seed: str) -> str:
    current, rest = split_opener(answer, openers)
    if not rest:
        return apply_synonyms(flip_contractions(answer))
    rest = apply_synonyms(flip_contractions(rest))
    options = [o for o in openers_for(rest, openers) if o.lower() != current.lower()]
    if not options:
        return attach_opener(current, rest) if current else rest
    return attach_opener(options[_choose(seed, len(options), "opener")], rest)


def transform(question: str, answer: str, openers: Sequence[str], source: str, variant: int) -> tuple[str, str]:
    """Variant ``variant`` (1, 2, ...) of a pair; deterministic in its inputs."""
    seed = f"{source}|{variant}"
    return rephrase_question(question, seed), rephrase_answer(answer, openers, seed)
