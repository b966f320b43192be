"""profile-train on the fixture model: the step's phases and operators are accounted for."""

from __future__ import annotations

import json

from persona_pipeline.stages.profile_train import profile


def test_profile_one_step(make_cfg, write_dataset):
    cfg = make_cfg("train_tiny.yaml", "train.batch_size=2", "train.gradient_accumulation_steps=2")
    write_dataset(cfg, n_train=12, n_eval=4)
    res = profile(cfg)
    assert json.loads((cfg.outputs_dir / "bench" / "profile_train.json").read_text()) == res
    assert res["micro_batches"] == 2 and res["samples"] == 4
    assert set(res["phase_share_of_step"]) == {"forward+loss", "backward", "optimizer"}
    assert 0.5 < sum(res["phase_share_of_step"].values()) <= 1.01
    ops = {o["op"] for o in res["top_operators_by_self_cpu"]}
    assert "aten::mm" in ops  # the matmuls are there, whatever their share on this machine
    assert "aten::mm" in (cfg.outputs_dir / "bench" / "profile_train.txt").read_text()
