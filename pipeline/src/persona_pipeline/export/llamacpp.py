"""llama.cpp in-process: finding it, running a GGUF through its C API, K-quant quantizing.

The runtime is the prebuilt ``xllamacpp`` wheel (installed by ``make install``)
or ``llama-cpp-python`` (compiles llama.cpp, ~10 min: ``make kquants``, the one
explicit compile). Nothing here installs anything. Both ship llama.cpp's C library; we call its stable C API with
ctypes so that we get raw next-token logits, the tokenizer and the load-time
log (llama.cpp's warnings) from either. K-quants need llama.cpp's quantizer:
``llama_cpp.llama_model_quantize`` or a ``llama-quantize`` binary on PATH or
under ``LLAMA_CPP_DIR``.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from persona_pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

# Keep in step with pyproject.toml's `llamacpp` and `kquants` extras.
XLLAMACPP_REQ = "xllamacpp==2026.10.11549"
LLAMA_CPP_PYTHON_REQ = "llama-cpp-python==0.3.36"


# --------------------------------------------------------------------------- quantizer (K-quants)


def kquant_hint() -> str:
    return (
        f"K-quants use llama.cpp's quantizer: `make kquants` (installs {LLAMA_CPP_PYTHON_REQ}, "
        "which compiles llama.cpp: about 10 minutes on 2 cores), or put `llama-quantize` on PATH, or set "
        "LLAMA_CPP_DIR to a llama.cpp build folder"
    )


def _quantize_binary() -> Path | None:
    found = shutil.which("llama-quantize")
    if found:
        return Path(found)
    root = os.environ.get("LLAMA_CPP_DIR")
    if root:
        for rel in ("llama-quantize", "bin/llama-quantize", "build/bin/llama-quantize"):
            cand = Path(root) / rel
            if cand.is_file() and os.access(cand, os.X_OK):
                return cand
    return None


def find_quantizer() -> str | None:
    """'llama_cpp' or the llama-quantize path when a K-quant quantizer is available, else None."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return "llama_cpp"
    binary = _quantize_binary()
    return str(binary) if binary else None


def quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None) -> str:
    """Quantize GGUF ``src`` to ``dst`` (written under a temporary name). Returns the tool used."""
    tool = find_quantizer()
    if tool is None:
        raise PipelineError(f"QUANT={quant} needs llama.cpp's quantizer, which is not available", hint=kquant_hint())
    threads = threads or os.cpu_count() or 1
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        if tool == "llama_cpp":
            # The one lazy import: llama-cpp-python is an optional extra (`make kquants`, a compile).
            import llama_cpp

            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = int(gguf.LlamaFileType[f"MOSTLY_{quant}"])
            params.nthread = threads
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            if rc != 0:
                raise PipelineError(f"llama_model_quantize failed with code {rc} for {src} -> {quant}")
        else:
            proc = subprocess.run([tool, str(src), str(tmp), quant, str(threads)], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise PipelineError(f"{tool} failed ({proc.returncode}): {' | '.join(tail)}")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return "llama_cpp.llama_model_quantize" if tool == "llama_cpp" else tool


# --------------------------------------------------------------------------- runtime library


def runtime_library() -> Path | None:
    """The shared library holding llama.cpp's C API: xllamacpp's extension, or llama-cpp-python's libllama."""
    spec = importlib.util.find_spec("xllamacpp")
    if spec and spec.origin:
        found = sorted(Path(spec.origin).parent.glob("xllamacpp*.so"))
        if found:
            return found[0]
    spec = importlib.util.find_spec("llama_cpp")
    if spec and spec.origin:
        found = sorted((Path(spec.origin).parent / "lib").glob("libllama.*"))
        if found:
            return found[0]
    return None


def ensure_runtime() -> Path:
    """The llama.cpp library, or an error saying how to install it."""
    lib = runtime_library()
    if lib is None:
        raise PipelineError(
            "no llama.cpp runtime is installed",
            hint=f"`make install` installs it ({XLLAMACPP_REQ}, a prebuilt wheel)",
        )
    return lib


class _Opaque(ctypes.Structure):
    """A by-value parameter struct whose full layout we do not rely on (only its leading fields)."""

    _fields_ = [("raw", ctypes.c_ubyte * 2048)]


class _Batch(ctypes.Structure):
    # llama_batch: this layout has been stable in llama.h since 2023.
    _fields_ = [
        ("n_tokens", ctypes.c_int32),
        ("token", ctypes.POINTER(ctypes.c_int32)),
        ("embd", ctypes.c_void_p),
        ("pos", ctypes.POINTER(ctypes.c_int32)),
        ("n_seq_id", ctypes.POINTER(ctypes.c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(ctypes.c_int32))),
        ("logits", ctypes.POINTER(ctypes.c_int8)),
    ]


_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_LEVELS = {2: "info", 3: "warn", 4: "error"}


class _Api:
    """ctypes signatures of the llama.cpp C functions we call, bound once per process."""

    _instance: _Api | None = None

    def __init__(self, path: Path):
        c = ctypes
        lib = c.CDLL(str(path))
        self.path = path
        self.log: list[tuple[str, str]] = []

        def sig(name: str, res: Any, *args: Any) -> Callable:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, list(args)
            return fn

        vp, i32 = c.c_void_p, c.c_int32
        self.log_set = sig("llama_log_set", None, _LOG_CB, vp)
        self.backend_init = sig("llama_backend_init", None)
        self.model_default_params = sig("llama_model_default_params", _Opaque)
        self.context_default_params = sig("llama_context_default_params", _Opaque)
        self.model_load = sig("llama_model_load_from_file", vp, c.c_char_p, _Opaque)
        self.model_free = sig("llama_model_free", None, vp)
        self.model_get_vocab = sig("llama_model_get_vocab", vp, vp)
        self.meta_val_str = sig("llama_model_meta_val_str", i32, vp, c.c_char_p, c.c_char_p, c.c_size_t)
        self.init_from_model = sig("llama_init_from_model", vp, vp, _Opaque)
        self.free = sig("llama_free", None, vp)
        self.set_n_threads = sig("llama_set_n_threads", None, vp, i32, i32)
        self.n_vocab = sig("llama_vocab_n_tokens", i32, vp)
        self.vocab_eos = sig("llama_vocab_eos", i32, vp)
        self.vocab_bos = sig("llama_vocab_bos", i32, vp)
        self.is_eog = sig("llama_vocab_is_eog", c.c_bool, vp, i32)
        self.tokenize = sig("llama_tokenize", i32, vp, c.c_char_p, i32, c.POINTER(i32), i32, c.c_bool, c.c_bool)
        self.token_to_piece = sig("llama_token_to_piece", i32, vp, i32, c.c_char_p, i32, i32, c.c_bool)
        self.batch_init = sig("llama_batch_init", _Batch, i32, i32, i32)
        self.batch_free = sig("llama_batch_free", None, _Batch)
        self.decode = sig("llama_decode", i32, vp, _Batch)
        self.get_logits_ith = sig("llama_get_logits_ith", c.POINTER(c.c_float), vp, i32)
        self.get_memory = sig("llama_get_memory", vp, vp)
        self.memory_clear = sig("llama_memory_clear", None, vp, c.c_bool)

        @_LOG_CB
        def _on_log(level: int, text: bytes, _user: Any) -> None:
            # Keep llama.cpp quiet on stderr but remember what it said (warnings are checked).
            self.log.append((_LEVELS.get(level, "debug"), (text or b"").decode("utf-8", "replace")))

        self._on_log = _on_log  # a reference, or the callback is garbage-collected under llama.cpp
        self.log_set(self._on_log, None)
        self.backend_init()

    @classmethod
    def get(cls, path: Path) -> _Api:
        if cls._instance is None:
            cls._instance = cls(path)
        return cls._instance


class LlamaCppModel:
    """A GGUF file loaded by llama.cpp: tokenize, next-token logits, greedy generation."""

    def __init__(self, gguf_file: Path, *, n_ctx: int = 512, threads: int | None = None):
        self.api = _Api.get(ensure_runtime())
        self.path = Path(gguf_file)
        start = len(self.api.log)
        params = self.api.model_default_params()
        self.model = self.api.model_load(str(self.path).encode(), params)
        self.load_log = self.api.log[start:]
        if not self.model:
            errors = [t.strip() for lvl, t in self.load_log if lvl == "error"][-3:]
            raise PipelineError(
                f"llama.cpp could not load {self.path}: {' | '.join(errors) or 'unknown error'}",
                hint="the file is corrupted, truncated or not a model llama.cpp knows; re-create it with `make gguf FORCE=1`",
            )
        self.vocab = self.api.model_get_vocab(self.model)
        self.n_vocab = self.api.n_vocab(self.vocab)
        cparams = self.api.context_default_params()
        struct.pack_into("<I", cparams.raw, 0, n_ctx)  # n_ctx is the first field of llama_context_params
        self.ctx = self.api.init_from_model(self.model, cparams)
        if not self.ctx:
            self.api.model_free(self.model)
            raise PipelineError(f"llama.cpp could not create a context for {self.path}")
        threads = threads or os.cpu_count() or 1
        self.api.set_n_threads(self.ctx, threads, threads)
        self.n_ctx = n_ctx

    # -- metadata and tokenizer

    def warnings(self) -> list[str]:
        """llama.cpp's load-time warnings and errors, without its decorative blank and '****' lines."""
        out = []
        for lvl, text in self.load_log:
            body = text.strip().split(":", 1)[-1].strip()
            if lvl in ("warn", "error") and body.strip("*"):
                out.append(text.strip())
        return out

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.api.meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    @property
    def eos_id(self) -> int:
        return self.api.vocab_eos(self.vocab)

    @property
    def bos_id(self) -> int:
        return self.api.vocab_bos(self.vocab)

    def is_eog(self, token: int) -> bool:
        return bool(self.api.is_eog(self.vocab, token))

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ctypes.c_int32 * cap)()
        n = self.api.tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = self.api.tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        for t in tokens:
            n = self.api.token_to_piece(self.vocab, t, buf, len(buf), 0, False)
            out += buf.raw[: max(n, 0)]
        return out.decode("utf-8", "replace")

    # -- evaluation

    def _decode(self, tokens: list[int], start: int, all_positions: bool):
        """Decode ``tokens`` at positions ``start``...; logits of every position or only the last."""
        if start + len(tokens) > self.n_ctx:
            raise PipelineError(f"sequence of {start + len(tokens)} tokens exceeds the llama.cpp context ({self.n_ctx})")
        batch = self.api.batch_init(len(tokens), 0, 1)
        try:
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if (all_positions or i == len(tokens) - 1) else 0
            batch.n_tokens = len(tokens)
            rc = self.api.decode(self.ctx, batch)
            if rc != 0:
                raise PipelineError(f"llama_decode failed with code {rc}")
            rows = range(len(tokens)) if all_positions else [len(tokens) - 1]
            return np.stack(
                [np.ctypeslib.as_array(self.api.get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy() for i in rows]
            )
        finally:
            self.api.batch_free(batch)

    def logits(self, tokens: list[int], *, all_positions: bool = False):
        """Logits for a fresh sequence: the last position, or every position (n_tokens x n_vocab)."""
        if not tokens:
            raise ValueError("no tokens")
        self.api.memory_clear(self.api.get_memory(self.ctx), True)
        out = self._decode(tokens, 0, all_positions)
        return out if all_positions else out[0]

    def greedy(self, tokens: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``tokens`` with the KV cache (stops after an end-of-generation token, kept)."""
        new: list[int] = []
        logits = self.logits(tokens)
        for step in range(max_new_tokens):
            nxt = int(logits.argmax())
            new.append(nxt)
            if self.is_eog(nxt) or step == max_new_tokens - 1:
                break
            logits = self._decode([nxt], len(tokens) + step, False)[0]
        return new

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.api.free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.api.model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
