"""Run folders: ``outputs/runs/<timestamp>/`` and the ``latest`` link that points at the newest one."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_symlink

LATEST = "latest"


def new_run_dir(runs_dir: Path, name: str | None = None) -> Path:
    """Create a fresh, uniquely named run folder (not yet linked as ``latest``)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run, n = runs_dir / stamp, 1
    while run.exists():
        n += 1
        run = runs_dir / f"{stamp}-{n}"
    run.mkdir()
    return run


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
