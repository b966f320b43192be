"""Speaker maps: the YAML beside each transcript that says which label means which persona.

A map splits a transcript into sections (a section starts at a heading line) and says,
per section, how lines are laid out (``tab``, ``colon`` or ``header``) and which label
is which persona, ``human`` (a questioner), or skipped. The format is described in
:mod:`persona_pipeline.data.transcripts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from persona_pipeline.core.errors import DataError
from persona_pipeline.core.schema import did_you_mean
from persona_pipeline.data.personas import Persona, read_yaml_file

HUMAN = "human"
FORMATS = ("tab", "colon", "header")


@dataclass
class Section:
    start: str | None
    format: str
    speakers: dict[str, str]  # folded label -> persona name or "human"
    skip: set[str]  # folded labels
    unlisted: str  # "warn" | "skip"

    def role(self, label: str) -> str | None:
        """Persona name, ``human``, ``skip``, or None for a label the map does not list."""
        for cand in _label_candidates(label):
            if cand in self.speakers:
                return self.speakers[cand]
            if cand in self.skip:
                return "skip"
        return None

    def knows(self, label: str) -> bool:
        return self.role(label) is not None


@dataclass
class SpeakerMap:
    path: Path
    sections: list[Section]


def fold_label(label: str) -> str:
    return " ".join(label.split()).casefold()


def _label_candidates(label: str) -> list[str]:
    """``Female - Introduction`` / ``Male (2)`` also match ``Female`` / ``Male``."""
    folded = fold_label(label)
    short = re.split(r"\s+-\s+|\s*\(", folded, maxsplit=1)[0].strip()
    return [folded] if short == folded or not short else [folded, short]


_MAP_KEYS = {"sections"}
_SECTION_KEYS = {"start", "format", "speakers", "skip", "unlisted"}


def load_speaker_map(path: Path, personas: dict[str, Persona]) -> SpeakerMap:
    """Read and validate a speaker map; persona names must exist in ``personas``."""
    data = read_yaml_file(path)

    def fail(msg: str, hint: str | None = None) -> DataError:
        return DataError(f"{path}: {msg}", hint=hint or "see data/transcripts/maps/ for examples")

    if not isinstance(data, dict):
        raise fail("expected a mapping with a 'sections' list")
    for key in data:
        if key not in _MAP_KEYS:
            raise fail(f"unknown key '{key}'", did_you_mean(str(key), sorted(_MAP_KEYS)))
    raw_sections = data.get("sections")
    if not isinstance(raw_sections, list) or not raw_sections:
        raise fail("'sections' must be a non-empty list")
    sections = []
    for i, raw in enumerate(raw_sections):
        where = f"sections[{i}]"
        if not isinstance(raw, dict):
            raise fail(f"{where}: expected a mapping")
        for key in raw:
            if key not in _SECTION_KEYS:
                raise fail(f"unknown key '{where}.{key}'", did_you_mean(str(key), sorted(_SECTION_KEYS)))
        start = raw.get("start")
        if i > 0 and (not isinstance(start, str) or not start.strip()):
            raise fail(f"{where}.start: every section after the first needs the heading line where it starts")
        if i == 0 and start is not None and not isinstance(start, str):
            raise fail(f"{where}.start: expected a heading line (text), got {start!r}")
        fmt = raw.get("format", "tab")
        if fmt not in FORMATS:
            raise fail(f"{where}.format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        unlisted = raw.get("unlisted", "warn")
        if unlisted not in ("warn", "skip"):
            raise fail(f"{where}.unlisted: expected warn or skip, got {unlisted!r}")
        speakers_raw = raw.get("speakers") or {}
        if not isinstance(speakers_raw, dict):
            raise fail(f"{where}.speakers: expected a mapping of label -> persona name or 'human'")
        speakers = {}
        for label, target in speakers_raw.items():
            if not isinstance(target, str) or (target != HUMAN and target not in personas):
                choices = [*personas, HUMAN]
                raise fail(
                    f"{where}.speakers.{label}: {target!r} is not a persona or 'human'",
                    did_you_mean(str(target), choices).replace("keys", "values"),
                )
            speakers[fold_label(str(label))] = target
        skip_raw = raw.get("skip") or []
        if not isinstance(skip_raw, list) or not all(isinstance(s, str) for s in skip_raw):
            raise fail(f"{where}.skip: expected a list of labels")
        skip = {fold_label(s) for s in skip_raw}
        sections.append(Section(start.strip() if isinstance(start, str) else None, fmt, speakers, skip, unlisted))
    return SpeakerMap(path, sections)
