"""Kill -9 mid-run then resume == uninterrupted run; Ctrl-C saves a checkpoint and exits 130.

Tolerance: on CPU with one thread the resumed run is expected to be bit-identical (same
data order from the seeded per-epoch sampler, RNG states restored from the checkpoint);
the test allows 1e-5 on adapter weights and losses to absorb harmless float noise.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from persona_pipeline.core.config import dump_config
from persona_pipeline.core.runs import RunDir
from persona_pipeline.stages.train import complete_checkpoints, train

pytestmark = pytest.mark.slow
TOL = 1e-5
SETTINGS = ("train.epochs=2", "train.batch_size=4", "train.save_steps=3", "train.logging_steps=1",
            "train.num_threads=1", "train.save_total_limit=3")


def _config_file(cfg, path):
    path.write_text(dump_config(cfg, redact=False))
    return path


def _spawn(config, *extra):
    env = {**os.environ, "PERSONA_RUN_NAME": "resumed", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "persona_pipeline", "train", "--config", str(config), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_checkpoint(run_dir, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if complete_checkpoints(RunDir(run_dir)):
            return
        if proc.poll() is not None:
            pytest.fail("training ended before its first checkpoint:\n" + proc.stdout.read()[-3000:])
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


def _tokens_per_step(run) -> list[int]:
    """Tokens each optimizer step consumed, from the last checkpoint's log history (logging_steps=1)."""
    state = json.loads((complete_checkpoints(RunDir(run))[-1] / "trainer_state.json").read_text())
    seen = [0] + [e["num_input_tokens_seen"] for e in state["log_history"] if "loss" in e]
    return [b - a for a, b in zip(seen, seen[1:], strict=False)]  # consecutive pairs: one fewer


def _adapter(run):
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_sigkill_then_resume_matches_an_uninterrupted_run(make_cfg, write_dataset, tmp_path):
    import torch

    cfg = make_cfg("train_tiny.yaml", *SETTINGS)
    write_dataset(cfg, n_train=40, n_eval=8)  # 10 steps per epoch, 20 in all
    threads = torch.get_num_threads()
    try:
        reference = train(cfg).path
    finally:
        torch.set_num_threads(threads)
    ref_summary = json.loads((reference / "train_summary.json").read_text())
    # The two epochs saw the data in different orders (a sampler that ignored set_epoch repeats epoch 1).
    ref_steps = _tokens_per_step(reference)
    assert len(ref_steps) == 20 and ref_steps[:10] != ref_steps[10:]

    config = _config_file(cfg, tmp_path / "resume.yaml")
    run_dir = cfg.runs_dir / "resumed"
    proc = _spawn(config)
    _wait_for_checkpoint(run_dir, proc)
    # A second `make train RESUME=latest` while this one trains (paused here, so it surely still is):
    # refused at once, none of the first run's checkpoints removed.
    os.kill(proc.pid, signal.SIGSTOP)
    joiner = None
    try:
        before = {p.name for p in complete_checkpoints(RunDir(run_dir))}
        joiner = _spawn(config, "--resume", "latest")
        out, _ = joiner.communicate(timeout=120)
        assert joiner.returncode == 1 and f"run resumed is being trained by process {proc.pid}" in out, out[-2000:]
        assert {p.name for p in complete_checkpoints(RunDir(run_dir))} == before
    finally:
        for p in (joiner, proc):  # the kill -9 this test is about; also what is left if an assert failed
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = complete_checkpoints(RunDir(run_dir))[-1].name
    assert not (run_dir / "adapter").exists(), "the run finished before it was killed"

    proc = _spawn(config, "--resume", "latest")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming resumed from {killed_at}" in (run_dir / "train.log").read_text()

    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["resumed_from"] == killed_at and summary["global_step"] == ref_summary["global_step"]
    assert abs(summary["final_train_loss"] - ref_summary["final_train_loss"]) <= TOL
    assert abs(summary["final_eval_loss"] - ref_summary["final_eval_loss"]) <= TOL
    assert summary["tokens_seen"] == ref_summary["tokens_seen"]
    assert _tokens_per_step(run_dir) == ref_steps  # the same batches, step by step, across the kill
    a, b = _adapter(reference), _adapter(run_dir)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"resume vs uninterrupted: max adapter diff {diff}, train loss diff "
          f"{abs(summary['final_train_loss'] - ref_summary['final_train_loss'])}, killed at {killed_at}")
    assert diff <= TOL, f"adapter weights differ by {diff}"


def test_ctrl_c_saves_a_checkpoint_and_exits_130(make_cfg, write_dataset, tmp_path):
    cfg = make_cfg("train_tiny.yaml", *SETTINGS, "train.epochs=50")
    write_dataset(cfg, n_train=40, n_eval=8)
    proc = _spawn(_config_file(cfg, tmp_path / "sigint.yaml"))
    run_dir = cfg.runs_dir / "resumed"
    _wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "training interrupted at step" in out and "RESUME=resumed" in out
    step = int(re.search(r"interrupted at step (\d+)", out).group(1))
    # The checkpoint is written at the step where the signal was seen, whatever save_steps says.
    assert complete_checkpoints(RunDir(run_dir))[-1].name == f"checkpoint-{step}"
    assert not (run_dir / "adapter").exists()
    assert (cfg.runs_dir / "latest").resolve() == run_dir.resolve()


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    """Run folders are claimed with mkdir: eight trainings starting at once get eight folders."""
    from concurrent.futures import ThreadPoolExecutor

    from persona_pipeline.core.runs import new_run_dir

    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: new_run_dir(tmp_path / "runs", "20260101-120000"), range(8)))
    assert sorted(p.name for p in runs) == ["20260101-120000"] + [f"20260101-120000-{n}" for n in range(2, 9)]


def test_disk_full_during_a_checkpoint_save(make_cfg, write_dataset, tmp_path):
    """No file may grow past 800 kB: the tiny adapter fits, the optimizer state does not."""
    cfg = make_cfg("train_tiny.yaml", *SETTINGS, "train.report_to=[]")
    write_dataset(cfg, n_train=40, n_eval=8)
    limited = ("import resource, sys\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (800_000, 800_000))\n"
               "from persona_pipeline.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PERSONA_RUN_NAME": "full", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", limited, "train", "--config", str(_config_file(cfg, tmp_path / "c.yaml"))],
                          env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert "saving checkpoint" in err and "checkpoint-3 failed" in err and "make train RESUME=full" in err
    run = cfg.runs_dir / "full"
    assert not (run / "checkpoints" / "checkpoint-3").exists() and not (run / "adapter").exists()
    assert (run / "config.yaml").is_file()
