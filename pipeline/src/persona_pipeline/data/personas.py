"""Personas as data: one strictly validated YAML file per persona under ``generate.personas_dir``.

A persona file holds the line used in prompts (``system``), the topics it talks
about, first-person facts (each with the questions it answers), style notes and
phrases, the domains it does *not* know (used for contrastive samples), and the
keywords / identity phrases that evaluation uses to detect persona blending.
Adding a persona is adding a file; see ``data/personas/tilda.yaml`` for the format.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import DataError, PipelineError
from persona_pipeline.core.prompt_format import GENERIC_SYSTEM
from persona_pipeline.core.schema import did_you_mean

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Fact:
    """A first-person fact about one of the persona's topics, and questions it answers."""

    topic: str
    text: str
    ask: tuple[str, ...]
    # "<transcript file>:<line>" refs of the turns that support the fact; empty = invented
    # (written for this project; the file says so with `invented: true`).
    source: tuple[str, ...] = ()


@dataclass(frozen=True)
class Style:
    notes: str
    openers: tuple[str, ...]
    closings: tuple[str, ...]
    # How this persona says "that is not my area" (contrastive samples).
    deflections: tuple[str, ...]


@dataclass(frozen=True)
class Domain:
    """Something the persona does not know; ``expert`` names the persona who does, if any."""

    domain: str
    expert: str | None


@dataclass(frozen=True)
class Persona:
    name: str
    system: str
    topics: tuple[str, ...]
    facts: tuple[Fact, ...]
    style: Style
    does_not_know: tuple[Domain, ...]
    domain_keywords: tuple[str, ...]
    identity: tuple[str, ...]
    path: Path

    @property
    def file(self) -> str:
        return self.path.name

    @property
    def source(self) -> str:
        """``meta.source`` of samples built from this file."""
        return f"persona:{self.path.name}"

    def facts_for(self, topic: str) -> list[Fact]:
        return [f for f in self.facts if f.topic == topic]


# --------------------------------------------------------------------------- schema

# key -> (required, kind); kinds: str, str_list, nested schema name
_TOP = {
    "name": (True, "str"),
    "system": (True, "str"),
    "topics": (True, "str_list"),
    "facts": (True, "facts"),
    "style": (True, "style"),
    "does_not_know": (True, "domains"),
    "domain_keywords": (True, "str_list"),
    "identity": (True, "str_list"),
}
_STYLE = {
    "notes": (True, "str"),
    "openers": (True, "str_list"),
    "closings": (True, "str_list"),
    "deflections": (True, "str_list"),
}
_FACT = {"topic": (True, "str"), "text": (True, "str"), "ask": (True, "str_list"),
         "source": (False, "str_list"), "invented": (False, "bool")}
_SOURCE_RE = re.compile(r"^(?P<file>[^\s:]+\.txt):(?P<line>[1-9]\d*)$")
FACT_SOURCE_HINT = ("give `source: <transcript file>:<line>` (the persona's turn that supports the fact; "
                    "a list for several) or mark it `invented: true`")
_DOMAIN = {"domain": (True, "str"), "expert": (False, "str")}

_NAME_RE = re.compile(r"^[A-Z][\w' -]{0,40}$")


def _fail(path: Path, where: str, msg: str, hint: str | None = None) -> DataError:
    return DataError(f"{path}: {where}: {msg}" if where else f"{path}: {msg}", hint=hint)


def _check_keys(path: Path, where: str, obj: Any, schema: dict[str, tuple[bool, str]]) -> dict:
    if not isinstance(obj, dict):
        raise _fail(path, where, f"expected a mapping, got {type(obj).__name__}")
    for key in obj:
        if key not in schema:
            sub = f"{where}.{key}" if where else str(key)
            raise _fail(path, "", f"unknown key '{sub}'", hint=did_you_mean(str(key), list(schema)))
    for key, (required, _) in schema.items():
        if required and key not in obj:
            sub = f"{where}.{key}" if where else key
            raise _fail(path, "", f"missing required key '{sub}'", hint="see data/personas/tilda.yaml for the format")
    return obj


def _text(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"expected non-empty text, got {value!r}")
    return " ".join(value.split())


