"""Every persona turn counts: derived questions, split long turns, real order, per-transcript report,
and persona facts with transcript sources (issue 12, items 1 and 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_pipeline.cli import main
from persona_pipeline.core.config import load_config
from persona_pipeline.core.errors import DataError
from persona_pipeline.data.personas import load_personas, parse_persona, read_yaml_file
from persona_pipeline.data.speaker_maps import load_speaker_map
from persona_pipeline.data.transcripts import derive_question, ingest_transcript, key_words, split_answer
from persona_pipeline.data.turns import parse_transcript

PIPELINE = Path(__file__).resolve().parents[1]
CONFIG = PIPELINE / "configs" / "train_tiny.yaml"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MAPS = PIPELINE / "data" / "transcripts" / "maps"
needs_shared = pytest.mark.skipif(
    not (SHARED / "transcript_2020_dhaka_session.txt").is_file(),
    reason=f"the shared real transcripts are not at {SHARED} (CI clones the repo beside shared/)",
)

# A transcript the pipeline has never seen, written for this test in the layout of the real ones:
# a heading, a timestamp, a label alone on its line, a TAB continuation, a filler, an unmapped
# interruption, a persona answering another persona, a monologue, and one long turn.
LONG = " ".join(
    f"On the {n} terrace we planted lemongrass between the rows to keep the soil covered through the dry months."
    for n in ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")
)
NEW_TRANSCRIPT = [
    ("", "EVENING TALK AT THE RIVER SCHOOL"),
    ("", "00:01:10"),
    ("Host", "What did the children build this spring?"),
    ("Tilda", "They built a rope bridge over the burn and tested it with sacks of sand before anyone crossed."),
    ("Ahsan", "That reminds me of the bamboo bridges near my grandmother's village, which were rebuilt after every flood."),
    ("Stagehand", "Sorry, the microphone cable is loose."),
    ("Tilda", "Where was I. The older ones kept a logbook of every knot they tied and why it held."),
    ("Host", "And the tea garden, how did the terraces start?"),
    ("Anis Ahmed", None),
    ("", LONG),
    ("Host", "Mm."),
    ("Anis Ahmed", "Nobody believed lemongrass would help, and now the neighbours ask us for cuttings."),
]
NEW_MAP = """\
# Speaker map for the test transcript (README: label -> persona or human; skip known others).
sections:
  - format: tab
    speakers: {Tilda: Tilda, Ahsan: Ahsan, Anis Ahmed: Anis, Host: human}
    skip: [Stagehand]
