"""bench-summary: nested figures (paired ratios, targets) and the profile read as table rows."""

from __future__ import annotations

import json

import pytest

from persona_pipeline.core.errors import PipelineError
from persona_pipeline.stages.bench_summary import summarize


def test_nested_figures_and_profile_become_rows(tmp_path):
    (tmp_path / "bench_train_trl.json").write_text(json.dumps({
        "summary": {"project_vs_trl_best": {"throughput_ratio": {"median": 1.41, "min": 1.3, "max": 1.52},
                                            "peak_rss_growth_ratio": 0.8},
                    "target": {"throughput_met": True}},
        "command": "make bench-train-trl BENCH_ARGS='--steps 10'",
    }))
    (tmp_path / "profile_train.json").write_text(json.dumps({
        "name": "profile_train", "step_seconds_profiled": 2.5, "threads": 2,
        "phase_share_of_step": {"backward": 0.55},
        "top_operators_by_self_cpu": [{"op": "aten::mm", "share": 0.4, "calls": 10}],
    }))
    text = summarize(tmp_path)
    assert "| project_vs_trl_best.throughput_ratio | 1.41 [1.3-1.52] |" in text
    assert "| project_vs_trl_best.peak_rss_growth_ratio | 0.8 |" in text
    assert "| target.throughput_met | True |" in text
    assert "| phase_share_of_step.backward | 0.55 |" in text and "| top_operator_share.aten::mm | 0.4 |" in text
    assert "Reproduce: `make bench-train-trl BENCH_ARGS='--steps 10'`" in text


def test_no_results_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match="no benchmark results"):
        summarize(tmp_path)
