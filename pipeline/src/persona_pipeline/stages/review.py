"""`make review`: a person walks through the generated samples in the terminal and decides.

Shows each sample that ``make data`` would generate and nobody has reviewed yet
(every kind except a real quote answering the question really asked of it), one at
a time, and reads a key: ``a`` accept, ``r`` reject, ``e`` edit (type the new answer
on one line), ``s`` skip, ``q`` quit. Each decision is saved at once to
``generate.review_file`` (encrypted with the data key; see ``data/review.py``), so
quitting or Ctrl-C loses nothing. The next ``make data`` leaves rejected samples out
and uses edited answers. Nothing is written in plaintext: the text lives only in
memory and on the terminal.
"""

from __future__ import annotations

import sys
import textwrap

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import ensure_key
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.data.dataset import make_drafts
from persona_pipeline.data.personas import load_personas
from persona_pipeline.data.review import decide, load_decisions, needs_review, sample_id, save_decisions
from persona_pipeline.data.transcripts import ingest_all
from persona_pipeline.data.writer import ModelWriter

KEYS = {"a": "accept", "r": "reject", "e": "edit", "s": "skip", "q": "quit"}
PROMPT = "[a]ccept  [r]eject  [e]dit  [s]kip  [q]uit > "


def _wrap(label: str, text: str) -> str:
    return textwrap.fill(text, width=100, initial_indent=f"{label:<10}", subsequent_indent=" " * 10)


def run(cfg: Config) -> int:
    if not sys.stdin.isatty():
        raise PipelineError("make review is interactive: run it in a terminal (stdin is not a TTY)",
                            hint="run `make review` in a terminal, or through tmux")
    key = ensure_key(cfg)
    path = cfg.resolve(cfg.generate.review_file)
    decisions = load_decisions(path, key)
    personas = load_personas(cfg)
    pairs, _ = ingest_all(cfg, personas)
    writer = ModelWriter(cfg, key) if cfg.generate.writer == "model" else None  # cached answers, as make data
    sides, _ = make_drafts(cfg, personas, pairs, decisions, writer)
    pending = [d for side in sides for d in side if needs_review(d) and d.reviewed is None]
    print(f"{len(pending)} generated sample(s) to review; decisions go to {path} (encrypted)")
    done = {"accept": 0, "reject": 0, "edit": 0, "skip": 0}
    for i, d in enumerate(pending, start=1):
        sid = sample_id(d)
        print(f"\n[{i}/{len(pending)}] {d.persona} · {d.kind} · origin {d.origin} · id {sid}")
        print(_wrap("Human:", d.question))
        print(_wrap(f"{d.persona}:", d.answer))
        choice = None
        while choice is None:
            try:
                raw = input(PROMPT).strip().lower()
            except EOFError:
                raw = "q"
            choice = KEYS.get(raw[:1]) if raw else None
            if choice is None:
                print("  type a, r, e, s or q, then Enter")
        if choice == "quit":
            break
        if choice == "skip":
            done["skip"] += 1
            continue
        answer = None
        if choice == "edit":
            try:
                answer = " ".join(input("new answer (one line; empty keeps it unchanged): ").split())
            except EOFError:
                answer = ""
            if not answer:
                print("  unchanged, not saved")
                continue
        decisions[sid] = decide(d, choice, answer)
        save_decisions(path, decisions, key)
        done[choice] += 1
    print(f"\nreviewed: {done['accept']} accepted, {done['reject']} rejected, {done['edit']} edited, "
          f"{done['skip']} skipped; {len(decisions)} decision(s) in {path}. Run `make data` to apply them.")
    return 0
