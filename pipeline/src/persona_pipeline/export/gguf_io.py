"""Reading what the GGUF exporter reads and writes: Hugging Face model folders (config.json,
safetensors) and GGUF files, plus the q/k layout change between the two.

``gguf`` (export), ``gguf-check`` and the Ollama Modelfiles all read files through here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
from safetensors import safe_open

from persona_pipeline.core.errors import PipelineError


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: not a Hugging Face model folder") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


@contextlib.contextmanager
def open_weights(model_dir: Path) -> Iterator[dict[str, Any]]:
    """``{tensor name: safe_open handle}`` over model.safetensors or a sharded index."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise PipelineError(
            f"{model_dir}: no model.safetensors (or sharded index); the exporter reads safetensors only",
            hint="re-run `make merge` (it saves with safe_serialization)",
        )
    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}
        for name in files:
            try:
                fh = stack.enter_context(safe_open(str(model_dir / name), framework="pt"))
            except Exception as exc:  # truncated / not safetensors
                raise PipelineError(f"{model_dir / name}: cannot read weights ({exc})") from None
            for key in fh.keys():
                handles[key] = fh
        yield handles


def permute_qk(w, n_head: int):
    """HF's rotate-half layout -> llama.cpp's interleaved pairs, per head (weights or biases)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_types(path: Path) -> dict[str, int]:
    types: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return types



def read_gguf(path: Path):
    """Open a GGUF with the reference reader; corrupted or truncated files give a clear error."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"GGUF file not found: {path}", hint="create it with `make gguf QUANT=...`")
    try:
        reader = gguf.GGUFReader(path)
        arch = reader.get_field("general.architecture")
        if arch is None or not reader.tensors:
            raise ValueError("no architecture or no tensors")
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on broken files
        raise PipelineError(
            f"{path} is not a valid GGUF file (corrupted or truncated: {type(exc).__name__}: {str(exc)[:120]})",
            hint="re-create it with `make gguf FORCE=1`",
        ) from None
    return reader


def field_value(reader, key: str) -> Any:
    """A scalar or string metadata value (None when absent)."""
    f = reader.get_field(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # older readers: decode by hand
        part = f.parts[f.data[0]]
        return bytes(part).decode("utf-8") if part.dtype.kind == "u" and part.dtype.itemsize == 1 else part[0].item()


def file_quant(reader, path: Path) -> str:
    ftype = field_value(reader, "general.file_type")
    if ftype is not None:
        name = gguf.LlamaFileType(int(ftype)).name
        return "F32" if name == "ALL_F32" else name.removeprefix("MOSTLY_")
    return Path(path).stem.rsplit("-", 1)[-1].upper()



def unpermute_qk(w, n_head: int):
    """Inverse of :func:`permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)



def eos_token_text(gguf_file: Path) -> str | None:
    """The EOS token's text, read from the GGUF itself (what Ollama will see)."""
    reader = read_gguf(gguf_file)
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if eos is None or tokens is None:
        return None
    return bytes(tokens.parts[tokens.data[int(eos)]]).decode("utf-8", "replace")

