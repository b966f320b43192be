"""`make validate-data` on good and bad datasets: clear messages, non-zero exit, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_pipeline.cli import main
from persona_pipeline.core.prompt_format import format_completion, format_prompt

PIPELINE = Path(__file__).resolve().parents[1]
CONFIG = PIPELINE / "configs" / "train_tiny.yaml"
SYSTEM = "an actress who co-founded Drumduan"


def rec(q: str, a: str, name: str = "Tilda", **meta) -> dict:
    return {"prompt": format_prompt(name, SYSTEM, q), "completion": format_completion(a),
            "meta": {"persona": name, "kind": "hypothetical", "turns": 1, **meta}}


def good_sets() -> tuple[list[dict], list[dict]]:
    train = [rec(f"Question number {i} about the school garden and its {w}?", f"Answer {i}: the {w} grows slowly.", group=f"t{i}")
             for i, w in enumerate(["roses", "beans", "apples", "willows", "onions", "ferns"])]
    evals = [rec("What do you think about the sea in winter?", "It is grey and wild and wonderful.", group="e1")]
    return train, evals


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_validate(tmp_path: Path, train: Path, evals: Path) -> int:
    return main(["validate-data", "--config", str(CONFIG), f"data.train={train}", f"data.eval={evals}",
                 f"paths.outputs={tmp_path / 'outputs'}", f"model.name_or_path={tmp_path / 'no-model'}"])


def test_clean_plaintext_sets_pass(tmp_path, capsys):
    train, evals = good_sets()
    rc = run_validate(tmp_path, write_jsonl(tmp_path / "t.jsonl", train), write_jsonl(tmp_path / "e.jsonl", evals))
    out = capsys.readouterr().out
    assert rc == 0 and "validate-data: OK" in out and "estimated" in out
    report = json.loads((tmp_path / "outputs" / "data_validation.json").read_text())
    assert report["splits"]["train"]["records"] == 6 and report["leakage"]["eval_samples_leaked"] == 0


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"prompt": "a", "completion": " b"}\n{"prompt": "a", "completion": \n', "e.jsonl:2: malformed JSON"),
        (b'{"prompt": "You are Tilda, x.\\n\\nHuman: q\\n\\nTilda:"}\n', "e.jsonl:1: missing 'completion'"),
        (b'{"completion": " b"}\n', "e.jsonl:1: missing 'prompt'"),
        ('{"prompt": "caf\u00e9", "completion": " b"}\n'.encode("latin-1"), "e.jsonl:1: not valid UTF-8"),
        (b"", "e.jsonl: no records (the file is empty)"),
    ],
)
def test_bad_dataset_file(tmp_path, capsys, content, message):
    train, _ = good_sets()
    bad = tmp_path / "e.jsonl"
    bad.write_bytes(content)
    rc = run_validate(tmp_path, write_jsonl(tmp_path / "t.jsonl", train), bad)
    assert rc != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()  # no half-written report


def test_leakage_fails_and_names_the_lines(tmp_path, capsys):
    train, evals = good_sets()
    evals.append(rec("Question number 2 about the school garden and its apples?", "Something new entirely.", group="e2"))
    evals.append(rec("A fresh question?", "A fresh answer.", group="t4"))  # shares a group id with train
    rc = run_validate(tmp_path, write_jsonl(tmp_path / "t.jsonl", train), write_jsonl(tmp_path / "e.jsonl", evals))
    out = capsys.readouterr().out
    assert rc == 1 and "leakage: 2 eval sample(s)" in out and "validate-data: FAILED" in out
    report = json.loads((tmp_path / "outputs" / "data_validation.json").read_text())
    assert {(e["eval_line"], e["train_line"], e["field"]) for e in report["leakage"]["examples"]} == {
        (2, 3, "question"), (3, 5, "group")}
    assert "apples" not in json.dumps(report)  # the report holds no sample text


QUOTE = ("Years later I still think of it, and of how the children planted every willow along the river "
         "by hand while the rest of us argued about budgets, timetables and whether the soil would hold.")


def run_with_one_quote(tmp_path: Path, n_fresh: int) -> tuple[int, dict]:
    """Validate ``n_fresh`` new eval answers plus one that quotes 10 words of a train answer inside new text."""
    train, _ = good_sets()
    train.append(rec("Why the garden?", "The children planted every willow along the river by hand.", group="t9"))
    evals = [rec(f"Fresh question {i} about the sea?", f"The sea number {i} is grey and wild today.", group=f"e{i}")
             for i in range(n_fresh)] + [rec("What do you remember?", QUOTE, group="e99")]
    rc = run_validate(tmp_path, write_jsonl(tmp_path / "t.jsonl", train), write_jsonl(tmp_path / "e.jsonl", evals))
    return rc, json.loads((tmp_path / "outputs" / "data_validation.json").read_text())


def test_a_quote_inside_a_longer_answer_counts_as_containment(tmp_path, capsys):
    rc, report = run_with_one_quote(tmp_path, 20)
    out = capsys.readouterr().out
    # Jaccard cannot see this quote (the eval answer is mostly new words); an 8-word run can.
    assert report["leakage"]["eval_samples_leaked"] == 0
    c = report["containment"]
    assert c["eval_answers_sharing_run"] == 1 and c["examples"] == [{"eval_line": 21, "train_line": 7, "share": 0.107}]
    # 3 of the quote's 28 runs of 8 words are in the train answer.
    assert c["max_share_of_runs"] == pytest.approx(3 / 28) and c["share_of_eval_answers"] == pytest.approx(1 / 21)
    assert rc == 1 and "containment: 1 of 21 eval answers (4.8%) share a run of 8 words" in out
    assert "validate-data: FAILED" in out and "willow" not in json.dumps(report)


def test_containment_up_to_two_percent_passes(tmp_path, capsys):
    rc, report = run_with_one_quote(tmp_path, 49)
    assert report["containment"]["eval_answers_sharing_run"] == 1 and report["containment"]["share_of_eval_answers"] == 0.02
    assert rc == 0 and "validate-data: OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"prompt": "You are Tilda, x.\n\nHuman: q\n\nTilda:", "completion": "   "}, "'completion' is empty or whitespace"),
        ({"prompt": "You are Tilda, x.\n\nHuman: q\n\nAnis:", "completion": " a"}, "must end with a blank line and '<Name>:'"),
        ({"prompt": "Human: q\n\nTilda:", "completion": " a"}, "must start with 'You are <Name>"),
        ({"prompt": "You are Tilda, x.\n\nHuman: q\n\nTilda:", "completion": " a", "meta": {"persona": "Anis"}},
         "meta.persona does not match the persona named in the prompt"),
        ({"prompt": "You are Tilda, x.\n\nHuman: q\n\nTilda:", "completion": " a", "meta": {"kind": "invented"}},
         "meta.kind is not one of"),
        ({"prompt": "You are Zed, x.\n\nHuman: q\n\nZed:", "completion": " a"}, "has no persona file (known: Ahsan, Anis, Tilda)"),
    ],
)
def test_schema_errors_fail_with_file_and_line(tmp_path, capsys, record, problem):
    train, evals = good_sets()
    rc = run_validate(tmp_path, write_jsonl(tmp_path / "t.jsonl", train), write_jsonl(tmp_path / "e.jsonl", evals + [record]))
    out = capsys.readouterr().out
    assert rc == 1 and "e.jsonl:2:" in out and problem in out


def test_over_long_samples_are_counted(tmp_path, capsys):
    train, evals = good_sets()
    train.append(rec("Long?", "word " * 600, group="long"))
    rc = run_validate(tmp_path, write_jsonl(tmp_path / "t.jsonl", train), write_jsonl(tmp_path / "e.jsonl", evals))
    assert rc == 0
    report = json.loads((tmp_path / "outputs" / "data_validation.json").read_text())
    assert report["splits"]["train"]["lengths"]["truncated"] == 1
    assert report["splits"]["train"]["lengths"]["truncated_lines"] == [7]


def test_token_lengths_use_the_model_tokenizer_when_it_loads_offline(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A whitespace word-level tokenizer: one token per word, so the expected count is exact.
    words = sorted({w for r in good_sets()[0] + good_sets()[1] for w in (r["prompt"] + r["completion"]).split()})
    tok = Tokenizer(models.WordLevel({w: i + 1 for i, w in enumerate(words)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "model")
    train, evals = good_sets()
    rc = main(["validate-data", "--config", str(CONFIG), f"data.train={write_jsonl(tmp_path / 't.jsonl', train)}",
               f"data.eval={write_jsonl(tmp_path / 'e.jsonl', evals)}", f"paths.outputs={tmp_path / 'outputs'}",
               f"model.name_or_path={tmp_path / 'model'}"])
    assert rc == 0 and "token counts: tokenizer of" in capsys.readouterr().out
    report = json.loads((tmp_path / "outputs" / "data_validation.json").read_text())
    longest = max(len((r["prompt"] + r["completion"]).split()) for r in evals)
    assert report["splits"]["eval"]["lengths"]["max"] == longest + 1  # + the end-of-sequence token
