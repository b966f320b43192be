"""The prompt format shared by data generation, validation, evaluation and the demo.

One record::

    prompt:     "You are Tilda, <system>\\n\\nHuman: <question>\\n\\nTilda:"
    completion: " <answer>"

Multi-turn prompts hold earlier turns before the last question::

    "You are Tilda, <system>\\n\\nHuman: q1\\n\\nTilda: a1\\n\\nHuman: q2\\n\\nTilda:"

An answer ends where the model starts the next human turn (:data:`STOP`). The same
format is also written here as a Jinja chat template (the tiny model's tokenizer)
and as an Ollama Go template, so that every place that renders it reads it from here.

Records are stored in this plain format. With ``model.prompt_format: chat_template``
:func:`render_prompt` turns a stored prompt into the model's own chat template
(system line, user and assistant turns) and :func:`render_completion` gives the answer as
the template writes it; the answer then ends with the template's end-of-turn token (EOS).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from persona_pipeline.core.errors import ConfigError

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


class PromptTooLong(ValueError):
    """Even without earlier turns the prompt is longer than the token budget."""


def fit_prompt(
    name: str,
    system: str,
    question: str,
    history: Sequence[tuple[str, str]],
    count_tokens: Callable[[str], int],
    budget: int,
) -> tuple[str, int]:
    """The longest-history prompt within ``budget`` tokens: (prompt, earlier turns kept), oldest turns dropped first.

    The model was trained on prompts of at most ``data.max_length`` tokens, so a chat keeps its
    prompt (plus the answer's room) inside that rather than letting the context grow without bound.
    """
    turns = list(history)
    while True:
        prompt = format_prompt(name, system, question, turns)
        n = count_tokens(prompt)
        if n <= budget:
            return prompt, len(turns)
        if not turns:
            raise PromptTooLong(f"the question makes a {n}-token prompt; at most {budget} fit (data.max_length minus eval.max_new_tokens)")
        turns.pop(0)


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


PromptFormat = Literal["plain", "chat_template"]


def chat_messages(prompt: str) -> list[dict[str, str]]:
    """A stored (plain) prompt as chat messages: system, then user / assistant turns ending with a user turn."""
    p = parse_prompt(prompt)
    messages = [{"role": "system", "content": system_line(p.name, p.system)}]
    for q, a in p.history:
        messages += [{"role": "user", "content": q.strip()}, {"role": "assistant", "content": a.strip()}]
    messages.append({"role": "user", "content": p.question.strip()})
    return messages


def render_prompt(prompt: str, fmt: PromptFormat, tokenizer: Any) -> str:
    """The text the model is given for a stored prompt: as stored, or through the tokenizer's chat template."""
    if fmt == "plain":
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"model.prompt_format is chat_template, but the tokenizer ({getattr(tokenizer, 'name_or_path', '?')}) has no chat template",
            hint="set model.prompt_format: plain in the config",
        )
    text = tokenizer.apply_chat_template(chat_messages(prompt), tokenize=False, add_generation_prompt=True)
    # Templates that write BOS themselves (Llama 3) would get a second one from a tokenizer that adds it.
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def render_completion(prompt: str, completion: str, fmt: PromptFormat, tokenizer: Any) -> str:
    """The answer text that follows the rendered prompt, as the template writes it (ChatML: no leading space;
    a template ending in "<Name>:" keeps it). The end-of-turn after it is the tokenizer's EOS, added when tokenizing."""
    if fmt == "plain":
        return completion
    answer = completion.strip()
    head = render_prompt(prompt, fmt, tokenizer)
    full = tokenizer.apply_chat_template(chat_messages(prompt) + [{"role": "assistant", "content": answer}], tokenize=False)
    bos = tokenizer.bos_token
    if bos and not head.startswith(bos) and full.startswith(bos):
        full = full[len(bos):]
    end = full.rfind(answer)
    if full.startswith(head) and end >= len(head):
        return full[len(head) : end + len(answer)]
    return answer
