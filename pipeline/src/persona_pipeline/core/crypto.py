"""Encryption at rest: AES-256-GCM files with a versioned, authenticated header.

File layout (all of it authenticated; the header is the GCM associated data)::

    b"PPENC" | version (1 byte) | nonce (12 bytes) | ciphertext + 16-byte tag

The key is 32 random bytes, given as base64 (or 64 hex digits) in
``PERSONA_DATA_KEY`` or in the key file written by ``make keygen`` (mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import CryptoError

MAGIC = b"PPENC"
VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = len(MAGIC) + 1 + NONCE_SIZE
KEY_ENV = "PERSONA_DATA_KEY"
ENC_SUFFIX = ".enc"


def generate_key() -> bytes:
    return secrets.token_bytes(32)


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def decode_key(text: str, source: str) -> bytes:
    text = text.strip()
    key: bytes | None = None
    if len(text) == 64:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != 32:
        raise CryptoError(
            f"{source}: not a valid key (expected 32 bytes as base64 or 64 hex digits)",
            hint="create a new one with `make keygen`, or fix PERSONA_DATA_KEY",
        )
    return key


def write_key_file(path: Path, force: bool = False) -> Path:
    """Create a new random key file with mode 0600. Refuses to overwrite unless ``force``.

    A folder created for the key is 0700; an existing folder keeps its mode (it may be the
    user's project folder, which is not ours to lock).
    """
    _refuse_non_file(path)
    if path.exists() and not force:
        raise CryptoError(
            f"key file already exists: {path}",
            hint="data encrypted with it would become unreadable; pass FORCE=1 to replace it anyway",
        )
    if not path.parent.is_dir():
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(encode_key(generate_key()) + "\n")
    os.replace(tmp, path)
    return path


def _refuse_non_file(path: Path) -> None:
    if path.exists() and not path.is_file():
        raise CryptoError(
            f"key file {path} is not a regular file (a directory?)",
            hint="point data.key_file at a file, or remove what is there and run `make keygen`",
        )


def load_key(key_file: Path) -> bytes:
    """The data key from ``PERSONA_DATA_KEY``, else from ``key_file``."""
    env = os.environ.get(KEY_ENV)
    if env:
        return decode_key(env, f"${KEY_ENV}")
    _refuse_non_file(key_file)
    if not key_file.is_file():
        raise CryptoError(
            f"no data key: {KEY_ENV} is not set and the key file {key_file} does not exist",
            hint="run `make keygen` (or export PERSONA_DATA_KEY=<base64 key>)",
        )
    mode = key_file.stat().st_mode & 0o777
    if mode & 0o077:
        raise CryptoError(
            f"key file {key_file} is readable by others (mode {mode:o})",
            hint=f"chmod 600 {key_file}",
        )
    text = key_file.read_text(encoding="ascii", errors="replace")
    if not text.strip():
        raise CryptoError(
            f"key file {key_file} is empty",
            hint="restore the key from your backup; `make keygen FORCE=1` makes a new one, which cannot read old data",
        )
    return decode_key(text, str(key_file))


def encrypt_bytes(plaintext: bytes, key: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_SIZE)
    header = MAGIC + bytes([VERSION]) + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def decrypt_bytes(blob: bytes, key: bytes, source: str = "<bytes>") -> bytes:
    if len(blob) < len(MAGIC) + 1 or not blob.startswith(MAGIC):
        raise CryptoError(f"{source}: not an encrypted persona-pipeline file (bad header)")
    version = blob[len(MAGIC)]
    if version > VERSION:
        raise CryptoError(
            f"{source}: encrypted with format version {version}, this pipeline reads up to {VERSION}",
            hint="upgrade persona-pipeline to read it",
        )
    if version != VERSION:
        raise CryptoError(f"{source}: unknown format version {version}")
    if len(blob) < HEADER_SIZE + TAG_SIZE:
        raise CryptoError(f"{source}: file is truncated ({len(blob)} bytes)")
    header, body = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    nonce = header[len(MAGIC) + 1 :]
    try:
        return AESGCM(key).decrypt(nonce, body, header)
    except InvalidTag:
        raise CryptoError(
            f"{source}: authentication failed: wrong key, or the file was truncated or modified",
            hint="check PERSONA_DATA_KEY / the key file; regenerate the data with `make data` if it is damaged",
        ) from None


def decrypt_file(path: Path, key: bytes) -> bytes:
    """Decrypt a file into memory (plaintext never touches disk)."""
    if not path.is_file():
        raise CryptoError(f"encrypted file not found: {path}", hint="run `make data` first")
    return decrypt_bytes(path.read_bytes(), key, str(path))


def data_key(cfg: Config) -> bytes:
    """The data key from $PERSONA_DATA_KEY or the configured key file (never created here)."""
    return load_key(cfg.resolve(cfg.data.key_file))


def ensure_key(cfg: Config) -> bytes:
    """The data key; creates the key file (mode 0600) first when neither it nor $PERSONA_DATA_KEY exists."""
    path = cfg.resolve(cfg.data.key_file)
    if not os.environ.get(KEY_ENV) and not path.exists():
        write_key_file(path)
        print(f"notice: created a new data key at {path} (mode 0600, git-ignored); keep it: "
              "the encrypted datasets cannot be read without it", file=sys.stderr)
    return load_key(path)