"""
PERSONA_TEXTS = {  # what each persona said, in order
    "Tilda": [NEW_TRANSCRIPT[3][1], NEW_TRANSCRIPT[6][1]],
    "Ahsan": [NEW_TRANSCRIPT[4][1]],
    # The host's "Mm." is a filler: dropped, so Anis's two turns around it are one turn.
    "Anis": [LONG + " " + NEW_TRANSCRIPT[11][1]],
}


@pytest.fixture(scope="module")
def personas():
    return load_personas(load_config(CONFIG))


def _write_new(tmp_path: Path) -> tuple[Path, Path]:
    lines = []
    for label, text in NEW_TRANSCRIPT:
        if not label:
            lines.append(f"\t{text}" if text == LONG else text)  # the long speech: a TAB continuation line
        elif text is None:
            lines.append(f"{label}\t")  # a label alone on its line
        else:
            lines.append(f"{label}\t{text}  ")
        lines.append("")
    path = tmp_path / "river_school_talk.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    smap = tmp_path / "river_school_talk.yaml"
    smap.write_text(NEW_MAP, encoding="utf-8")
    return path, smap


def test_new_transcript_every_mapped_persona_answer_becomes_samples(tmp_path, personas):
    path, smap = _write_new(tmp_path)
    pairs, stats = ingest_transcript(path, load_speaker_map(smap, personas), max_answer_words=40)
    assert stats.persona_turns == stats.used_turns == {"Tilda": 2, "Ahsan": 1, "Anis": 1}
    assert stats.dropped == {} and stats.skipped_speakers == {"Stagehand": 1}
    # Every word each persona said is in its samples, in the real order (pieces joined back = the turn).
    for who, texts in PERSONA_TEXTS.items():
        mine = sorted((p for p in pairs if p.persona == who), key=lambda p: p.order)
        by_turn: dict[str, list[str]] = {}
        for p in mine:
            by_turn.setdefault(p.source, []).append(p.answer)
        assert [" ".join(v) for v in by_turn.values()] == texts
    # The long turn (7 x 19 + 13 words, limit 40) is split at sentence boundaries into 4 pieces of <= 40 words.
    long_pieces = [p for p in pairs if p.persona == "Anis"]
    assert len(long_pieces) == 4 and stats.split_turns == 1
    assert all(len(p.answer.split()) <= 40 and p.answer.endswith(".") for p in long_pieces)
    assert [p.piece for p in long_pieces] == [0, 1, 2, 3]
    # Asked questions stay; the first piece of the long turn answers the host's question.
    asked = {p.answer: p.question for p in pairs if not p.derived}
    assert asked[PERSONA_TEXTS["Tilda"][0]] == "What did the children build this spring?"
    assert long_pieces[0].question == "And the tea garden, how did the terraces start?"
    # Derived: Ahsan answering Tilda, Tilda after an interruption, the long turn's 3 later pieces.
    derived = [p for p in pairs if p.derived]
    assert {p.persona for p in derived} == {"Ahsan", "Tilda", "Anis"} and stats.derived_questions == len(derived) == 5
    for p in derived:
        assert p.question.endswith(("?", ".")) and any(w.lower() in p.answer.lower() for w in key_words(p.answer))


def test_new_transcript_through_make_data_reports_turns(tmp_path, data_key, capsys):
    path, smap = _write_new(tmp_path)
    args = [
        "--config", str(CONFIG),
        f'generate.transcripts=[{{path: "{path}", speaker_map: "{smap}"}}]',
        f"generate.output_dir={tmp_path / 'out'}", f"data.train={tmp_path / 'out' / 'train.jsonl.enc'}",
        f"data.eval={tmp_path / 'out' / 'eval.jsonl.enc'}", "generate.hypothetical_per_persona=6",
        "generate.contrastive_per_persona=3", "generate.max_answer_words=40",
    ]
    assert main(["data", *args]) == 0
    out = capsys.readouterr().out
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    t = stats["transcripts"][0]
    assert t["persona_turns"] == t["used_turns"] == {"Tilda": 2, "Ahsan": 1, "Anis": 1}
    assert t["samples"] == {"Tilda": 2, "Ahsan": 1, "Anis": 4} and t["derived_questions"] == 5
    assert stats["singles_by_kind"]["extracted"] == 7
    assert "river_school_talk.txt" in out and "persona turns: found" in out
    share = stats["origin_share"]
    assert abs(sum(share.values()) - 1) < 1e-3 and share["quote"] > 0 and share["invented"] > 0
    # Sources of facts that point at transcripts not in this config cannot be checked: counted, not failed.
    assert stats["facts"]["Anis"]["unchecked_refs"] > 0
    assert stats["facts"]["Tilda"]["sourced"] + stats["facts"]["Tilda"]["invented"] == stats["facts"]["Tilda"]["facts"]


@needs_shared
def test_shared_transcripts_every_persona_turn_accounted_for(personas):
    """Acceptance: samples per persona against persona turns per shared file; every used turn fully used."""
    cfg = load_config(CONFIG)
    report = {}
    for name in ("transcript_2020_dhaka_session", "transcript_2020_tea_garden", "transcript_machine_cut_sample",
                 "transcript_sample"):
        smap = load_speaker_map(MAPS / f"{name}.yaml", personas)
        turns, _ = parse_transcript(SHARED / f"{name}.txt", smap)
        pairs, stats = ingest_transcript(SHARED / f"{name}.txt", smap, max_answer_words=cfg.generate.max_answer_words)
        for who, n in stats.persona_turns.items():
            dropped = sum(stats.dropped.get(who, {}).values())
            assert stats.used_turns.get(who, 0) + dropped == n
        # Each used turn's pieces join back to the whole turn: no speech is trimmed away.
        spoken = {f"{stats.file}:{t.line}": t.text for t in turns if t.role in personas}
        joined: dict[str, list[str]] = {}
        for p in pairs:
            joined.setdefault(p.source, []).append(p.answer)
        assert all(" ".join(v) == spoken[src] for src, v in joined.items())
        assert all(len(p.answer.split()) <= cfg.generate.max_answer_words for p in pairs)
        report[name] = (stats.persona_turns, stats.used_turns, stats.samples)
    # Measured on the shared files (was: Tilda 9, Anis 9, Ahsan 0 pairs before issue 12).
    assert report["transcript_2020_dhaka_session"][:2] == ({"Ahsan": 9, "Tilda": 12}, {"Ahsan": 5, "Tilda": 11})
    assert report["transcript_2020_tea_garden"][:2] == ({"Anis": 9}, {"Anis": 9})
    assert report["transcript_machine_cut_sample"][:2] == ({"Tilda": 2, "Anis": 1}, {"Tilda": 2, "Anis": 1})
    assert report["transcript_sample"][0] == {}


def test_split_answer_keeps_whole_sentences_and_balances():
    text = " ".join(f"Sentence number {i} has exactly seven words." for i in range(1, 25))  # 168 words
    pieces = split_answer(text, 160)
    assert len(pieces) == 2 and " ".join(pieces) == text
    assert all(p.endswith("words.") for p in pieces)
    assert abs(len(pieces[0].split()) - len(pieces[1].split())) <= 7  # even halves, not 160 + 8
    assert split_answer("Short answer here.", 160) == ["Short answer here."]
    one_long = " ".join(["word"] * 100) + "."
    assert all(len(p.split()) <= 40 for p in split_answer(one_long, 40))


def test_derived_question_names_what_the_turn_is_about_and_is_stable():
    answer = "In Panchagarh we planted lemongrass, and the lemongrass kept the soil of Panchagarh cool."
    assert key_words(answer) == ["Panchagarh", "lemongrass"]
    q = derive_question(answer, "x.txt:3#0")
    assert "lemongrass" in q and "Panchagarh" in q and q == derive_question(answer, "x.txt:3#0")
    assert len({derive_question(answer, f"x.txt:{i}#0") for i in range(30)}) > 1  # frames vary by source


# --------------------------------------------------------------------------- facts with sources


def _persona_data(**fact_extra):
    data = read_yaml_file(PIPELINE / "data" / "personas" / "tilda.yaml")
    fact = dict(data["facts"][0])
    fact.pop("invented", None)
    fact.pop("source", None)
    fact.update(fact_extra)
    data["facts"][0] = fact
    return data


@pytest.mark.parametrize(
    "extra, message",
    [
        ({}, "neither a source nor invented: true"),
        ({"invented": True, "source": "a.txt:3"}, "both a source and invented: true"),
        ({"invented": False}, "expected true"),
        ({"source": "a.txt"}, "is not <transcript file>:<line>"),
        ({"source": ["a.txt:0"]}, "is not <transcript file>:<line>"),
    ],
)
def test_fact_must_be_sourced_or_marked_invented(tmp_path, extra, message):
    with pytest.raises(DataError) as exc:
        parse_persona(_persona_data(**extra), tmp_path / "tilda.yaml")
    assert message in str(exc.value) and "facts[0]" in str(exc.value) and "invented: true" in str(exc.value)


@needs_shared
def test_fact_source_must_point_at_the_personas_turn(tmp_path, data_key, capsys):
    folder = tmp_path / "personas"
    folder.mkdir()
    for name in ("tilda", "ahsan", "anis"):
        (folder / f"{name}.yaml").write_text((PIPELINE / "data" / "personas" / f"{name}.yaml").read_text())
    tilda = folder / "tilda.yaml"
    # Line 2 of the Dhaka session is Ahsan's turn, not Tilda's.
    text = tilda.read_text().replace("source: [transcript_2020_dhaka_session.txt:33]",
                                     "source: [transcript_2020_dhaka_session.txt:2]", 1)
    assert text != tilda.read_text()
    tilda.write_text(text)
    rc = main(["data", "--config", str(CONFIG), f"generate.personas_dir={folder}",
               f"generate.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc != 0 and "tilda.yaml" in err and "transcript_2020_dhaka_session.txt:2 is not inside a turn of Tilda" in err
    assert not (tmp_path / "out").exists()


@needs_shared
def test_default_data_counts_sourced_facts_and_origins(tmp_path, data_key):
    assert main(["data", "--config", str(CONFIG), f"generate.output_dir={tmp_path / 'out'}",
                 f"data.train={tmp_path / 'out' / 'train.jsonl.enc'}", f"data.eval={tmp_path / 'out' / 'eval.jsonl.enc'}"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    personas = load_personas(load_config(CONFIG))
    for name, p in personas.items():
        f = stats["facts"][name]
        assert f["sourced"] == sum(bool(x.source) for x in p.facts) > 0 and f["unchecked_refs"] == 0
        assert f["invented"] == sum(not x.source for x in p.facts)
    origin = stats["origin"]
    assert sum(origin["train"].values()) == stats["records"]["train"]
    assert set(origin["train"]) == {"quote", "quote_derived", "invented"} and origin["train"]["quote_derived"] > 0
