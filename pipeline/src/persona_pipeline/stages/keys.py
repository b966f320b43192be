"""`make keygen` / `make encrypt` / `make decrypt`, and the key that `make data` creates when missing.

The only way plaintext data reaches disk is :func:`decrypt`, which says so loudly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from persona_pipeline.core.config import Config
from persona_pipeline.core.crypto import ENC_SUFFIX, KEY_ENV, data_key, decrypt_file, encrypt_bytes, ensure_key, write_key_file
from persona_pipeline.core.errors import DataError, PipelineError
from persona_pipeline.core.fsutil import atomic_write_bytes
from persona_pipeline.core.records import parse_jsonl

PLAINTEXT_DIR = "data/plaintext"


def keygen(cfg: Config, *, force: bool = False) -> int:
    path = write_key_file(cfg.resolve(cfg.data.key_file), force=force)
    print(f"wrote a new data key to {path} (mode 0600)")
    if os.environ.get(KEY_ENV):
        print(f"note: ${KEY_ENV} is set and takes precedence over the key file", file=sys.stderr)
    return 0


def encrypt(cfg: Config, *, input: str | None = None, output: str | None = None) -> int:
    """Encrypt a plaintext JSONL file (checked record by record first) to ``INPUT.enc`` or ``--output``."""
    if not input:
        raise PipelineError("encrypt needs a file: make encrypt INPUT=path/to/file.jsonl")
    src = Path(input)
    if src.name.endswith(ENC_SUFFIX):
        raise DataError(f"{src}: already encrypted (ends in {ENC_SUFFIX})")
    if not src.is_file():
        raise DataError(f"file not found: {src}")
    data = src.read_bytes()
    records = parse_jsonl(data, str(src))  # refuse to encrypt something later stages cannot read
    dest = Path(output) if output else src.with_name(src.name + ENC_SUFFIX)
    key = ensure_key(cfg)
    atomic_write_bytes(dest, encrypt_bytes(data, key))
    print(f"encrypted {len(records)} records: {src} -> {dest}")
    print(f"the plaintext {src} is still on disk; delete it when you no longer need it", file=sys.stderr)
    return 0


def decrypt(cfg: Config, *, input: str | None = None, output: str | None = None) -> int:
    """Write plaintext copies of the datasets (or ``INPUT``) under data/plaintext/.

    ``--output`` names another folder, or the file (``*.jsonl``) when decrypting one ``INPUT``.
    """
    if input:
        sources = [Path(input)]
    else:
        sources = [cfg.resolve(cfg.data.train), cfg.resolve(cfg.data.eval)]
    key = data_key(cfg)
    # Decrypt and check everything first: a wrong key or a damaged file writes nothing.
    plain = []
    for src in sources:
        if not src.name.endswith(ENC_SUFFIX):
            raise DataError(f"{src}: not an encrypted file (expected a name ending in {ENC_SUFFIX})")
        data = decrypt_file(src, key)
        parse_jsonl(data, str(src))
        plain.append((src, data))
    if output and len(sources) == 1 and Path(output).suffix == ".jsonl":
        targets = [Path(output)]  # a file name; anything else is a folder
    else:
        folder = Path(output) if output else cfg.resolve(PLAINTEXT_DIR)
        targets = [folder / src.name[: -len(ENC_SUFFIX)] for src, _ in plain]
    print("WARNING: writing PLAINTEXT private data to disk. It is git-ignored under data/plaintext/;", file=sys.stderr)
    print("WARNING: delete it when done (rm -r data/plaintext) and never commit or share it.", file=sys.stderr)
    for (src, data), dest in zip(plain, targets, strict=True):
        atomic_write_bytes(dest, data, mode=0o600)
        print(f"decrypted {src} -> {dest}")
    return 0