def _texts(path: Path, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(path, where, f"expected a non-empty list of strings, got {value!r}")
    return tuple(_text(path, f"{where}[{i}]", v) for i, v in enumerate(value))


def _fact_source(path: Path, where: str, raw: dict) -> tuple[str, ...]:
    """A fact is either sourced (``source``: file:line refs) or marked ``invented: true``, never both or neither."""
    has_source, invented = "source" in raw, raw.get("invented")
    if "invented" in raw and invented is not True:
        raise _fail(path, f"{where}.invented", f"expected true, got {invented!r}", hint=FACT_SOURCE_HINT)
    if has_source == bool(invented):
        msg = "has both a source and invented: true" if has_source else "has neither a source nor invented: true"
        raise _fail(path, where, msg, hint=FACT_SOURCE_HINT)
    if not has_source:
        return ()
    refs = [raw["source"]] if isinstance(raw["source"], str) else raw["source"]
    refs = list(_texts(path, f"{where}.source", refs))
    for ref in refs:
        if not _SOURCE_RE.match(ref):
            raise _fail(path, f"{where}.source", f"{ref!r} is not <transcript file>:<line>", hint=FACT_SOURCE_HINT)
    return tuple(refs)


def parse_persona(data: Any, path: Path) -> Persona:
    """Validate the parsed YAML of one persona file and build a :class:`Persona`."""
    _check_keys(path, "", data, _TOP)
    name = _text(path, "name", data["name"])
    if not _NAME_RE.match(name):
        raise _fail(path, "name", f"{name!r} is not a usable persona name", hint="a capitalised name without ':' e.g. Tilda")
    system = _text(path, "system", data["system"])
    topics = _texts(path, "topics", data["topics"])
    if len(set(topics)) != len(topics):
        raise _fail(path, "topics", "duplicate topic")

    style_raw = _check_keys(path, "style", data["style"], _STYLE)
    style = Style(
        notes=_text(path, "style.notes", style_raw["notes"]),
        openers=_texts(path, "style.openers", style_raw["openers"]),
        closings=_texts(path, "style.closings", style_raw["closings"]),
        deflections=_texts(path, "style.deflections", style_raw["deflections"]),
    )

    if not isinstance(data["facts"], list) or not data["facts"]:
        raise _fail(path, "facts", "expected a non-empty list of {topic, text, ask}")
    facts = []
    for i, raw in enumerate(data["facts"]):
        where = f"facts[{i}]"
        _check_keys(path, where, raw, _FACT)
        topic = _text(path, f"{where}.topic", raw["topic"])
        if topic not in topics:
            hint = did_you_mean(topic, list(topics)).replace("keys", "topics")
            raise _fail(path, f"{where}.topic", f"unknown topic {topic!r}", hint=hint)
        facts.append(Fact(topic, _text(path, f"{where}.text", raw["text"]), _texts(path, f"{where}.ask", raw["ask"]),
                          _fact_source(path, where, raw)))
    empty = [t for t in topics if not any(f.topic == t for f in facts)]
    if empty:
        raise _fail(path, "topics", f"topic {empty[0]!r} has no facts", hint="add a fact with this topic, or remove the topic")

    if not isinstance(data["does_not_know"], list) or not data["does_not_know"]:
        raise _fail(path, "does_not_know", "expected a non-empty list of {domain, expert}")
    domains = []
    for i, raw in enumerate(data["does_not_know"]):
        where = f"does_not_know[{i}]"
        _check_keys(path, where, raw, _DOMAIN)
        expert = raw.get("expert")
        expert = None if expert is None else _text(path, f"{where}.expert", expert)
        domains.append(Domain(_text(path, f"{where}.domain", raw["domain"]), expert))

    return Persona(
        name=name,
        system=system,
        topics=topics,
        facts=tuple(facts),
        style=style,
        does_not_know=tuple(domains),
        domain_keywords=_texts(path, "domain_keywords", data["domain_keywords"]),
        identity=_texts(path, "identity", data["identity"]),
        path=path,
    )


def read_yaml_file(path: Path) -> Any:
    """YAML from a project data file, with file/line errors (shared with the speaker maps)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte offset {exc.start})", hint="re-save the file as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise DataError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None


def load_persona_file(path: Path) -> Persona:
    return parse_persona(read_yaml_file(path), path)


def load_personas(cfg: Config) -> dict[str, Persona]:
    """All personas in ``generate.personas_dir`` (``*.yaml``), keyed by name, cross-checked."""
    folder = cfg.resolve(cfg.generate.personas_dir)
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise DataError(f"no persona files (*.yaml) in {folder}", hint="set generate.personas_dir, or add data/personas/<name>.yaml")
    personas: dict[str, Persona] = {}
    for path in files:
        p = load_persona_file(path)
        if p.name in personas:
            raise DataError(f"{path}: persona name {p.name!r} is already used by {personas[p.name].path}")
        personas[p.name] = p
    for p in personas.values():
        for i, d in enumerate(p.does_not_know):
            if d.expert is not None and d.expert not in personas:
                raise DataError(
                    f"{p.path}: does_not_know[{i}].expert: unknown persona {d.expert!r}",
                    hint=did_you_mean(d.expert, list(personas)).replace("keys", "personas"),
                )
            if d.expert == p.name:
                raise DataError(f"{p.path}: does_not_know[{i}].expert names the persona itself")
    return personas


def persona_systems(cfg: Config) -> dict[str, str]:
    """{persona name: description used in 'You are <name>, <description>'} in ``eval.personas`` order.

    Without readable persona files every name gets :data:`~persona_pipeline.core.prompt_format.GENERIC_SYSTEM`
    (exports and built-in check prompts must not need the private data).
    """
    try:
        loaded = {name: p.system for name, p in load_personas(cfg).items()}
    except PipelineError as exc:
        log.info("persona files unavailable (%s); using a generic system line", str(exc).splitlines()[0])
        loaded = {}
    names = list(cfg.eval.personas) or list(loaded) or ["Assistant"]
    return {name: loaded.get(name, GENERIC_SYSTEM) for name in names}
