"""Stage ``ollama-create``: register the run's GGUF with Ollama, one model per persona, through the
Modelfiles of :mod:`persona_pipeline.export.modelfile` (rewritten first, so they match the config)."""

from __future__ import annotations

import shutil
import subprocess

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.runs import RunDir
from persona_pipeline.export.modelfile import model_name, write_modelfiles


def run(cfg: Config, *, run: str = "latest") -> int:
    run_dir = RunDir.resolve(cfg.runs_dir, run)
    quant = cfg.gguf.quant.upper()
    gguf_file = run_dir.gguf_file(cfg.name, quant)
    if not gguf_file.is_file():
        raise PipelineError(f"no GGUF for QUANT={quant} in run {run_dir.name}", hint=f"run `make gguf QUANT={quant}` first")
    exe = shutil.which("ollama")
    if exe is None:
        raise PipelineError(
            "ollama is not installed (not found on PATH)",
            hint="install it from ollama.com, start `ollama serve`, then re-run `make ollama-create`; "
            f"or use the Modelfiles in {gguf_file.parent} by hand",
        )
    for path in write_modelfiles(cfg, gguf_file):
        if path.name == "Modelfile":
            continue
        persona = path.name.split(".", 1)[1]
        name = model_name(cfg, persona)
        print(f"ollama create {name} -f {path}")
        proc = subprocess.run([exe, "create", name, "-f", str(path)], cwd=gguf_file.parent)
        if proc.returncode != 0:
            raise PipelineError(
                f"`ollama create {name}` failed (exit {proc.returncode})",
                hint="is the Ollama server running? start it with `ollama serve`",
            )
        print(f"  ready: ollama run {name}")
    return 0
