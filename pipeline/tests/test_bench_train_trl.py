"""bench-train-trl on the fixture model: every variant sees the same tokens; figures are comparable."""

from __future__ import annotations

import json

import pytest

from persona_pipeline.core.errors import PipelineError
from persona_pipeline.stages.bench_train_trl import bench, bench_path, parse_variant


def test_variant_names_and_threads():
    assert parse_variant("project@2", 1) == ("project", 2)
    assert parse_variant("trl_best", None) == ("trl_best", None)
    with pytest.raises(PipelineError, match="unknown variant 'trl_fast'"):
        parse_variant("trl_fast", 1)


@pytest.mark.slow
def test_project_and_trl_train_on_the_same_tokens(make_cfg, write_dataset):
    pytest.importorskip("trl")
    cfg = make_cfg("train_tiny.yaml", "train.batch_size=4")
    write_dataset(cfg, n_train=24, n_eval=4)
    res = bench(cfg, steps=3, repeats=1, eval_samples=4, variants=("trl_padding_free", "project"))
    assert json.loads(bench_path(cfg).read_text()) == res
    v = res["variants"]
    runs = {k: x["runs"][0] for k, x in v.items()}
    assert runs["project"]["real_tokens"] == runs["trl_padding_free"]["real_tokens"] > 0  # same 12 samples
    assert v["trl_padding_free"]["padding_fraction"] == 0 and v["project"]["padding_fraction"] >= 0
    assert all(x["peak_rss_growth_mib"]["median"] > 0 and x["threads"] == 1 for x in v.values())
    # Same samples, same initial weights, same schedule: the models end up close, not identical
    # (TRL orders the samples its own way).
    s = res["summary"]["project_vs_trl_padding_free"]
    assert abs(s["eval_loss_relative_diff"]) < 0.05 and s["throughput_ratio"]["median"] > 0
