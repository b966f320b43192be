"""`make data` + `make validate-data` end to end, persona files, and project_text."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from persona_pipeline.cli import main
from persona_pipeline.core.config import load_config
from persona_pipeline.core.crypto import MAGIC, encode_key
from persona_pipeline.core.errors import DataError
from persona_pipeline.core.prompt_format import parse_prompt
from persona_pipeline.core.records import KINDS, read_records, write_records
from persona_pipeline.data.corpus import project_text
from persona_pipeline.data.dataset import build
from persona_pipeline.data.personas import load_persona_file, load_personas
from persona_pipeline.data.transcripts import ingest_all

PIPELINE = Path(__file__).resolve().parents[1]
CONFIG = PIPELINE / "configs" / "train_tiny.yaml"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KEY = encode_key(bytes(range(32, 64)))


def _args(out: Path) -> list[str]:
    return [
        "--config", str(CONFIG),
        f"generate.output_dir={out / 'data'}",
        f"data.train={out / 'data' / 'train.jsonl.enc'}",
        f"data.eval={out / 'data' / 'eval.jsonl.enc'}",
        f"data.key_file={out / 'secrets' / 'data.key'}",
        f"paths.outputs={out / 'outputs'}",
    ]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One `data` + `validate-data` run shared by the tests below (key in the environment)."""
    out = tmp_path_factory.mktemp("gen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERSONA_DATA_KEY", KEY)
        assert main(["data", *_args(out)]) == 0
        assert main(["validate-data", *_args(out)]) == 0
        key = bytes(range(32, 64))
        train = read_records(out / "data" / "train.jsonl.enc", key)
        evals = read_records(out / "data" / "eval.jsonl.enc", key)
    return out, train, evals


def test_data_and_validate_produce_encrypted_leak_free_sets(generated):
    out, train, evals = generated
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == ["eval.jsonl.enc", "stats.json", "train.jsonl.enc"]  # no plaintext on disk
    for name in ("train.jsonl.enc", "eval.jsonl.enc"):
        assert (out / "data" / name).read_bytes().startswith(MAGIC)
    assert 450 <= len(train) <= 900 and 0.10 <= len(evals) / (len(train) + len(evals)) <= 0.20
    for split in (train, evals):
        kinds = Counter((r["meta"]["persona"], r["meta"]["kind"]) for r in split)
        assert {k for _, k in kinds} == set(KINDS)  # all four kinds in both splits
        assert {p for p, _ in kinds} == {"Tilda", "Ahsan", "Anis"}
    report = json.loads((out / "outputs" / "data_validation.json").read_text())
    assert report["ok"] and report["leakage"]["eval_samples_leaked"] == 0 and not report["schema_errors"]
    assert not {r["meta"]["group"] for r in train} & {r["meta"]["group"] for r in evals}
    # Split by source: no eval answer quotes 8 words of a train answer (the old split: 78 of 95 did).
    assert report["containment"]["eval_answers_sharing_run"] == 0
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert stats["eval_answers_sharing_8_word_run"] == 0 and set(stats["held_out"]) == {"Tilda", "Ahsan", "Anis"}
    # Checked here without the pipeline's own matching code: no eval answer or question appears in train.
    norm = lambda text: " ".join(text.lower().split())  # noqa: E731
    train_answers = {norm(r["completion"]) for r in train}
    train_questions = {norm(parse_prompt(r["prompt"]).question) for r in train}
    assert not [r for r in evals if norm(r["completion"]) in train_answers]
    assert not [r for r in evals if norm(parse_prompt(r["prompt"]).question) in train_questions]


def test_validate_data_fails_when_a_train_sample_is_copied_into_eval(generated, tmp_path, monkeypatch):
    """The zero-leakage result above can fail: one copied record is caught and named by line."""
    out, train, evals = generated
    monkeypatch.setenv("PERSONA_DATA_KEY", KEY)
    leaky = tmp_path / "eval.jsonl.enc"
    write_records(leaky, evals + [train[0]], bytes(range(32, 64)))
    args = [a if not a.startswith("data.eval=") else f"data.eval={leaky}" for a in _args(out)]
    assert main(["validate-data", *args, f"paths.outputs={tmp_path / 'outputs'}"]) == 1
    report = json.loads((tmp_path / "outputs" / "data_validation.json").read_text())
    assert report["leakage"]["exact_cross_duplicates"] == 1
    assert len(evals) + 1 in {e["eval_line"] for e in report["leakage"]["examples"]}


