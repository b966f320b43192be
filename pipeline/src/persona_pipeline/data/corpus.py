"""The project's own writing: persona files, our own transcripts' speech and ``data/corpus/*.txt``.

What the tiny base model's tokenizer and warm-up are trained on. Transcripts
outside the pipeline folder (the shared real ones) are never included.
"""

from __future__ import annotations

import re
from pathlib import Path

from persona_pipeline.core.config import Config
from persona_pipeline.data.personas import Persona, load_personas
from persona_pipeline.data.speaker_maps import load_speaker_map
from persona_pipeline.data.turns import parse_transcript

CORPUS_DIR = "data/corpus"
OWN_TRANSCRIPTS_DIR = "data/transcripts"


def own_transcript_text(cfg: Config) -> list[str]:
    """Speech from our own transcripts: configured ones inside the pipeline folder (not the shared
    real ones), plus ``data/transcripts/*.txt`` that have a map in ``data/transcripts/maps/<name>.yaml``."""
    root = cfg.root.resolve()
    sources: dict[Path, Path] = {}
    for src in cfg.generate.transcripts:
        path = cfg.resolve(src.path).resolve()
        if path.is_file() and root in path.parents:
            sources[path] = cfg.resolve(src.speaker_map)
    folder = cfg.resolve(OWN_TRANSCRIPTS_DIR)
    for path in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
        smap = folder / "maps" / f"{path.stem}.yaml"
        if smap.is_file():
            sources.setdefault(path.resolve(), smap)
    personas = load_personas(cfg) if sources else {}
    texts: list[str] = []
    for path, smap_path in sources.items():
        turns, _ = parse_transcript(path, load_speaker_map(smap_path, personas))
        texts.extend(t.text for t in turns)
    return texts


def persona_text(p: Persona) -> list[str]:
    """Every string the persona file holds (for tokenizer training and warm-up)."""
    # Training text, not a prompt: the line as the file words it (prompts come from prompt_format).
    out = [f"You are {p.name}, {p.system}", *p.topics, p.style.notes]
    out += list(p.style.openers) + list(p.style.closings) + list(p.style.deflections)
    for f in p.facts:
        out.append(f.text)
        out.extend(f.ask)
    out += [d.domain for d in p.does_not_know]
    return out


def project_text(cfg: Config) -> list[str]:
    """All text the project wrote itself: persona files, our own transcripts' speech, data/corpus/*.txt.

    Transcripts outside the pipeline folder (the shared real transcripts) are
    excluded: they are not ours to train a tokenizer or warm-up on.
    """
    texts: list[str] = []
    for p in load_personas(cfg).values():
        texts.extend(persona_text(p))
    texts.extend(own_transcript_text(cfg))
    corpus = cfg.resolve(CORPUS_DIR)
    for path in sorted(corpus.glob("*.txt")) if corpus.is_dir() else []:
        paragraphs = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
        texts.extend(" ".join(par.split()) for par in paragraphs if par.strip())
    return texts
