"""Stage ``gguf``: export a run's merged model to ``run/gguf/<name>-<QUANT>.gguf`` and write the
Ollama Modelfiles beside it (:mod:`persona_pipeline.export.gguf_convert`, :mod:`persona_pipeline.export.modelfile`).

A file newer than every file of ``merged/`` is reused unless ``--force``; ``export-<QUANT>.json``
records what was written (tensor types, fallbacks, size, seconds).
"""

from __future__ import annotations

import logging
from pathlib import Path

from persona_pipeline.core.config import Config
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.core.runs import RunDir
from persona_pipeline.export.gguf_convert import NUMPY_QUANTS, convert, export_kquant, normalize_quant
from persona_pipeline.export.modelfile import write_modelfiles

log = logging.getLogger(__name__)


def _up_to_date(out: Path, merged: Path) -> bool:
    if not out.is_file():
        return False
    newest = max(p.stat().st_mtime for p in merged.iterdir() if p.is_file())
    return out.stat().st_mtime >= newest


def export_gguf(cfg: Config, run: RunDir, quant: str | None = None, *, force: bool = False) -> Path:
    """Export ``run/merged`` to ``run/gguf/<name>-<QUANT>.gguf`` plus its Modelfile(s)."""
    quant = normalize_quant(quant or cfg.gguf.quant)
    merged = run.require_merged()
    out = run.gguf_file(cfg.name, quant)
    info_path = run.gguf_export_info(quant)
    if not force and _up_to_date(out, merged) and info_path.is_file():
        log.info("%s is up to date (FORCE=1 re-exports)", out)
        write_modelfiles(cfg, out)
        return out
    metadata = {"general.finetune": "persona", "general.base_model.0.name": cfg.model.name_or_path}
    if cfg.model.license_note:
        metadata["general.license.name"] = cfg.model.license_note
    if quant in NUMPY_QUANTS:
        info = convert(merged, out, quant, name=f"{cfg.name}-persona", metadata=metadata)
    else:
        info = export_kquant(f"{cfg.name}-persona", merged, out, quant, metadata)
    atomic_write_json(info_path, info)
    write_modelfiles(cfg, out)
    log.info("wrote %s (%.1f MB, %.1fs)", out, info["bytes"] / 1e6, info["seconds"])
    return out


def run(cfg: Config, *, run: str = "latest", force: bool = False) -> int:
    out = export_gguf(cfg, RunDir.resolve(cfg.runs_dir, run), force=force)
    print(f"GGUF: {out}")
    print(f"Modelfile: {out.parent / 'Modelfile'}")
    print("next: make gguf-check (compare with transformers), make ollama-create")
    return 0
