"""Tokenization for training: prompt/completion records -> token ids with completion-only labels, cached.

Each sample is ``prompt tokens (BOS added by the tokenizer) + completion tokens + EOS``;
prompt tokens are labelled -100 so the loss covers only the persona's answer and
its end. Prompt and completion are tokenized as one text and split at the prompt's
last character by token offsets: tokenized apart, a SentencePiece tokenizer would
put an extra "▁" at the start of the completion that the model never sees when it
generates. A sample longer than ``data.max_length`` keeps BOS and the persona's
system line and loses the oldest dialogue turns (then, if the last question alone
is too long, its beginning); only when the completion alone does not fit is the
completion cut from the right.

Cache at rest: ``outputs/cache/tokenized/<split>-<hash>.tok.enc``. Token ids are
*not* anonymised data -- anyone with the (public) tokenizer turns them back into
the text -- so the cache is encrypted with the same data key as the datasets
(AES-256-GCM via :mod:`crypto`). The hash covers the decrypted data, the tokenizer
(vocabulary, merges, special tokens), ``max_length`` and :data:`FORMAT_VERSION`,
so any change rebuilds it and an unchanged input reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import CryptoError, data_key, decrypt_bytes, encrypt_bytes
from persona_pipeline.core.errors import DataError
from persona_pipeline.core.fsutil import atomic_write_bytes
from persona_pipeline.core.modeling import load_tokenizer
from persona_pipeline.core.prompt_format import render_completion, render_prompt, turn_starts
from persona_pipeline.core.records import Record, read_records

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Bump when the sample layout or the truncation rule changes: old caches are then ignored.
FORMAT_VERSION = 2
SPLITS = ("train", "eval")
# Keep at least this many prompt tokens when a long completion has to be cut.
MIN_PROMPT_TOKENS = 8


@dataclass
class TokenizedSplit:
    """Tokenized samples of one split plus what happened while building them."""

    split: str
    samples: list[dict[str, list[int]]]
    stats: dict[str, Any]
    cache_path: Path
    from_cache: bool = False
    lengths: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = [len(s["input_ids"]) for s in self.samples]


def tokenize_records(records: list[Record], tokenizer, max_length: int) -> tuple[list[dict], dict[str, Any]]:
    """Tokenize records into ``{"input_ids", "labels"}`` (prompt labelled -100, EOS appended).

    Returns the samples and counts: ``prompt_truncated`` (prompt cut from the left),
    ``completion_truncated`` (completion cut from the right, rare) and
    ``dropped_empty`` (no completion tokens at all; these samples are left out).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token", hint="set eos_token in the model's tokenizer_config.json")
    # BOS (or whatever the tokenizer adds in front) stays in place when the prompt is cut.
    head = len(tokenizer("", add_special_tokens=True)["input_ids"])
    if max_length < head + MIN_PROMPT_TOKENS + 2:
        raise DataError(
            f"data.max_length={max_length} is too small to hold a prompt and an answer",
            hint=f"use at least {head + MIN_PROMPT_TOKENS + 2} (512 is the default)",
        )
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"the tokenizer {type(tokenizer).__name__} gives no character offsets (a 'slow' Python tokenizer)",
            hint="use the model's fast tokenizer (tokenizer.json); prompt and completion are split by offsets",
        )
    stats = {"records": len(records), "prompt_truncated": 0, "completion_truncated": 0, "dropped_empty": 0}
    samples: list[dict] = []
    chunk = 256
    for start in tqdm(range(0, len(records), chunk), desc="tokenize", unit="chunk", leave=False):
        part = records[start : start + chunk]
        enc = tokenizer(
            [r["prompt"] + r["completion"] for r in part],
            add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True,
        )
        for i, r in enumerate(part):
            p, c, starts = _split(enc["input_ids"][i], enc["offset_mapping"][i], enc["special_tokens_mask"][i], r["prompt"])
            if not c:
                stats["dropped_empty"] += 1
                continue
            c = c + [eos]
            if len(p) + len(c) > max_length:
                keep_c = max_length - min(len(p), head + MIN_PROMPT_TOKENS)
                if len(c) > keep_c:
                    c = c[:keep_c]
                    stats["completion_truncated"] += 1
                keep_p = max_length - len(c)
                if len(p) > keep_p:
                    p = _cut_prompt(p, starts, keep_p, head)
                    stats["prompt_truncated"] += 1
            samples.append({"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c})
    lengths = [len(s["input_ids"]) for s in samples]
    stats.update(
        samples=len(samples),
        tokens=sum(lengths),
        label_tokens=sum(sum(1 for t in s["labels"] if t != IGNORE_INDEX) for s in samples),
        max_len=max(lengths, default=0),
        mean_len=round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        max_length=max_length,
    )
    return samples, stats


def _split(
    ids: list[int], offsets: list[tuple[int, int]], special: list[int], prompt: str
) -> tuple[list[int], list[int], list[int]]:
    """Prompt ids, completion ids and the token index where each dialogue turn starts.

    A token belongs to the prompt when it starts inside the prompt's characters (a token
    spanning the boundary stays with the prompt, which is what the model sees at inference).
    Special tokens in front (BOS) are prompt; special tokens the tokenizer appends are
    dropped, since EOS is appended explicitly.
    """
    cut = len(prompt)
    n = 0
    while n < len(ids) and (special[n] or offsets[n][0] < cut):
        n += 1
    completion = [t for t, s in zip(ids[n:], special[n:], strict=True) if not s]
    turns = turn_starts(prompt)
    starts = [next((k for k in range(n) if not special[k] and offsets[k][0] >= ch), n) for ch in turns]
    return ids[:n], completion, starts


def _cut_prompt(p: list[int], starts: list[int], keep: int, head: int) -> list[int]:
    """At most ``keep`` prompt tokens: BOS, the system line and the newest turns that fit.

    Without a system line/turn layout, or when the last turn alone is too long, the prompt
    loses tokens from its left end instead (right after the system line when that still
    leaves ``MIN_PROMPT_TOKENS``, else right after BOS).
    """
    if starts:
        system = p[: starts[0]]
        for s in starts:
            if len(system) + len(p) - s <= keep:
                return system + p[s:]
        if keep - len(system) >= MIN_PROMPT_TOKENS:
            return system + p[len(p) - (keep - len(system)) :]
    return p[:head] + p[len(p) - (keep - head) :]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in the tokenizer that changes token ids (vocab, merges, specials)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:  # slow tokenizers: the vocabulary stands in for the model file
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    specials = [type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    h.update(json.dumps(specials).encode("utf-8"))
    return h.hexdigest()


def cache_key(records: list[Record], tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION}|{max_length}|{tokenizer_fingerprint(tokenizer)}|".encode())
    for r in records:
        h.update(json.dumps([r["prompt"], r["completion"]], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def cache_dir(cfg: Config) -> Path:
    return cfg.outputs_dir / "cache" / "tokenized"


def _split_path(cfg: Config, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return cfg.resolve(getattr(cfg.data, split))


def _read_cache(path: Path, key: bytes, digest: str) -> tuple[list[dict], dict] | None:
    try:
        payload = json.loads(zlib.decompress(decrypt_bytes(path.read_bytes(), key, str(path))))
    except (CryptoError, zlib.error, ValueError) as exc:
        # A cache written under another key or damaged: rebuild rather than fail.
        log.warning("ignoring unreadable tokenized cache %s (%s)", path, str(exc).splitlines()[0])
        return None
    if payload.get("key") != digest:
        return None
    return payload["samples"], payload["stats"]


def load_tokenized(cfg: Config, split: str, force: bool = False, tokenizer=None) -> TokenizedSplit:
    """Tokenized ``train`` or ``eval`` split from the encrypted cache, building it when stale.

    Raises DataError when no sample is left (empty file, or every completion empty).
    """
    key = data_key(cfg)
    data_path = _split_path(cfg, split)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    fmt = cfg.model.prompt_format
    # The cache key hashes the rendered text, so a change of prompt format rebuilds the cache.
    records = [
        {"prompt": render_prompt(r["prompt"], fmt, tokenizer),
         "completion": render_completion(r["prompt"], r["completion"], fmt, tokenizer)}
        for r in read_records(data_path, key)
    ]
    max_length = cfg.data.max_length
    digest = cache_key(records, tokenizer, max_length)
    path = cache_dir(cfg) / f"{split}-{digest[:16]}.tok.enc"
    cached = None if force or not path.is_file() else _read_cache(path, key, digest)
    if cached is not None:
        samples, stats = cached
        result = TokenizedSplit(split, samples, stats, path, from_cache=True)
    else:
        samples, stats = tokenize_records(records, tokenizer, max_length)
        stats["source"] = str(data_path)
        blob = json.dumps({"key": digest, "stats": stats, "samples": samples}, separators=(",", ":"))
        atomic_write_bytes(path, encrypt_bytes(zlib.compress(blob.encode("utf-8"), 6), key), mode=0o600)
        for old in path.parent.glob(f"{split}-*.tok.enc"):
            if old != path:
                old.unlink(missing_ok=True)
        result = TokenizedSplit(split, samples, stats, path, from_cache=False)
    if not result.samples:
        raise DataError(
            f"{data_path}: no usable samples after tokenization ({stats['records']} records, "
            f"{stats['dropped_empty']} with an empty completion)",
            hint="every record needs a non-empty 'completion'; regenerate the data with `make data`",
        )
    return result


def tokenize(cfg: Config, force: bool = False) -> dict[str, dict[str, Any]]:
    """Tokenize (or reuse the cache for) both splits; returns their stats by split."""
    tokenizer = load_tokenizer(cfg)
    out = {}
    for split in SPLITS:
        ts = load_tokenized(cfg, split, force=force, tokenizer=tokenizer)
        out[split] = {**ts.stats, "cache": str(ts.cache_path), "from_cache": ts.from_cache}
    return out
