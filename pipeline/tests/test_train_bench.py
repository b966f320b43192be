"""bench-train on the fixture model: JSON layout, equal loss curves, less padding than the reference."""

from __future__ import annotations

import json

import pytest

from persona_pipeline.stages.bench_train import VARIANTS, bench, bench_path, pick_batches


def test_pick_batches_spreads_over_the_epoch():
    lengths = list(range(10, 74))
    batches = pick_batches(lengths, 4, 5, seed=0)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    assert len({i for b in batches for i in b}) == 20  # distinct batches, not the first five only


@pytest.mark.slow
def test_bench_train_writes_comparable_figures(make_cfg, write_dataset):
    cfg = make_cfg("train_tiny.yaml", "train.batch_size=4", "data.max_length=256", "train.num_threads=1")
    write_dataset(cfg, n_train=24, n_eval=4)
    res = bench(cfg, steps=2, repeats=1, memory=True)
    assert json.loads(bench_path(cfg).read_text()) == res
    s, v = res["summary"], res["variants"]
    assert set(v) == set(VARIANTS) and "reference" in res and res["command"].startswith("make bench-train")
    # Same samples per step: the same real tokens, far fewer computed ones, the same loss per token.
    assert v["group_by_length"]["real_tokens_per_step"] == v["pad_to_max"]["real_tokens_per_step"]
    assert v["pad_to_max"]["computed_tokens_per_step"] == 4 * 256
    assert v["packed"]["padding_fraction"] == 0 and v["pad_to_max"]["padding_fraction"] > 0.5
    assert s["loss_curve_max_abs_diff_group_by_length"] < 1e-3 and s["loss_curve_max_abs_diff_packed"] < 1e-3
    assert s["throughput_ratio_group_by_length"] > 1.0
    mem = {k: v[k]["peak_memory_mib"] for k in VARIANTS}
    assert all(m is not None and m > 0 for m in mem.values()), mem
    assert mem["group_by_length"] < mem["pad_to_max"]
