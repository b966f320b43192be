"""Optional packages installed on first need (pinned, into this interpreter's environment).

``PERSONA_PIPELINE_AUTO_INSTALL=0`` forbids installing on first need, whatever the config says.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

from persona_pipeline.core.errors import PipelineError


def auto_install_allowed(default: bool = True) -> bool:
    """``default``, unless PERSONA_PIPELINE_AUTO_INSTALL says no."""
    env = os.environ.get("PERSONA_PIPELINE_AUTO_INSTALL")
    return default if env is None else env.strip().lower() not in ("0", "no", "false")


def pip_install(requirement: str, why: str, *, no_deps: bool = False) -> None:
    """Install one pinned package, showing pip's progress. ``no_deps`` for wheels whose own dependencies we do not use."""
    print(f"installing {requirement} ({why}) ...", file=sys.stderr, flush=True)
    flags = ["--no-deps"] if no_deps else []
    cmd = [sys.executable, "-m", "pip", "install", *flags, requirement]
    if subprocess.run(cmd).returncode != 0:
        raise PipelineError(
            f"could not install {requirement}",
            hint=f"install it by hand: {sys.executable} -m pip install {' '.join(flags)} '{requirement}'".replace("  ", " "),
        )
    importlib.invalidate_caches()
