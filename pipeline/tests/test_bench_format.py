"""make bench-format: plain prompt vs chat template, side by side on the same records."""

from __future__ import annotations

import json

from persona_pipeline.stages.bench_format import bench_path, benchmark


def test_formats_side_by_side_and_equal_when_the_template_is_the_plain_format(make_cfg, write_dataset):
    """The tiny model's chat template renders the plain format, so both columns must come out identical."""
    cfg = make_cfg("train_tiny.yaml", "eval.max_new_tokens=8")
    write_dataset(cfg, n_train=12, n_eval=9)
    report = benchmark(cfg, samples=6)
    assert json.loads(bench_path(cfg).read_text()) == report
    plain, chat = report["results"]["plain"], report["results"]["chat_template"]
    assert report["samples"] == 6 and plain["answer_loss"] > 0
    for key in ("answer_loss", "rougeL", "words_mean", "runaway_rate", "eos_rate"):
        assert abs(plain[key] - chat[key]) < 1e-6, key
    assert plain["example"] == chat["example"]
