"""Prompt/completion JSONL records: parsing with file-and-line errors, encrypted read/write.

A record is ``{"prompt": str, "completion": str, "meta": {...}}``. ``meta`` is
optional for user-supplied files; generated files always carry
``meta.persona``, ``meta.kind`` (extracted / transformed / hypothetical /
contrastive) and ``meta.group`` (the near-duplicate group used by the split).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import ENC_SUFFIX, data_key, decrypt_file, encrypt_bytes
from persona_pipeline.core.errors import DataError
from persona_pipeline.core.fsutil import atomic_write_bytes
from persona_pipeline.core.prompt_format import persona_in_prompt

Record = dict[str, Any]
REQUIRED = ("prompt", "completion")
KINDS = ("extracted", "transformed", "hypothetical", "contrastive")  # meta.kind of generated records


def parse_jsonl(data: bytes, source: str) -> list[Record]:
    """Parse and schema-check JSONL bytes. Errors name ``source`` and the 1-based line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{source}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            hint="re-save the file as UTF-8",
        ) from None
    records: list[Record] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{source}:{lineno}: malformed JSON: {exc.msg} (column {exc.colno})",
                hint="each line must be one JSON object",
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{source}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        for key in REQUIRED:
            if key not in obj:
                raise DataError(
                    f"{source}:{lineno}: missing '{key}'",
                    hint='each record needs {"prompt": "...", "completion": "..."}',
                )
            if not isinstance(obj[key], str):
                raise DataError(f"{source}:{lineno}: '{key}' must be a string")
        if "meta" in obj and not isinstance(obj["meta"], dict):
            raise DataError(f"{source}:{lineno}: 'meta' must be an object")
        obj.setdefault("meta", {})
        obj["meta"].setdefault("line", lineno)
        records.append(obj)
    if not records:
        raise DataError(f"{source}: no records (the file is empty)")
    return records


def dumps_jsonl(records: list[Record]) -> bytes:
    lines = []
    for r in records:
        meta = {k: v for k, v in r.get("meta", {}).items() if k != "line"}
        lines.append(json.dumps({**r, "meta": meta}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def is_encrypted(path: Path) -> bool:
    return path.name.endswith(ENC_SUFFIX)


def read_records(path: Path, key: bytes | None) -> list[Record]:
    """Read ``*.jsonl.enc`` (decrypted in memory with ``key``) or a plaintext ``*.jsonl``."""
    path = Path(path)
    if is_encrypted(path):
        if key is None:
            raise DataError(f"{path}: encrypted, but no key was given")
        return parse_jsonl(decrypt_file(path, key), str(path))
    if not path.is_file():
        raise DataError(f"dataset not found: {path}", hint="run `make data` first")
    return parse_jsonl(path.read_bytes(), str(path))


def encode_records(path: Path, records: list[Record], key: bytes | None) -> bytes:
    """The bytes :func:`write_records` writes to ``path``: encrypted when it ends in ``.enc``."""
    data = dumps_jsonl(records)
    if is_encrypted(Path(path)):
        if key is None:
            raise DataError(f"{path}: refusing to write encrypted data without a key")
        data = encrypt_bytes(data, key)
    return data


def write_records(path: Path, records: list[Record], key: bytes | None) -> Path:
    """Write records atomically; encrypted when ``path`` ends in ``.enc`` (the default everywhere)."""
    return atomic_write_bytes(Path(path), encode_records(path, records, key))


def read_dataset(cfg: Config, path: Path) -> tuple[list[Record], str]:
    """Records of a configured (possibly encrypted) dataset and the sha256 of its plaintext bytes."""
    path = Path(path)
    if is_encrypted(path):
        data = decrypt_file(path, data_key(cfg))
    elif path.is_file():
        data = path.read_bytes()
    else:
        raise DataError(f"dataset not found: {path}", hint="run `make data` first, or fix data.eval / data.train")
    return parse_jsonl(data, str(path)), hashlib.sha256(data).hexdigest()


def read_eval_set(cfg: Config) -> tuple[list[Record], str]:
    """The held-out eval set (``data.eval``) and its sha256."""
    return read_dataset(cfg, cfg.resolve(cfg.data.eval))


def persona_of(record: Record) -> str | None:
    """``meta.persona``, else the persona the prompt asks (its last ``\\n\\n<Name>:`` line)."""
    name = record.get("meta", {}).get("persona")
    return str(name) if name else persona_in_prompt(record["prompt"])
