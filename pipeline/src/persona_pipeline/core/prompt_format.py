"""The prompt format shared by data generation, validation, evaluation and the demo.

One record::

    prompt:     "You are Tilda, <system>\\n\\nHuman: <question>\\n\\nTilda:"
    completion: " <answer>"

Multi-turn prompts hold earlier turns before the last question::

    "You are Tilda, <system>\\n\\nHuman: q1\\n\\nTilda: a1\\n\\nHuman: q2\\n\\nTilda:"

An answer ends where the model starts the next human turn (:data:`STOP`). The same
format is also written here as a Jinja chat template (the tiny model's tokenizer)
and as an Ollama Go template, so that every place that renders it reads it from here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

HUMAN = "Human"
SEP = "\n\n"
STOP = f"{SEP}{HUMAN}:"  # the next human turn: where an answer ends
# The persona line used when a persona has no file (Modelfiles, built-in check prompts).
GENERIC_SYSTEM = "a person interviewed in a documentary; answer in your own voice"
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


def escape_newlines(text: str) -> str:
    """``text`` with newlines written as ``\\n`` (to show :data:`STOP` in markdown)."""
    return text.replace("\n", "\\n")


def persona_in_prompt(prompt: str) -> str | None:
    """The persona a prompt asks: the name in its last ``\\n\\n<Name>:`` line (None if it has none)."""
    tail = prompt.rsplit(SEP, 1)[-1].strip()
    return tail[:-1] if tail.endswith(":") and tail != f"{HUMAN}:" else None


# The format as a chat template. The persona's name comes from a `persona` template variable
# or, failing that, from a system line "You are <Name>, ...".
CHAT_TEMPLATE = (
    "{%- set ns = namespace(name=persona if persona is defined else 'Assistant') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{%- if persona is not defined and m['content'].startswith('You are ') -%}"
    "{%- set ns.name = m['content'][8:].split(',')[0] -%}"
    "{%- endif -%}"
    "{{ m['content'] }}"
    "{%- elif m['role'] == 'user' -%}{{ '\\n\\nHuman: ' + m['content'] }}"
    "{%- else -%}{{ '\\n\\n' + ns.name + ': ' + m['content'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n\\n' + ns.name + ':' }}{%- endif -%}"
)


def ollama_template(persona: str) -> str:
    """A Go template over .Messages that renders the format for ``persona`` (Ollama Modelfiles)."""
    return (
        "{{- range .Messages }}"
        '{{- if eq .Role "system" }}{{ .Content }}'
        f'{{{{- else if eq .Role "user" }}}}{SEP}{HUMAN}: {{{{ .Content }}}}'
        f'{{{{- else if eq .Role "assistant" }}}}{SEP}{persona}: {{{{ .Content }}}}'
        "{{- end }}"
        "{{- end }}"
        f"{SEP}{persona}:"
    )
