"""Hypothetical answers written by a local instruct model (``generate.writer: model``).

For every hypothetical question on the train side, the writer model (``generate.writer_model``,
a local folder or a cached Hub id, loaded with transformers) is prompted through its chat
template with the persona's system line, the notes the template answer was built from (the
persona's facts), and 2-3 of the persona's real transcript quotes from the same side as style
examples. Greedy decoding, batched; answers are cached encrypted (``writer_cache.json.enc``
beside the data) by model and prompt, so ``make data`` and ``make review`` reuse them.

Each written answer is cut after its last complete sentence and must pass, in order: length in
range (``writer_min_words`` .. ``max_answer_words``), not a repetition loop, the persona
classifier (tf-idf nearest centroid fitted on the side's other answers) agrees on the persona,
no near-duplicate of another answer, and no leakage (no 8-word run shared with an eval answer).
What was filtered, and why, is counted. The eval side keeps template answers: eval references
written by the writer model would measure imitation of that model, not of the person.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import decrypt_bytes, encrypt_bytes
from persona_pipeline.core.errors import ConfigError
from persona_pipeline.core.fsutil import atomic_write_bytes
from persona_pipeline.data.dedup import jaccard, shingles, word_runs
from persona_pipeline.data.personas import Persona
from persona_pipeline.data.synth import Draft
from persona_pipeline.data.transcripts import trim_words
from persona_pipeline.evaluation.fidelity import tfidf_classifier

log = logging.getLogger(__name__)

CACHE_FILE = "writer_cache.json.enc"
LEAK_RUN_WORDS = 8  # the containment rule of validate-data
SAVE_EVERY_BATCHES = 4  # the cache is written after this many generation batches
QUOTE_WORDS = 45  # each style example is cut to this many words (whole sentences)
REASONS = ("too short", "too long", "repetitive", "persona classifier disagrees", "near-duplicate", "leakage")
# Below this share of distinct word 3-grams an answer is a loop ("I love books. I love books. ..."),
# the typical failure of a small model under greedy decoding (seen with SmolLM2-135M).
MIN_DISTINCT_TRIGRAMS = 0.75


@dataclass
class WriterReport:
    model: str
    mode: str = "model"
    written: int = 0
    kept: int = 0
    cached: int = 0
    filtered: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REASONS})
    seconds: float = 0.0


def style_quotes(persona: str, extracted: Sequence[Draft], question: str, k: int = 3) -> list[str]:
    """Up to ``k`` real quotes of ``persona`` (answers to questions really asked first), chosen per question."""
    mine = [d for d in extracted if d.persona == persona]
    asked = [d for d in mine if not d.derived_question] or mine
    rng = random.Random(f"{persona}|{question}")
    picked = rng.sample(asked, min(k, len(asked)))
    return [trim_words(d.answer, QUOTE_WORDS, "head")[0] for d in picked]


def build_prompt(tokenizer, p: Persona, question: str, notes: str, quotes: Sequence[str]) -> str:
    """The writer prompt through the model's chat template (plain text when it has none)."""
    system = (
        f"You are {p.name}, {p.system}. Answer the question in the first person, as {p.name}, in two to four "
        f"sentences. Use only what the notes say; do not invent names, numbers or places.\n"
        f"Notes: {notes}"
    )
    if quotes:
        system += "\nHow you really speak (quotes):\n" + "\n".join(f"- {q}" for q in quotes)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\nHuman: {question}\n\n{p.name}:"


def clean_answer(text: str, name: str) -> str:
    """First paragraph, without a leading ``Name:`` the model may repeat, spaces collapsed, and cut
    after its last complete sentence (an answer that ran into max_new_tokens ends mid-sentence)."""
    text = text.strip().split("\n\n")[0]
    text = " ".join(re.sub(rf"^\s*{re.escape(name)}\s*:\s*", "", text).split())
    ends = [m.end() for m in re.finditer(r"[.!?][\"')]?(?=\s|$)", text)]
    return text[: ends[-1]] if ends else text


