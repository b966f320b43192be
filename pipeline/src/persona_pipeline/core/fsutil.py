"""Atomic file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from persona_pipeline.core.errors import PipelineError

# Write errors that mean "no room": a full disk, a quota, or a file-size limit.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    return atomic_write_many({Path(path): data}, mode)[0]


def atomic_write_many(files: dict[Path, bytes], mode: int | None = None) -> list[Path]:
    """Write every file under a temporary name first; rename them into place only when all are
    complete, so a full disk or a crash leaves the previous set, never a mix of old and new."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_orphans(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            # mkstemp creates 0600; ordinary outputs get the usual umask-based mode, secrets pass one.
            os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
    except BaseException as exc:
        for tmp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise PipelineError(
                f"{temps[-1][1] if temps else next(iter(files))}: {exc.strerror}; nothing was replaced",
                hint="free disk space (df -h) and run the step again",
            ) from None
        raise
    for tmp, path in temps:
        os.replace(tmp, path)
    return [path for _, path in temps]


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of ``path`` left by a process that was killed mid-write (its pid is in the name)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_bytes(obj: Any) -> bytes:
    """The layout of every JSON report: indented, UTF-8, newline at the end."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_bytes(path, json_bytes(obj))


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    # mkdtemp creates 0700; the finished folder gets the mode the user's umask gives any new folder.
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def atomic_symlink(link: Path, target: str | Path) -> None:
    """Point ``link`` at ``target`` atomically (rename over the old link)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
