"""Tokenizer metadata for a GGUF file, read from a Hugging Face model folder.

llama.cpp re-implements the tokenizer from this metadata, so every piece must
match what transformers does: the token list and types, the BPE merges (a
``gpt2`` vocab without merges fails to load), the pre-tokenizer name (without
``tokenizer.ggml.pre`` llama.cpp warns that generation quality will be
degraded), the special token ids (a wrong EOS never stops generation) and
whether BOS is prepended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from persona_pipeline.core.errors import PipelineError

# token types (gguf.TokenType values; kept here so that reading metadata needs no gguf import)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of known byte-level BPE tokenizers -> llama.cpp pre-tokenizer names.
_LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_QWEN2_REGEX = (  # Llama 3's with single digits
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_KNOWN_SPLITS = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}


@dataclass
class VocabMetadata:
    """Everything ``tokenizer.ggml.*`` holds; written by :func:`add_to_writer`."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, pad, unk
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None  # SentencePiece only: "▁" before the text
    chat_template: str | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(
            f"{path} not found: the GGUF export needs the tokenizer saved next to the model",
            hint="re-run `make merge` (it saves the tokenizer into merged/)",
        ) from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def _sequence_parts(section: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """The steps of a tokenizer.json section: the members of a ``Sequence``, else the section itself."""
    if not section:
        return []
    return list(section.get(key) or []) if section.get("type") == "Sequence" else [section]


def detect_pre_tokenizer(pre_tokenizer: dict[str, Any] | None, source: Path) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE ``pre_tokenizer`` section."""
    if not pre_tokenizer:
        raise PipelineError(f"{source}: the tokenizer has no pre_tokenizer; cannot tell llama.cpp how to split text")
    parts = _sequence_parts(pre_tokenizer, "pretokenizers")
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True) and not parts[0].get("add_prefix_space", False):
        return "gpt-2"  # GPT-2's own regex, applied inside ByteLevel
    if (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
            and parts[1].get("use_regex", True) and not parts[1].get("add_prefix_space", False)):
        return "smollm"  # SmolLM / SmolLM2: each digit on its own, then GPT-2's regex
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex in _KNOWN_SPLITS:
            return _KNOWN_SPLITS[regex]
    raise PipelineError(
        f"{source}: unrecognised byte-level pre-tokenizer {json.dumps(pre_tokenizer)[:200]}",
        hint="the exporter knows gpt-2, smollm, llama-bpe (Llama 3) and qwen2; for other tokenizers use "
        "llama.cpp's convert_hf_to_gguf.py, which recognises many more",
    )


def _merges(model: dict[str, Any]) -> list[str]:
    merges = model.get("merges") or []
    # transformers >= 4.45 stores pairs as lists; llama.cpp wants "a b" with spaces inside parts escaped.
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        else:
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in m))
    return out


def _adds_bos(tokenizer: Any) -> tuple[bool, bool]:
    """Whether the tokenizer prepends BOS / appends EOS, measured rather than parsed from its config."""
    ids = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return bool(ids) and bos is not None and ids[0] == bos, len(ids) > 1 and eos is not None and ids[-1] == eos


def _special_ids(tokenizer: Any, model_dir: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    for name in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(tid, int):
            ids[name] = tid
    # generation_config.json may name a different EOS (chat models stop on end-of-turn); llama.cpp
    # must stop where transformers stops.
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = _read_json(gen).get("eos_token_id")
        if isinstance(eos, list) and eos:
            eos = eos[0]
        if isinstance(eos, int):
            ids["eos"] = eos
    return ids


def read_vocab(model_dir: Path, n_vocab: int) -> VocabMetadata:
    """Tokenizer metadata for a model whose embedding matrix has ``n_vocab`` rows."""
    model_dir = Path(model_dir)
    tj_path = model_dir / "tokenizer.json"
    tj = _read_json(tj_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tmodel = tj.get("model", {})
    if tmodel.get("type") != "BPE":
        raise PipelineError(
            f"{tj_path}: tokenizer model '{tmodel.get('type')}' is not supported by the exporter (BPE only)",
            hint="use llama.cpp's convert_hf_to_gguf.py for this model",
        )
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_vocab:
        raise PipelineError(
            f"{model_dir}: tokenizer has {len(vocab)} tokens but the model's embedding only {n_vocab}",
            hint="the tokenizer does not belong to this model; re-run `make merge`",
        )
    by_id = {i: t for t, i in vocab.items()}
    special_ids = _special_ids(tokenizer, model_dir)
    add_bos, add_eos = _adds_bos(tokenizer)

    if tmodel.get("byte_fallback"):
        return _sentencepiece_vocab(tj, by_id, added, n_vocab, special_ids, add_bos, add_eos, tokenizer.chat_template)

    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows beyond the tokenizer (padding to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = _merges(tmodel)
    if not merges:
        raise PipelineError(
            f"{tj_path}: byte-level BPE tokenizer without merges; llama.cpp cannot load a gpt2 vocab without them",
            hint="re-save the tokenizer with transformers (tokenizer.save_pretrained) so tokenizer.json keeps its merges",
        )
    return VocabMetadata(
        model="gpt2",
        pre=detect_pre_tokenizer(tj.get("pre_tokenizer"), tj_path),
        tokens=tokens,
        token_types=types,
        merges=merges,
        special_ids=special_ids,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    )


def _adds_space_prefix(tj: dict[str, Any]) -> bool:
    """Whether the tokenizer puts "▁" before the text (Llama 2 / Mistral do, Gemma does not)."""
    for p in _sequence_parts(tj.get("pre_tokenizer"), "pretokenizers"):
        if p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") in ("first", "always"):
            return True
    normalizers = _sequence_parts(tj.get("normalizer"), "normalizers")
    return any(p.get("type") == "Prepend" and p.get("prepend") == "▁" for p in normalizers)


def _sentencepiece_vocab(tj: dict[str, Any], by_id: dict[int, str], added: dict[int, dict], n_vocab: int,
                         special_ids, add_bos, add_eos, chat_template) -> VocabMetadata:
    """SentencePiece-style BPE (byte fallback: Llama 2, Mistral, Gemma) from tokenizer.json alone.

    llama.cpp's SentencePiece tokenizer merges the pair whose result has the highest score;
    transformers merges the pair with the lowest merge rank. A token's score is therefore
    minus the rank of the first merge that builds it, so both merge in the same order
    (transformers 5 no longer saves tokenizer.model, so the original scores are not at hand).
    """
    rank: dict[str, int] = {}
    for i, m in enumerate(tj["model"].get("merges") or []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, i)
    unk = special_ids.get("unk")
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        text = added[i]["content"] if i in added else by_id.get(i)
        if text is None:  # embedding rows beyond the tokenizer
            tokens.append(f"[PAD{i}]")
            scores.append(-1e9)
            types.append(UNUSED)
            continue
        tokens.append(text)
        scores.append(-float(rank.get(text, len(rank) + i)))
        if i in added:
            types.append(CONTROL if added[i].get("special") or i == unk else USER_DEFINED)
        elif i == unk:
            types.append(UNKNOWN)
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(BYTE)  # byte-fallback pieces <0x00>..<0xFF>
        else:
            types.append(NORMAL)
    return VocabMetadata(
        model="llama", pre="default", tokens=tokens, token_types=types, scores=scores,
        special_ids=special_ids, add_bos=add_bos, add_eos=add_eos, add_space_prefix=_adds_space_prefix(tj),
        chat_template=chat_template if isinstance(chat_template, str) else None,
    )


def add_to_writer(writer: Any, vocab: VocabMetadata) -> None:
    """Write ``tokenizer.ggml.*`` keys."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for name, tid in vocab.special_ids.items():
        getattr(writer, f"add_{name}_token_id")(tid)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
