"""`make review` through a real pseudo-terminal (tmux): accept, reject and edit change the next `make data`,
and neither the samples nor the edits reach the disk in plaintext."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from persona_pipeline.cli import main
from persona_pipeline.core.config import load_config
from persona_pipeline.core.crypto import decode_key
from persona_pipeline.core.records import read_records
from persona_pipeline.data.dataset import make_drafts
from persona_pipeline.data.personas import load_personas
from persona_pipeline.data.review import load_decisions, needs_review
from persona_pipeline.data.transcripts import ingest_all

PIPELINE = Path(__file__).resolve().parents[1]
CONFIG = PIPELINE / "configs" / "train_tiny.yaml"
CLI = PIPELINE / ".venv" / "bin" / "persona-pipeline"
EDITED = "Edited by a reviewer: the garden taught me patience above everything else."


def _args(tmp_path: Path) -> list[str]:
    out = tmp_path / "out"
    return ["--config", str(CONFIG), "generate.transcripts=[]", "generate.hypothetical_per_persona=4",
            "generate.contrastive_per_persona=2", f"generate.output_dir={out}", f"data.train={out / 'train.jsonl.enc'}",
            f"data.eval={out / 'eval.jsonl.enc'}", f"generate.review_file={tmp_path / 'review' / 'decisions.json.enc'}"]


def _records(tmp_path: Path, key: bytes) -> list[dict]:
    out = tmp_path / "out"
    return read_records(out / "train.jsonl.enc", key) + read_records(out / "eval.jsonl.enc", key)


def _has(records: list[dict], question: str, answer: str) -> bool:
    return any(question in r["prompt"] and r["completion"].strip() == answer for r in records)


class Pane:
    """A tmux session on its own server socket, read with capture-pane."""

    def __init__(self, socket: str):
        self.socket = socket

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def wait_for(self, text: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "review")
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} did not appear; screen:\n{screen}")

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "review", *keys)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_review_in_a_terminal_changes_the_next_make_data(tmp_path, data_key):
    key = decode_key(data_key, "test")
    assert main(["data", *_args(tmp_path)]) == 0
    before = _records(tmp_path, key)
    cfg = load_config(CONFIG, _args(tmp_path)[2:])
    personas = load_personas(cfg)
    sides, _ = make_drafts(cfg, personas, ingest_all(cfg, personas)[0])
    accept, reject, edit = [d for side in sides for d in side if needs_review(d)][:3]
    for d in (accept, reject, edit):
        assert _has(before, d.question, d.answer)

    pane = Pane(f"pp-review-{os.getpid()}")
    cmd = f"{shlex.join([str(CLI), 'review', *_args(tmp_path)])}; echo REVIEW-EXIT=$?; sleep 60"
    pane.tmux("new-session", "-d", "-s", "review", "-x", "200", "-y", "60", "-e", f"PERSONA_DATA_KEY={data_key}",
              "-c", str(PIPELINE), cmd)
    try:
        pane.wait_for("[1/")
        pane.send("a", "Enter")
        pane.wait_for("[2/")
        pane.send("r", "Enter")
        pane.wait_for("[3/")
        pane.send("e", "Enter")
        pane.wait_for("new answer")
        pane.send("-l", EDITED)
        pane.send("Enter")
        pane.wait_for("[4/")
        pane.send("q", "Enter")
        screen = pane.wait_for("REVIEW-EXIT=")
    finally:
        subprocess.run(["tmux", "-L", pane.socket, "kill-server"], capture_output=True)
    assert "REVIEW-EXIT=0" in screen and "1 accepted, 1 rejected, 1 edited" in screen

    # Decisions are stored encrypted, by sample id and content hash; no plaintext anywhere on disk.
    review_file = tmp_path / "review" / "decisions.json.enc"
    decisions = load_decisions(review_file, key)
    assert sorted(d.decision for d in decisions.values()) == ["accept", "edit", "reject"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert EDITED.encode() not in blob and reject.answer.encode() not in blob, path

    assert main(["data", *_args(tmp_path)]) == 0
    after = _records(tmp_path, key)
    assert _has(after, accept.question, accept.answer)
    assert not _has(after, reject.question, reject.answer)
    assert _has(after, edit.question, EDITED) and not _has(after, edit.question, edit.answer)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert {k: stats["review"][k] for k in ("accepted", "rejected", "edited", "stale")} == {
        "accepted": 1, "rejected": 1, "edited": 1, "stale": 0}


def test_review_refuses_without_a_terminal(tmp_path, data_key, capsys):
    assert main(["review", *_args(tmp_path)]) != 0
    assert "interactive" in capsys.readouterr().err
    assert not (tmp_path / "review").exists()
