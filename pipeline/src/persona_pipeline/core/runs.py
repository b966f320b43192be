"""Run folders: ``outputs/runs/<timestamp>/``, the ``latest`` link, and :class:`RunDir`, the one
place that names what a run folder holds::

    config.yaml          resolved config (secrets redacted)                  train
    train.log            what the console showed                             train
    logs/                TensorBoard events                                  train
    checkpoints/         checkpoint-N/ (adapter, optimizer, RNG, trainer state)  train
    base_eval.json       eval loss of the base model before the first step   train
    train_summary.json   losses per epoch, tokens, time, samples             train
    adapter/             the final LoRA adapter + tokenizer                  train
    .train.lock          locked (flock) while a process trains into the run  train
    merged/              adapter folded into the base model + merge_info.json  merge
    eval/                metrics.json, predictions.jsonl[.enc], report.md    eval
    eval_baseline/       the same for the un-tuned base model                eval-baseline
    compare/             comparison.md / .png / .json                        compare
    gguf/                <name>-<QUANT>.gguf, export-<QUANT>.json, check-<QUANT>.json, Modelfile*  gguf, gguf-check
    publish/             the staged upload folder                            publish-hf

A reader that needs one of these files uses :meth:`RunDir.require` or
:func:`read_json`: a missing or unreadable file is an error naming the stage
that writes it, never a silent default.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_symlink

LATEST = "latest"
# Held (flock) by the process that trains into a run; the kernel drops it when that process dies.
LOCK_FILE = ".train.lock"
BASELINES_DIR = "baselines"  # under outputs/: baseline evals made before any run exists
# Outside the run folders: what `make base-model` writes beside the tiny model, `make data` beside the datasets.
BUILD_INFO = "build_info.json"
DATA_STATS = "stats.json"


def bench_file(outputs_dir: Path, name: str) -> Path:
    """``outputs/bench/<name>``: benchmark results (bench_train.json, bench_eval.json, bench_gguf.json, summary.md)."""
    return outputs_dir / "bench" / name


@dataclass(frozen=True)
class EvalDir:
    """One eval folder (``run/eval``, ``run/eval_baseline`` or ``outputs/baselines/<config>``)."""

    path: Path

    PREDICTIONS = "predictions.jsonl"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def report(self) -> Path:
        return self.path / "report.md"

    def predictions_name(self, encrypted: bool) -> str:
        return self.PREDICTIONS + (".enc" if encrypted else "")

    def predictions(self) -> Path:
        """The predictions file that exists (``predictions.jsonl.enc`` or ``predictions.jsonl``)."""
        for encrypted in (True, False):
            path = self.path / self.predictions_name(encrypted)
            if path.is_file():
                return path
        raise PipelineError(f"no {self.PREDICTIONS}[.enc] in {self.path}", hint="run `make eval` (or `make eval-baseline`) again")


@dataclass(frozen=True)
class RunDir:
    """The files and folders of one run; ``path`` is the resolved run folder."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    # -- written by train
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.path / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def base_eval(self) -> Path:
        return self.path / "base_eval.json"

    @property
    def train_summary(self) -> Path:
        return self.path / "train_summary.json"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    # -- written by merge, eval, compare, gguf, gguf-check, publish-hf
    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def merge_info(self) -> Path:
        return self.merged / "merge_info.json"

    @property
    def eval(self) -> EvalDir:
        return EvalDir(self.path / "eval")

    @property
    def eval_baseline(self) -> EvalDir:
        return EvalDir(self.path / "eval_baseline")

    @property
    def compare(self) -> Path:
        return self.path / "compare"

    @property
    def comparison(self) -> Path:
        """``compare/comparison.json``: the paired changes with their intervals."""
        return self.compare / "comparison.json"

    @property
    def gguf(self) -> Path:
        return self.path / "gguf"

    def gguf_file(self, model_name: str, quant: str) -> Path:
        return self.gguf / f"{model_name}-{quant}.gguf"

    def gguf_export_info(self, quant: str) -> Path:
        return self.gguf / f"export-{quant}.json"

    def gguf_check(self, quant: str) -> Path:
        return self.gguf / f"check-{quant}.json"

    @property
    def publish(self) -> Path:
        return self.path / "publish"

    # -- checked access
    def require_adapter(self) -> Path:
        """``adapter/`` after checking it holds a saved LoRA adapter."""
        if not (self.adapter / "adapter_config.json").is_file():
            raise PipelineError(
                f"no LoRA adapter in run {self.path} ({self.adapter}/adapter_config.json is missing)",
                hint="the run did not finish training; pick another RUN=... or train one with `make train`",
            )
        return self.adapter

    def require_merged(self) -> Path:
        """``merged/`` after checking it holds a merged model."""
        if not (self.merged / "config.json").is_file():
            raise PipelineError(
                f"no merged model in run {self.path} ({self.merged}/config.json is missing)",
                hint=f"run `make merge RUN={self.name}` first",
            )
        return self.merged

    @classmethod
    def resolve(cls, runs_dir: Path, run: str | None) -> RunDir:
        """``latest``, a run name under ``runs_dir``, or a path to a run folder."""
        return cls(resolve_run(runs_dir, run))


