"""Resident memory of this process (Linux ``/proc``): current RSS, peak RSS, and peak per phase.

torch's CPU allocations are invisible to tracemalloc, so memory is read where the
kernel counts it: ``VmRSS`` (now) and ``VmHWM`` (the high-water mark). Writing ``5`` to
``/proc/self/clear_refs`` resets the high-water mark to the current RSS, which lets a
caller measure the peak of one phase at a time. Elsewhere every reading is ``None``.
"""

from __future__ import annotations

import re
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def available() -> bool:
    return _STATUS.is_file() and _CLEAR_REFS.exists()


def read_mib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` / ... of this process in MiB, or None where /proc is missing."""
    if not _STATUS.is_file():
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    return int(m.group(1)) / 1024 if m else None


def reset_peak() -> None:
    """Make ``VmHWM`` equal the current RSS (the start of a measured phase)."""
    if _CLEAR_REFS.exists():
        _CLEAR_REFS.write_text("5")


class PhasePeaks:
    """Peak RSS per named phase: ``mark(name)`` closes the phase that just ran under ``name``."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self.enabled = available()

    def mark(self, phase: str) -> None:
        if not self.enabled:
            return
        peak = read_mib("VmHWM") or 0.0
        self.peaks[phase] = max(self.peaks.get(phase, 0.0), peak)
        reset_peak()

    def report(self) -> dict[str, float] | None:
        """MiB per phase plus ``overall`` (the largest), or None where /proc is missing."""
        if not self.enabled:
            return None
        out = {k: round(v, 1) for k, v in self.peaks.items()}
        out["overall"] = round(max(self.peaks.values(), default=0.0), 1)
        return out
