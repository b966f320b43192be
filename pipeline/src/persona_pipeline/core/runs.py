"""Run folders: ``outputs/runs/<timestamp>/`` and the ``latest`` link that points at the newest one."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
from pathlib import Path
from typing import Iterator

from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_symlink

LATEST = "latest"
# Held (flock) by the process that trains into a run; the kernel drops it when that process dies.
LOCK_FILE = ".train.lock"


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
