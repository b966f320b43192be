"""Transcript ingestion: our own samples, the real shared transcripts, and bad transcripts."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from persona_pipeline.cli import main
from persona_pipeline.core.config import load_config
from persona_pipeline.core.errors import DataError
from persona_pipeline.data.personas import load_personas
from persona_pipeline.data.speaker_maps import load_speaker_map
from persona_pipeline.data.transcripts import ingest_transcript
from persona_pipeline.data.turns import is_filler, parse_transcript

PIPELINE = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MAPS = PIPELINE / "data" / "transcripts" / "maps"
needs_shared = pytest.mark.skipif(
    not (SHARED / "transcript_2020_dhaka_session.txt").is_file(),
    reason=f"the shared real transcripts are not at {SHARED} (CI clones the repo beside shared/)",
)


@pytest.fixture(scope="module")
def personas():
    return load_personas(load_config(PIPELINE / "configs" / "train_tiny.yaml"))


def ingest(path: Path, map_name: str, personas):
    return ingest_transcript(path, load_speaker_map(MAPS / f"{map_name}.yaml", personas))


def _flat(text: str) -> str:
    """Transcript text as ingestion sees it, for substring checks (quotes straightened, spaces collapsed)."""
    from persona_pipeline.data.turns import clean_text

    return " ".join(clean_text(line) for line in text.splitlines())  # per line: a "[" never pairs with a later line's "]"


# --------------------------------------------------------------------------- our own transcripts


def test_own_transcripts_pair_questions_with_persona_answers(personas):
    pairs, stats = ingest(PIPELINE / "data/transcripts/festival_panel_2019.txt", "festival_panel_2019", personas)
    # Every persona turn is a sample; the 2 Ahsan turns that answer no question get derived questions.
    assert stats.samples == stats.used_turns == stats.persona_turns == {"Tilda": 7, "Ahsan": 9}
    assert stats.derived_questions == 2 and sum(p.derived for p in pairs) == 2
    by_q = {p.question: p for p in pairs}
    # A label alone on its line ("Ahsan Akbar <TAB>") with the speech on the next TAB line,
    # and the same speaker's later line merged in after a dropped filler ("Mm.").
    board = next(p for p in pairs if "How does a poet from Dhaka end up on the board" in p.question)
    assert board.persona == "Ahsan" and board.answer.startswith("By being too curious, mostly.")
    assert board.answer.endswith("far less poetic than that lesson.")
    # A TAB continuation line and an editorial note in the middle of a turn.
    look = next(p for p in pairs if p.answer.startswith("You look."))
    assert "the boat has to float" in look.answer and "Tilda on evidence and trust" not in look.answer
    # "Question" alone on a line, then the audience member's labelled turn.
    assert any(q.startswith("I am a mother of two in Uttara") for q in by_q)
    for p in pairs:  # no timestamps, fillers or stage directions leak into samples
        assert not re.search(r"\d{2}:\d{2}:\d{2}", p.question + p.answer)
        assert "Audience laughs" not in p.answer and not is_filler(p.answer)
    assert stats.fillers >= 2 and stats.timestamps >= 5 and stats.notes >= 3


def test_own_tea_garden_walk_maps_answer_and_male_to_anis(personas):
    pairs, stats = ingest(PIPELINE / "data/transcripts/tea_garden_walk_2018.txt", "tea_garden_walk_2018", personas)
    assert set(stats.samples) == {"Anis"} and stats.samples["Anis"] >= 10
    bushes = next(p for p in pairs if p.question.startswith("And the bushes themselves"))
    assert bushes.answer.startswith("The oldest sections are more than twenty years old")  # "Male <TAB>" turn
    assert all("Tea picker talking" not in p.answer for p in pairs)


# --------------------------------------------------------------------------- the shared real transcripts


@needs_shared
def test_shared_transcripts_yield_real_turns_of_the_named_persona(personas):
    """Acceptance: extracted answers are real turns of the persona the speaker map names."""
    expected_labels = {"Tilda": {"tilda"}, "Ahsan": {"ahsan", "ahsan akbar"}, "Anis": {"answer", "male"}}
    found = {}
    for name in ("transcript_2020_dhaka_session", "transcript_2020_tea_garden"):
        raw = (SHARED / f"{name}.txt").read_text(encoding="utf-8")
        flat, lines = _flat(raw), raw.splitlines()
        pairs, _ = ingest(SHARED / f"{name}.txt", name, personas)
        assert pairs
        for p in pairs:
            # The answer is the persona's own speech, verbatim (up to whitespace and quote style)...
            # (a turn's first piece starts at its label; an editorial heading inside a turn is dropped,
            # so a piece is checked at its start only when it starts the turn, and by its last 3 words)
            assert p.piece > 0 or p.answer[:60] in flat
            assert " ".join(p.answer.split()[-3:]) in flat
            # ...and the line it starts on carries a label the map gives to that persona.
            line = lines[int(p.source.rsplit(":", 1)[1]) - 1]
            assert line.split("\t")[0].strip().casefold() in expected_labels[p.persona], (p.source, line[:40])
            found.setdefault(p.persona, []).append(p.answer)
    assert set(found) >= {"Tilda", "Anis"}
    tilda, anis = " ".join(found["Tilda"]), " ".join(found["Anis"])
    assert "the relationship to time is really key" in tilda
    assert "We would like in our very embryonic way" in tilda
    assert "They are herbal trees" in anis
    assert "it is on a loan which is paid back" in anis
    # Tilda interviews Anis as "Question"/"Female": those turns are questions, never Anis's answers.
    assert all(not a.startswith("So it feels as if we are in an oasis") for a in found["Anis"])


@needs_shared
def test_transcript_without_personas_gives_zero_pairs_not_an_error(personas):
    pairs, stats = ingest(SHARED / "transcript_sample.txt", "transcript_sample", personas)
    assert pairs == [] and stats.usable_turns > 0 and stats.skipped_speakers["Answer"] > 10


@needs_shared
def test_machine_cut_header_format(personas):
    smap = load_speaker_map(MAPS / "transcript_machine_cut_sample.yaml", personas)
    turns, stats = parse_transcript(SHARED / "transcript_machine_cut_sample.txt", smap)
    tilda = [t for t in turns if t.role == "Tilda"]
    assert tilda and all("LET'S START AGAIN" not in t.text for t in tilda)  # on-screen text is nobody's speech
    assert {t.role for t in turns} >= {"Tilda", "Anis", "skip"}
    pairs, stats = ingest(SHARED / "transcript_machine_cut_sample.txt", "transcript_machine_cut_sample", personas)
    # Narration: nobody asked a question, yet every narrated turn becomes samples with derived questions.
    assert stats.persona_turns == stats.used_turns == {"Tilda": 2, "Anis": 1}
    assert pairs and all(p.derived for p in pairs) and stats.derived_questions == len(pairs)


@needs_shared
def test_unmapped_speaker_is_warned_skipped_and_counted(tmp_path, personas, caplog):
    smap = tmp_path / "map.yaml"
    smap.write_text("sections:\n  - format: tab\n    speakers: {Tilda: Tilda, Ahsan: Ahsan, Female: human}\n")
    with caplog.at_level(logging.WARNING):
        pairs, stats = ingest_transcript(SHARED / "transcript_2020_dhaka_session.txt", load_speaker_map(smap, personas))
    assert stats.unmapped_speakers.get("Male", 0) >= 2
    assert "'Male' is not in map.yaml" in caplog.text
    assert pairs and all(p.persona in ("Tilda", "Ahsan") for p in pairs)


@needs_shared
def test_unmapped_speaker_is_counted_in_the_data_report(tmp_path, data_key, capsys):
    import json

    smap = tmp_path / "map.yaml"
    smap.write_text("sections:\n  - format: tab\n    speakers: {Tilda: Tilda, Ahsan: Ahsan, Female: human}\n")
    args = _cfg_args(tmp_path, SHARED / "transcript_2020_dhaka_session.txt", smap)
    assert main(["data", *args, "generate.hypothetical_per_persona=6", "generate.contrastive_per_persona=3"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    # Counts only: the labels come from a private transcript (generate.stats_speaker_labels=true adds them).
    assert stats["transcripts"][0]["unmapped_speakers"]["turns"] >= 2
    assert "unmapped / skipped" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad transcripts


def _cfg_args(tmp_path: Path, transcript: Path, smap: Path) -> list[str]:
    return [
        "--config", str(PIPELINE / "configs" / "train_tiny.yaml"),
        f'generate.transcripts=[{{path: "{transcript}", speaker_map: "{smap}"}}]',
        f"generate.output_dir={tmp_path / 'out'}",
        f"data.train={tmp_path / 'out' / 'train.jsonl.enc'}",
        f"data.eval={tmp_path / 'out' / 'eval.jsonl.enc'}",
        f"paths.outputs={tmp_path / 'outputs'}",
    ]


def _tab_map(tmp_path: Path) -> Path:
    smap = tmp_path / "map.yaml"
    smap.write_text("sections:\n  - format: tab\n    speakers: {Tilda: Tilda, Question: human}\n")
    return smap


@pytest.mark.parametrize(
    "content, message",
    [
        (b"00:01:02\nA HEADING\n(Start: 00:05)\n\n01:02:03\n", "no usable turns"),
        (b"Lynn\tHello there, this is not a persona.\nQuestion\n", "no usable turns"),
        (b"", "the transcript is empty"),
        (b"   \n\n", "the transcript is empty"),
        (b"Question\tWhat is it?\nTilda\tIt is caf\xe9 society.\n", ":2: not valid UTF-8"),
    ],
)
def test_bad_transcript_fails_cleanly_without_output(tmp_path, data_key, capsys, content, message):
    transcript = tmp_path / "bad.txt"
    transcript.write_bytes(content)
    rc = main(["data", *_cfg_args(tmp_path, transcript, _tab_map(tmp_path))])
    err = capsys.readouterr().err
    assert rc != 0
    assert message in err and "bad.txt" in err
    assert not (tmp_path / "out").exists()


def test_missing_transcript_is_a_warning_and_counted(tmp_path, personas):
    cfg = load_config(
        PIPELINE / "configs" / "train_tiny.yaml",
        [f'generate.transcripts=[{{path: "{tmp_path / "absent.txt"}", speaker_map: "{_tab_map(tmp_path)}"}}]'],
    )
    from persona_pipeline.data.transcripts import ingest_all

    pairs, stats = ingest_all(cfg, personas)
    assert pairs == [] and [s.status for s in stats] == ["missing"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("sections:\n  - format: tab\n    speakers: {Tilda: Tlida}\n", "did you mean 'Tilda'?"),
        ("sections:\n  - format: tab\n    speakerz: {Tilda: Tilda}\n", "did you mean 'speakers'?"),
        ("sections:\n  - format: tabs\n", "expected one of tab, colon, header"),
        ("sections:\n  - format: tab\n  - format: colon\n", "needs the heading line"),
    ],
)
def test_bad_speaker_map(tmp_path, personas, text, message):
    smap = tmp_path / "map.yaml"
    smap.write_text(text)
    with pytest.raises(DataError) as exc:
        load_speaker_map(smap, personas)
    assert message in str(exc.value) and "map.yaml" in str(exc.value)


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda b: b.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda b: b.replace(b"\n", b"\r"), id="cr"),
        pytest.param(lambda b: b"\xef\xbb\xbf" + b, id="utf8-bom"),
    ],
)
def test_windows_line_endings_and_bom_give_the_same_pairs(tmp_path, personas, encode):
    src = PIPELINE / "data" / "transcripts" / "festival_panel_2019.txt"
    smap = load_speaker_map(MAPS / "festival_panel_2019.yaml", personas)
    copy = tmp_path / src.name
    copy.write_bytes(encode(src.read_bytes()))
    want, _ = ingest_transcript(src, smap)
    got, _ = ingest_transcript(copy, smap)
    assert want and [(p.question, p.answer, p.source) for p in got] == [(p.question, p.answer, p.source) for p in want]


def test_utf16_transcript_is_named_as_such(tmp_path, data_key, capsys):
    transcript = tmp_path / "bad.txt"
    transcript.write_bytes("Question\tWhat is it?\nTilda\tIt is a school without exams.\n".encode("utf-16"))
    rc = main(["data", *_cfg_args(tmp_path, transcript, _tab_map(tmp_path))])
    err = capsys.readouterr().err
    assert rc == 1 and "bad.txt:1: UTF-16 text" in err and "re-save the transcript as UTF-8" in err
    assert not (tmp_path / "out").exists()
