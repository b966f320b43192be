"""generate.writer: model — hypothetical answers written by a local model, filtered, counted and cached
(the real tiny Llama the pipeline builds; it writes poorly, so most answers are filtered, which is the point)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_pipeline.cli import main
from persona_pipeline.core.config import load_config
from persona_pipeline.core.crypto import decode_key
from persona_pipeline.core.errors import ConfigError
from persona_pipeline.core.records import read_records
from persona_pipeline.data.synth import Draft
from persona_pipeline.data.writer import CACHE_FILE, REASONS, WriterReport, clean_answer, filter_written

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_tiny.yaml"

TEA = "The tea bushes grow on sandy soil and we feed them compost from the cows of the cooperative every season."
POEM = "I write my poems late at night and read them aloud at the literary festival in Dhaka every winter."


def _d(persona: str, answer: str, q: str = "What matters to you?") -> Draft:
    return Draft(persona, "hypothetical", q, answer, f"persona:{persona.lower()}.yaml", f"h:{persona}:0")


def test_filter_written_counts_every_reason_and_keeps_the_good_one():
    others = [_d("Anis", TEA.replace("every season", f"in week {i}")) for i in range(3)]
    others += [_d("Ahsan", POEM.replace("every winter", f"in year {i}")) for i in range(3)]
    eval_answer = "Our cooperative lends every woman a cow and she repays the loan in milk over two years."
    written = [
        "Too short to keep.",  # too short
        " ".join(["tea"] * 200),  # too long
        "I love the garden. I love the garden. I love the garden. I love the garden. I love the garden.",  # a loop
        POEM.replace("poems", "verses"),  # sounds like Ahsan, not Anis
        others[0].answer,  # near-duplicate of an existing Anis answer
        "We started because our cooperative lends every woman a cow and she repays the loan in milk.",  # leakage
        "Compost from the cooperative cows feeds the sandy soil, and the tea bushes answer with a better flush.",
    ]
    drafts = [_d("Anis", "template answer", f"Question {i}?") for i in range(len(written))]
    report = WriterReport(model="m")
    kept = filter_written(drafts, written, others=others, eval_answers=[eval_answer], min_words=8, max_words=160,
                          threshold=0.6, report=report)
    assert report.filtered == {r: 1 for r in REASONS} and report.kept == 1
    assert [k.answer for k in kept] == [written[-1]] and kept[0].writer == "model" and kept[0].origin == "invented"
    assert kept[0].question == "Question 6?"


def test_clean_answer_cuts_a_runaway_after_its_last_sentence():
    assert clean_answer("Anis: We grow tea.  It takes years. And then the", "Anis") == "We grow tea. It takes years."
    assert clean_answer("No sentence end at all", "Anis") == "No sentence end at all"


def test_writer_must_be_templates_or_model():
    with pytest.raises(ConfigError) as exc:
        load_config(CONFIG, ["generate.writer=modle"])
    assert "generate.writer" in str(exc.value)


def test_make_data_with_the_tiny_model_as_writer(tmp_path, tiny_model_dir, data_key, capsys):
    out = tmp_path / "out"
    args = ["--config", str(CONFIG), "generate.writer=model", f"generate.writer_model={tiny_model_dir}",
            "generate.hypothetical_per_persona=8", "generate.contrastive_per_persona=3", "generate.writer_max_new_tokens=24",
            "generate.writer_min_words=3", f"generate.output_dir={out}", f"data.train={out / 'train.jsonl.enc'}",
            f"data.eval={out / 'eval.jsonl.enc'}", "eval.num_threads=1"]
    key = decode_key(data_key, "test")
    assert main(["data", *args]) == 0
    printed = capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    w = stats["writer"]
    assert w["mode"] == "model" and w["written"] > 0 and w["cached"] == 0
    assert w["written"] == w["kept"] + sum(w["filtered"].values())  # every written answer is accounted for
    assert f"{w['written']} hypothetical answers written" in printed and "volume:" in printed
    records = read_records(out / "train.jsonl.enc", key) + read_records(out / "eval.jsonl.enc", key)
    singles = [r for r in records if r["meta"]["turns"] == 1]
    assert sum(r["meta"]["writer"] == "model" for r in singles) <= w["kept"]
    assert all(r["meta"]["writer"] == "templates" for r in read_records(out / "eval.jsonl.enc", key))
    # Answers are cached encrypted: the second run generates nothing and writes the same data.
    cache = (out / CACHE_FILE).read_bytes()
    assert all(r["completion"].strip().encode() not in cache for r in singles if r["meta"]["writer"] == "model")
    first_train = read_records(out / "train.jsonl.enc", key)
    assert main(["data", *args]) == 0
    again = json.loads((out / "stats.json").read_text())["writer"]
    assert again["cached"] == w["written"] and again["kept"] == w["kept"]
    assert read_records(out / "train.jsonl.enc", key) == first_train


def test_missing_writer_model_fails_before_writing(tmp_path, data_key, capsys):
    out = tmp_path / "out"
    rc = main(["data", "--config", str(CONFIG), "generate.writer=model", f"generate.writer_model={tmp_path / 'nope'}",
               f"generate.output_dir={out}"])
    err = capsys.readouterr().err
    assert rc != 0 and "generate.writer_model" in err and "no config.json" in err
    assert not out.exists()
