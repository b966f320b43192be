"""The prompt format shared by data generation, validation, evaluation and the demo.

One record::

    prompt:     "You are Tilda, <system>\\n\\nHuman: <question>\\n\\nTilda:"
    completion: " <answer>"

Multi-turn prompts hold earlier turns before the last question::

    "You are Tilda, <system>\\n\\nHuman: q1\\n\\nTilda: a1\\n\\nHuman: q2\\n\\nTilda:"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

HUMAN = "Human"
SEP = "\n\n"
_HEADER_RE = re.compile(r"^You are (?P<name>[^,\n]+), (?P<system>[^\n]+)$")


def system_line(name: str, system: str) -> str:
    system = system.strip()
    if system and system[-1] not in ".!?":
        system += "."
    return f"You are {name}, {system}"


def format_prompt(name: str, system: str, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt for ``question`` asked of persona ``name``; ``history`` is earlier (question, answer) turns."""
    parts = [system_line(name, system)]
    for q, a in history:
        parts += [f"{HUMAN}: {q.strip()}", f"{name}: {a.strip()}"]
    parts += [f"{HUMAN}: {question.strip()}", f"{name}:"]
    return SEP.join(parts)


def format_completion(answer: str) -> str:
    return " " + answer.strip()


@dataclass
class ParsedPrompt:
    name: str
    system: str
    history: list[tuple[str, str]]
    question: str

    @property
    def turns(self) -> int:
        return len(self.history) + 1


class PromptFormatError(ValueError):
    """The prompt does not follow :func:`format_prompt`'s layout.

    The message says which part is wrong but never quotes the prompt: records are
    private data, and these messages reach terminals and JSON reports.
    """


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Split a prompt back into persona name, system line, history and last question."""
    blocks = prompt.split(SEP)
    head = _HEADER_RE.match(blocks[0])
    if not head:
        raise PromptFormatError("the prompt must start with 'You are <Name>, <description>'")
    name = head["name"].strip()
    if blocks[-1] != f"{name}:":
        raise PromptFormatError("the prompt must end with a blank line and '<Name>:', the persona named in 'You are <Name>, ...'")
    body = blocks[1:-1]
    if not body or len(body) % 2 == 0:
        raise PromptFormatError("expected alternating 'Human: ...' and '<Name>: ...' turns ending with a Human turn")
    history: list[tuple[str, str]] = []
    q: str | None = None
    for i, block in enumerate(body):
        speaker = HUMAN if i % 2 == 0 else name
        who = HUMAN if speaker == HUMAN else "<Name>"
        if not block.startswith(f"{speaker}: "):
            raise PromptFormatError(f"turn {i + 1} must start with '{who}: '")
        text = block[len(speaker) + 2 :]
        if not text.strip():
            raise PromptFormatError(f"turn {i + 1} ({who}) is empty")
        if speaker == HUMAN:
            q = text
        else:
            history.append((q or "", text))
    return ParsedPrompt(name=name, system=head["system"], history=history, question=q or "")


def turn_starts(prompt: str) -> list[int]:
    """Character offsets where each ``Human: ...`` turn begins (oldest first); empty when there is none.

    Everything before the first offset is the system line; truncation cuts whole turns from there.
    """
    starts, pos = [], prompt.find(SEP)
    while pos != -1:
        if prompt.startswith(f"{HUMAN}: ", pos + len(SEP)):
            starts.append(pos + len(SEP))
        pos = prompt.find(SEP, pos + len(SEP))
    return starts
