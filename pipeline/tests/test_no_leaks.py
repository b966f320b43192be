"""Nothing leaks: record text stays out of messages and reports, private settings stay private,
public settings are not hidden, and outputs keep the user's file modes."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path

from conftest import CONFIGS, PIPELINE, persona_records
from persona_pipeline.cli import main
from persona_pipeline.core.config import dump_config, load_config
from persona_pipeline.core.crypto import load_key
from persona_pipeline.core.records import write_records

CANARY = "QXZ-canary-7731"


def canary_records() -> list[dict]:
    """Malformed records with the canary in every field a message or report could quote."""
    c = CANARY
    ok = "You are Tilda, an actress.\n\nHuman: Why no exams?\n\nTilda:"
    return [
        {"prompt": f"{c} You are Tilda, x.\n\nHuman: q\n\nTilda:", "completion": " a"},  # bad header
        {"prompt": f"You are Tilda, x {c}.\n\nHuman: q {c}\n\nTilda {c}:", "completion": " a"},  # bad ending
        {"prompt": f"You are Tilda, x.\n\n{c}: q\n\nTilda:", "completion": " a"},  # bad turn
        {"prompt": f"You are Tilda, x.\n\nHuman: q\n\nTilda: {c}\n\nTilda:", "completion": " a"},  # no last question
        {"prompt": ok, "completion": f"{c} without the leading space"},
        {"prompt": f"You are {c}, x.\n\nHuman: q\n\n{c}:", "completion": f" {c}"},  # no persona file
        {"prompt": ok, "completion": " a", "meta": {"persona": c, "kind": c, "turns": c, "group": c, "source": c}},
    ]


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if needle in p.name.encode() or (p.is_file() and needle in p.read_bytes())]


def test_canary_in_an_encrypted_malformed_set_reaches_no_output(make_cfg, write_dataset, tmp_path, capsys, caplog):
    """validate-data, tokenize and eval over a malformed encrypted set: errors name lines, never text."""
    cfg = make_cfg("eval_tiny_baseline.yaml")
    write_dataset(cfg, n_train=12, n_eval=6)
    eval_path = cfg.resolve(cfg.data.eval)
    write_records(eval_path, persona_records(6, 2) + canary_records(), load_key(cfg.resolve(cfg.data.key_file)))
    args = ["--config", str(CONFIGS / "eval_tiny_baseline.yaml"), *_overrides(cfg)]
    with caplog.at_level(logging.DEBUG):
        assert main(["validate-data", *args]) == 1
        report = json.loads((cfg.outputs_dir / "data_validation.json").read_text())
        assert main(["tokenize", *args]) == 0  # tokenization does not judge the format; its cache is encrypted
        assert main(["eval", *args]) == 1  # records of a persona without a persona file
    out, err = capsys.readouterr()
    # The failures are reported, by line: 7 problem records from line 7 on (6 good ones first).
    lines = {e["line"] for e in report["schema_errors"] if e["split"] == "eval"}
    assert lines == set(range(7, 14)), report["schema_errors"]
    assert "3 record(s) name a persona that has no file" in err and "(lines 8, 12, 13)" in err
    for text in (out, err, caplog.text, json.dumps(report)):
        assert CANARY not in text
    assert _files_holding(tmp_path, CANARY.encode()) == []


def _overrides(cfg) -> list[str]:
    return [
        f"paths.outputs={cfg.outputs_dir}",
        f"model.name_or_path={cfg.model.name_or_path}",
        f"data.train={cfg.data.train}",
        f"data.eval={cfg.data.eval}",
        f"data.key_file={cfg.data.key_file}",
        "eval.embeddings=off",
    ]


def test_stats_hold_no_speaker_labels_unless_asked(tmp_path, data_key):
    transcript = tmp_path / "interview.txt"
    transcript.write_text(
        "Question\tWhat made you start the school?\n"
        "Tilda\tWe were parents who kept having the same conversation at the school gate every day.\n"
        f"{CANARY}\tA neighbour who is nobody's persona.\n"
        "Question\tAnd the exams?\n"
        "Tilda\tThere are none, and the children learn more because nobody grades them.\n",
        encoding="utf-8",
    )
    smap = tmp_path / "map.yaml"
    smap.write_text("sections:\n  - format: tab\n    speakers: {Tilda: Tilda, Question: human}\n")
    base = [
        "--config", str(CONFIGS / "train_tiny.yaml"),
        f'generate.transcripts=[{{path: "{transcript}", speaker_map: "{smap}"}}]',
        "generate.hypothetical_per_persona=6", "generate.contrastive_per_persona=3",
    ]
    for asked, folder in ((False, tmp_path / "plain"), (True, tmp_path / "labelled")):
        assert main(["data", *base, f"generate.output_dir={folder}", f"generate.stats_speaker_labels={asked}"]) == 0
        text = (folder / "stats.json").read_text()
        row = json.loads(text)["transcripts"][0]
        if asked:
            assert row["unmapped_speakers"] == {CANARY: 1}
        else:
            assert CANARY not in text and row["unmapped_speakers"] == {"labels": 1, "turns": 1}


def test_saved_config_redacts_secret_names_only():
    from persona_pipeline.core.config import _redact

    cfg = load_config(CONFIGS / "train_tiny.yaml", ["eval.max_new_tokens=77"])
    text = dump_config(cfg)
    assert "redacted" not in text
    assert "max_new_tokens: 77" in text and "check_max_new_tokens: 24" in text
    assert _redact({"hf_token": "abc", "x": {"api_key": "k", "password": "p"}, "max_tokens": 5}) == {
        "hf_token": "***redacted***", "x": {"api_key": "***redacted***", "password": "***redacted***"}, "max_tokens": 5}


def test_resume_drift_check_sees_token_settings(make_cfg, tmp_path):
    from persona_pipeline.core.runs import RunDir
    from persona_pipeline.stages.train import _config_drift

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text(dump_config(make_cfg()))
    assert _config_drift(run, make_cfg()) == []
    assert _config_drift(run, make_cfg("train_tiny.yaml", "eval.max_new_tokens=7")) == ["eval.max_new_tokens"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_keep_the_umask_and_only_the_key_is_private(tmp_path):
    from persona_pipeline.core.crypto import write_key_file
    from persona_pipeline.core.fsutil import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "outputs" / "model") as d:
            (d / "f").write_text("x")
        assert _mode(tmp_path / "outputs" / "model") == 0o755
        project = tmp_path / "project"
        project.mkdir()
        write_key_file(project / "data.key")  # an existing folder is not ours to lock
        assert _mode(project) == 0o755 and _mode(project / "data.key") == 0o600
        write_key_file(tmp_path / "fresh" / ".secrets" / "data.key")  # a folder made for the key is private
        assert _mode(tmp_path / "fresh" / ".secrets") == 0o700 and _mode(tmp_path / "fresh") == 0o755
    finally:
        os.umask(old)


def test_tensorboard_listens_on_localhost_unless_asked():
    def recipe(*extra: str) -> str:
        # -n prints the commands without running them.
        out = subprocess.run(["make", "-n", "tensorboard", *extra], cwd=PIPELINE,
                             capture_output=True, text=True, check=True).stdout
        return next(line for line in out.splitlines() if "tensorboard --logdir" in line)

    assert "--host 127.0.0.1" in recipe() and "--bind_all" not in recipe()
    assert "--host 0.0.0.0" in recipe("TB_HOST=0.0.0.0")