def test_records_follow_the_prompt_format_and_meta_contract(generated):
    _, train, evals = generated
    multi = 0
    for r in train + evals:
        meta = r["meta"]
        parsed = parse_prompt(r["prompt"])
        assert parsed.name == meta["persona"] and r["prompt"].endswith(f"\n\n{meta['persona']}:")
        assert r["completion"].startswith(" ") and r["completion"].strip()
        assert meta["turns"] == parsed.turns and meta["kind"] in KINDS and meta["group"] and meta["source"]
        multi += meta["turns"] > 1
        if meta["kind"] == "extracted":
            assert ".txt:" in meta["source"]
        if meta["kind"] in ("hypothetical", "contrastive"):
            assert meta["source"] == f"persona:{meta['persona'].lower()}.yaml"
    assert multi >= 0.1 * len(train + evals)
    # A transformed variant shares its source's group, and so its split.
    for split in (train, evals):
        groups = {r["meta"]["group"] for r in split if r["meta"]["kind"] != "transformed"}
        assert all(r["meta"]["group"] in groups for r in split if r["meta"]["kind"] == "transformed")


def test_stats_report_counts_without_private_text(generated):
    out, train, _ = generated
    text = (out / "data" / "stats.json").read_text()
    stats = json.loads(text)
    assert stats["records"]["train"] == len(train)
    assert sum(stats["counts"]["train"]["Tilda"].values()) == sum(r["meta"]["persona"] == "Tilda" for r in train)
    files = {t["file"]: t for t in stats["transcripts"]}
    assert files["festival_panel_2019.txt"]["samples"] == {"Tilda": 7, "Ahsan": 9}
    for r in train[:200]:  # no sample text in the stats
        assert r["completion"].strip()[:40] not in text


def test_generation_is_deterministic():
    cfg = load_config(CONFIG)
    personas = load_personas(cfg)
    pairs, _ = ingest_all(cfg, personas)
    a, b = build(cfg, personas, pairs), build(cfg, personas, pairs)
    assert a.train == b.train and a.eval == b.eval


def test_key_file_is_created_when_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PERSONA_DATA_KEY", raising=False)
    args = _args(tmp_path) + ["generate.transcripts=[]", "generate.hypothetical_per_persona=8",
                              "generate.contrastive_per_persona=4"]
    assert main(["data", *args]) == 0
    key_file = tmp_path / "secrets" / "data.key"
    assert key_file.is_file() and (key_file.stat().st_mode & 0o777) == 0o600
    assert "created a new data key" in capsys.readouterr().err
    assert main(["validate-data", *args]) == 0  # reads back with the new key file


def test_adding_a_persona_is_adding_a_file(tmp_path, data_key):
    personas_dir = tmp_path / "personas"
    shutil.copytree(PIPELINE / "data" / "personas", personas_dir)
    text = (personas_dir / "anis.yaml").read_text()
    new = text.replace("name: Anis", "name: Rumi").replace('"I\'m Anis"', '"I\'m Rumi"')
    (personas_dir / "rumi.yaml").write_text(new)
    cfg = load_config(CONFIG, [f"generate.personas_dir={personas_dir}", "generate.transcripts=[]"])
    ds = build(cfg, load_personas(cfg), [])
    assert {r["meta"]["persona"] for r in ds.train} == {"Tilda", "Ahsan", "Anis", "Rumi"}


def test_shipped_personas_are_rich():
    personas = load_personas(load_config(CONFIG))
    assert set(personas) == {"Tilda", "Ahsan", "Anis"}
    for p in personas.values():
        assert len(p.facts) >= 25 and len(p.topics) >= 8
        assert p.domain_keywords and p.identity and p.does_not_know and p.style.deflections


