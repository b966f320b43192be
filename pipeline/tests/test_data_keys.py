"""keygen / encrypt / decrypt, and every way an encrypted dataset can be unreadable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from persona_pipeline.cli import main
from persona_pipeline.core.crypto import MAGIC, VERSION, encode_key

PIPELINE = Path(__file__).resolve().parents[1]
CONFIG = PIPELINE / "configs" / "train_tiny.yaml"
RECORDS = [{"prompt": "You are Tilda, an actress.\n\nHuman: Hello?\n\nTilda:", "completion": " Hello to you.", "meta": {}}]


def cfg_args(tmp_path: Path) -> list[str]:
    return ["--config", str(CONFIG), f"data.key_file={tmp_path / 'secrets' / 'k.key'}",
            f"data.train={tmp_path / 'train.jsonl.enc'}", f"data.eval={tmp_path / 'eval.jsonl.enc'}",
            f"paths.outputs={tmp_path / 'outputs'}"]


@pytest.fixture
def plain(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


@pytest.fixture
def encrypted(tmp_path, plain, data_key) -> Path:
    assert main(["encrypt", *cfg_args(tmp_path), "--input", str(plain)]) == 0
    return tmp_path / "train.jsonl.enc"


def test_keygen_writes_0600_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PERSONA_DATA_KEY", raising=False)
    assert main(["keygen", *cfg_args(tmp_path)]) == 0
    key = tmp_path / "secrets" / "k.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    first = key.read_text()
    assert main(["keygen", *cfg_args(tmp_path)]) != 0
    assert "already exists" in capsys.readouterr().err and key.read_text() == first
    assert main(["keygen", *cfg_args(tmp_path), "--force"]) == 0 and key.read_text() != first


def test_encrypt_decrypt_round_trip(tmp_path, plain, encrypted, capsys):
    assert encrypted.read_bytes().startswith(MAGIC) and b"Hello" not in encrypted.read_bytes()
    out = tmp_path / "plain_out"
    assert main(["decrypt", *cfg_args(tmp_path), "--input", str(encrypted), "--output", str(out)]) == 0
    assert "PLAINTEXT" in capsys.readouterr().err
    assert (out / "train.jsonl").read_bytes() == plain.read_bytes()
    assert ((out / "train.jsonl").stat().st_mode & 0o777) == 0o600


def test_encrypt_refuses_malformed_jsonl(tmp_path, data_key, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": oops}\n')
    assert main(["encrypt", *cfg_args(tmp_path), "--input", str(bad)]) != 0
    assert "bad.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "bad.jsonl.enc").exists()


def _damage(path: Path, how: str) -> None:
    blob = bytearray(path.read_bytes())
    if how == "truncated":
        del blob[-10:]
    elif how == "tampered":
        blob[len(blob) // 2] ^= 0x01
    elif how == "newer":
        blob[len(MAGIC)] = VERSION + 1
    elif how == "garbage":
        blob[:] = b"not encrypted at all"
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "authentication failed"),
        ("tampered", "authentication failed"),
        ("newer", f"format version {VERSION + 1}"),
        ("garbage", "bad header"),
    ],
)
def test_damaged_file_fails_and_writes_nothing(tmp_path, encrypted, capsys, how, message):
    shutil.copy(encrypted, tmp_path / "eval.jsonl.enc")  # an intact eval set: the damage is the only fault
    _damage(encrypted, how)
    out = tmp_path / "plain_out"
    assert main(["decrypt", *cfg_args(tmp_path), "--input", str(encrypted), "--output", str(out)]) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()
    # Every stage reads through the same check.
    assert main(["validate-data", *cfg_args(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert message in err and str(encrypted) in err and not (tmp_path / "outputs").exists()


def test_wrong_key(tmp_path, encrypted, monkeypatch, capsys):
    monkeypatch.setenv("PERSONA_DATA_KEY", encode_key(bytes(32)))
    assert main(["decrypt", *cfg_args(tmp_path), "--input", str(encrypted), "--output", str(tmp_path / "o")]) != 0
    assert "wrong key" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_missing_key(tmp_path, encrypted, monkeypatch, capsys):
    monkeypatch.delenv("PERSONA_DATA_KEY")
    assert main(["decrypt", *cfg_args(tmp_path), "--input", str(encrypted)]) != 0
    err = capsys.readouterr().err
    assert "no data key" in err and "make keygen" in err


def test_malformed_key(tmp_path, encrypted, monkeypatch, capsys):
    monkeypatch.setenv("PERSONA_DATA_KEY", "too-short")
    assert main(["validate-data", *cfg_args(tmp_path)]) != 0
    assert "not a valid key" in capsys.readouterr().err


@pytest.mark.parametrize("kind, message", [("directory", "is not a regular file"), ("empty", "is empty")])
def test_key_file_that_is_a_directory_or_empty(tmp_path, plain, monkeypatch, capsys, kind, message):
    monkeypatch.delenv("PERSONA_DATA_KEY", raising=False)
    key = tmp_path / "secrets" / "k.key"
    if kind == "directory":
        key.mkdir(parents=True)
    else:
        key.parent.mkdir()
        key.write_text("")
        key.chmod(0o600)
    assert main(["encrypt", *cfg_args(tmp_path), "--input", str(plain)]) == 1
    err = capsys.readouterr().err
    assert message in err and str(key) in err and "Traceback" not in err
    assert not (tmp_path / "train.jsonl.enc").exists()
    if kind == "directory":  # keygen does not replace a directory, even with FORCE
        assert main(["keygen", *cfg_args(tmp_path), "--force"]) == 1
        assert message in capsys.readouterr().err and key.is_dir()