def baseline_eval_dir(outputs_dir: Path, config_name: str, run: RunDir | None) -> EvalDir:
    """The baseline eval to read: ``run/eval_baseline`` when that run has one, else
    ``outputs/baselines/<config name>`` (a baseline evaluated before any run existed)."""
    if run is not None and run.eval_baseline.metrics.is_file():
        return run.eval_baseline
    return EvalDir(outputs_dir / BASELINES_DIR / config_name)


def read_json(path: Path, *, written_by: str) -> dict[str, Any]:
    """A JSON object that a stage wrote; missing or unreadable is an error saying which stage to run."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found", hint=f"it is written by `{written_by}`; run that first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})", hint=f"re-run `{written_by}`") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a JSON object, got {type(data).__name__}", hint=f"re-run `{written_by}`")
    return data


def new_run_dir(runs_dir: Path, name: str | None = None) -> Path:
    """Create a fresh, uniquely named run folder (not yet linked as ``latest``)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        run = runs_dir / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run.mkdir()  # the claim itself: of two trainings started in the same second, one gets -2
            return run
        except FileExistsError:
            n += 1


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's training lock; a second trainer of the same run fails at once instead of
    deleting or overwriting the first one's checkpoints."""
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 100).decode("ascii", "replace").strip() or "another process"
        os.close(fd)
        raise PipelineError(
            f"run {run_dir.name} is being trained by {holder} right now",
            hint="wait for it to finish (make logs), or start a new run without RESUME",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()}".encode("ascii"))
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def mark_latest(run_dir: Path) -> None:
    """Switch ``runs/latest`` to ``run_dir`` atomically (relative link, so the tree can move)."""
    atomic_symlink(run_dir.parent / LATEST, run_dir.name)


def resolve_run(runs_dir: Path, run: str | None) -> Path:
    """``latest``, a run name under ``runs_dir``, or a path to a run folder inside ``runs_dir``.

    Stages write into the run folder (merge, eval, gguf, ...), so a path that leads anywhere
    else, by name, ``..`` or a symbolic link, is refused rather than written into.
    """
    run = run or LATEST
    candidates = [Path(run)] if ("/" in run or Path(run).is_absolute()) else [runs_dir / run]
    for cand in candidates:
        if cand.is_dir():
            found, home = cand.resolve(), runs_dir.resolve()
            if home not in found.parents:
                raise PipelineError(
                    f"RUN={run} is {found}, which is not a run folder inside {home}",
                    hint="name a run in outputs/runs (e.g. RUN=latest or RUN=20260101-120000), or set paths.outputs",
                )
            return found
    existing = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name != LATEST) if runs_dir.is_dir() else []
    hint = "train one with `make train`" if not existing else "existing runs: " + ", ".join(existing[-5:])
    raise PipelineError(f"run not found: {run} (looked in {runs_dir})", hint=hint)