@pytest.mark.parametrize(
    "edit, message",
    [
        (("facts:", "fatcs:"), "unknown key 'fatcs'"),
        (("  openers:", "  openerz:"), "unknown key 'style.openerz'"),
        (("  - topic: Drumduan\n", "  - topic: Drumdaun\n"), "unknown topic 'Drumdaun'"),
        (("name: Tilda", "name: 'Til:da'"), "not a usable persona name"),
        (("expert: Anis}", "expert: Anise}"), "unknown persona 'Anise'"),
    ],
)
def test_bad_persona_file(tmp_path, edit, message):
    personas_dir = tmp_path / "personas"
    shutil.copytree(PIPELINE / "data" / "personas", personas_dir)
    path = personas_dir / "tilda.yaml"
    path.write_text(path.read_text().replace(*edit, 1))
    with pytest.raises(DataError) as exc:
        load_personas(load_config(CONFIG, [f"generate.personas_dir={personas_dir}"]))
    assert message in str(exc.value) and "tilda.yaml" in str(exc.value)
    if "fatcs" in message:
        assert "did you mean 'facts'?" in str(exc.value)


def test_project_text_holds_our_own_writing_only():
    cfg = load_config(CONFIG)
    texts = project_text(cfg)
    joined = "\n".join(texts)
    assert len(joined.encode()) > 40_000
    assert load_persona_file(PIPELINE / "data/personas/tilda.yaml").facts[0].text in texts
    assert "A translator is a smuggler, really." in joined  # our own transcript
    assert "Tea is made from the young leaves" in joined  # data/corpus
    if (SHARED / "transcript_2020_tea_garden.txt").is_file():
        assert "herbal trees" not in joined  # the shared real transcripts are not ours
    # Our transcripts are found through data/transcripts/maps/ even when no config lists them.
    assert sorted(project_text(load_config(CONFIG, ["generate.transcripts=[]"]))) == sorted(texts)


def test_no_key_anywhere_is_a_clean_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PERSONA_DATA_KEY", raising=False)
    assert main(["validate-data", *_args(tmp_path)]) != 0
    assert "no data key" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "outputs")


# --------------------------------------------------------------------------- a full disk, a kill mid-write

_LIMITED = """\
import resource, signal, sys
limit, die = int(sys.argv[1]), sys.argv[2] == "die"
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # no file may grow past `limit` bytes
# Python ignores SIGXFSZ, so the write fails with EFBIG as on a full disk; "die" restores the default
# action: the kernel kills the process inside the write, no Python cleanup runs (like SIGKILL).
signal.signal(signal.SIGXFSZ, signal.SIG_DFL if die else signal.SIG_IGN)
from persona_pipeline.cli import main
sys.exit(main(sys.argv[3:]))
"""
SMALL = ["generate.hypothetical_per_persona=8", "generate.contrastive_per_persona=4", "generate.eval_fraction=0.6"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("how", ["disk full", "killed"])
def test_data_interrupted_mid_write_leaves_the_previous_set(tmp_path, monkeypatch, capsys, how):
    """A file-size limit stops `make data` while it writes the eval split (bigger than train here)."""
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("PERSONA_DATA_KEY", KEY)
    out, scratch = tmp_path / "real", tmp_path / "scratch"
    assert main(["data", *_args(out), *SMALL]) == 0
    previous = _files(out / "data")
    assert main(["data", *_args(scratch), *SMALL, "generate.seed=14"]) == 0  # the new set's file sizes
    sizes = {name: len(data) for name, data in _files(scratch / "data").items()}
    assert sizes["train.jsonl.enc"] < sizes["eval.jsonl.enc"], sizes
    limit = (sizes["train.jsonl.enc"] + sizes["eval.jsonl.enc"]) // 2

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(limit), "die" if how == "killed" else "fail",
         "data", *_args(out), *SMALL, "generate.seed=14"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if how == "killed":
        assert proc.returncode == -signal.SIGXFSZ, proc.stderr[-2000:]
    else:
        assert proc.returncode == 1 and "File too large; nothing was replaced" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    visible = {n: b for n, b in _files(out / "data").items() if not n.startswith(".")}
    assert visible == previous  # the old train, eval and stats, byte for byte: no mix of old and new
    if how == "disk full":
        assert not [n for n in _files(out / "data") if n.startswith(".")]
    # The next run replaces the set and clears what a killed writer left behind.
    assert main(["data", *_args(out), *SMALL, "generate.seed=14"]) == 0
    assert sorted(_files(out / "data")) == ["eval.jsonl.enc", "stats.json", "train.jsonl.enc"]
    key = bytes(range(32, 64))
    assert read_records(out / "data" / "eval.jsonl.enc", key) == read_records(scratch / "data" / "eval.jsonl.enc", key)
