"""Two training processes on CPU (gloo): disjoint data per rank, rank 0 alone writes the run folder.

Launched like `make train NPROC=2` (torchrun), through the test launcher ``trace_train.py``,
which records from outside the product code the sample indices each rank read and the
paths Python opened for writing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from persona_pipeline.core.config import dump_config

pytestmark = pytest.mark.slow


def test_two_processes_split_the_data_and_only_rank0_writes(make_cfg, write_dataset, tmp_path):
    cfg = make_cfg("train_tiny.yaml", "train.epochs=1", "train.batch_size=4", "train.save_steps=2",
                   "train.num_threads=1", "train.logging_steps=1")
    write_dataset(cfg, n_train=32, n_eval=8)
    config = tmp_path / "mp.yaml"
    config.write_text(dump_config(cfg, redact=False))
    trace = tmp_path / "trace"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("trace_train.py")), str(trace), "--config", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    runs = [p for p in cfg.runs_dir.iterdir() if p.name != "latest"]
    assert len(runs) == 1, f"expected one run folder, got {runs}"
    run = runs[0]
    assert (cfg.runs_dir / "latest").resolve() == run.resolve()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4  # 32 samples / (4 x 2 ranks)

    r0, r1 = (json.loads((trace / f"rank{r}.json").read_text()) for r in (0, 1))
    t0, t1 = ([i for size, i in r["reads"] if size == 32] for r in (r0, r1))  # train reads (eval has 8)
    s0, s1 = set(t0), set(t1)
    assert not s0 & s1, f"ranks saw the same samples: {sorted(s0 & s1)}"
    assert s0 | s1 == set(range(32)) and len(t0) == len(t1) == 16

    def under_run(paths):
        return {os.path.relpath(p, run) for p in paths if os.path.abspath(p).startswith(str(run.resolve()))
                or os.path.abspath(p).startswith(str(run))}

    rank1 = under_run(r1["writes"])
    # Rank 1 only creates checkpoint folders (for its RNG state file, needed to resume it).
    assert all(p.startswith("checkpoints/checkpoint-") and "/" not in p[len("checkpoints/"):] for p in rank1), rank1
    rank0 = under_run(r0["writes"])
    assert {"config.yaml", "train.log", "base_eval.json", "train_summary.json"} <= rank0
    for ckpt in (run / "checkpoints").iterdir():
        per_rank = sorted(p.name for p in ckpt.glob("rng_state*"))
        assert per_rank == ["rng_state_0.pth", "rng_state_1.pth"]
    log_lines = (run / "train.log").read_text().splitlines()
    assert sum("base model eval loss" in line for line in log_lines) == 1
    assert proc.stdout.count("run: ") == 1  # rank 0 prints the result