def distinct_trigrams(text: str) -> float:
    """Share of distinct word 3-grams (1.0: no 3-gram repeats)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(grams)) / len(grams) if grams else 1.0


def filter_written(
    drafts: Sequence[Draft], written: Sequence[str], *, others: Sequence[Draft], eval_answers: Sequence[str],
    min_words: int, max_words: int, threshold: float, report: WriterReport,
) -> list[Draft]:
    """The written drafts that pass every filter (see module docstring); counts the rest by first reason."""
    names = sorted({d.persona for d in others} | {d.persona for d in drafts})
    clf = tfidf_classifier([d.answer for d in others], [d.persona for d in others], names)
    predicted, _ = clf.predict(list(written))
    seen = [shingles(d.answer) for d in others]
    leak_runs = set().union(*(word_runs(a, LEAK_RUN_WORDS) for a in eval_answers)) if eval_answers else set()
    kept = []
    for d, text, pred in zip(drafts, written, predicted, strict=True):
        n = len(text.split())
        sh = shingles(text)
        if n < min_words:
            reason = "too short"
        elif n > max_words:
            reason = "too long"
        elif distinct_trigrams(text) < MIN_DISTINCT_TRIGRAMS:
            reason = "repetitive"
        elif pred != d.persona:
            reason = "persona classifier disagrees"
        elif any(jaccard(sh, s) >= threshold for s in seen):
            reason = "near-duplicate"
        elif word_runs(text, LEAK_RUN_WORDS) & leak_runs:
            reason = "leakage"
        else:
            reason = None
        if reason:
            report.filtered[reason] += 1
            continue
        seen.append(sh)
        kept.append(replace(d, answer=text, origin="invented", writer="model"))
    report.kept += len(kept)
    return kept


class ModelWriter:
    """Loads the writer model on first use; answers are cached encrypted by model and prompt."""

    def __init__(self, cfg: Config, key: bytes):
        self.cfg = cfg
        self.key = key
        self.name = cfg.generate.writer_model or cfg.model.name_or_path
        local = cfg.resolve(self.name)
        if (local.exists() or self.name.startswith((".", "/", "~", "outputs/"))) and not (local / "config.json").is_file():
            raise ConfigError(
                f"generate.writer_model: {local} is not a model folder (no config.json)",
                hint="point generate.writer_model at a local instruct model (e.g. the SmolLM2 folder that "
                     "`make base-model TRAIN_CONFIG=configs/train_smollm2_135m.yaml` builds) or a cached Hub id",
            )
        self.cache_path = cfg.resolve(cfg.generate.output_dir) / CACHE_FILE
        self.cache: dict[str, str] = {}
        if self.cache_path.is_file():
            self.cache = json.loads(decrypt_bytes(self.cache_path.read_bytes(), key, str(self.cache_path)))
        self._model = None
        self._tokenizer = None
        self.report = WriterReport(model=self.name)

    def _tok(self):
        if self._tokenizer is None:
            # torch/transformers are imported only when a writer model is used: importing them made every
            # `make data` start in 12 s instead of 0.3 s (measured, 2 shared cores).
            from persona_pipeline.core.modeling import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg, self.name)
        return self._tokenizer

    def _lm(self):
        if self._model is None:  # only when some prompt is not cached
            from persona_pipeline.core.modeling import load_causal_lm

            self._model = load_causal_lm(self.cfg, self.name, quantize=False).eval()
        return self._model

    def _key(self, prompt: str) -> str:
        g = self.cfg.generate
        return hashlib.sha256(
            f"{self.name}|{g.writer_max_new_tokens}|{g.writer_repetition_penalty}|{prompt}".encode()).hexdigest()

    def rewrite(self, personas: dict[str, Persona], hypo: list[Draft], extracted: list[Draft], others: list[Draft],
                eval_answers: Sequence[str]) -> list[Draft]:
        """Model-written replacements for the template ``hypo`` drafts that pass the filters."""
        from persona_pipeline.evaluation.generation import GenerationSettings, generate, set_eval_threads

        g = self.cfg.generate
        start = time.perf_counter()
        tok = self._tok()
        prompts = [build_prompt(tok, personas[d.persona], d.question, d.answer,
                                style_quotes(d.persona, extracted, d.question, g.writer_quotes)) for d in hypo]
        keys = [self._key(p) for p in prompts]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        self.report.cached += len(prompts) - len(todo)
        if todo:
            model = self._lm()
            set_eval_threads(self.cfg)
            settings = GenerationSettings(max_new_tokens=g.writer_max_new_tokens, seed=self.cfg.seed,
                                          repetition_penalty=g.writer_repetition_penalty)
            step = g.writer_batch_size * SAVE_EVERY_BATCHES
            for k in range(0, len(todo), step):  # saved as it goes: an interrupted run keeps what it wrote
                chunk = todo[k : k + step]
                log.info("writer: answers %d-%d of %d", k + 1, k + len(chunk), len(todo))
                outs = generate(model, tok, [prompts[i] for i in chunk], settings, batch_size=g.writer_batch_size,
                                desc="writer")
                for i, out in zip(chunk, outs, strict=True):
                    self.cache[keys[i]] = out.text
                atomic_write_bytes(self.cache_path, encrypt_bytes(json.dumps(self.cache).encode(), self.key), mode=0o600)
        written = [clean_answer(self.cache[k], d.persona) for k, d in zip(keys, hypo, strict=True)]
        self.report.written += len(written)
        kept = filter_written(hypo, written, others=others, eval_answers=eval_answers, min_words=g.writer_min_words,
                              max_words=g.max_answer_words, threshold=g.near_duplicate_threshold, report=self.report)
        self.report.seconds += time.perf_counter() - start
        return kept
