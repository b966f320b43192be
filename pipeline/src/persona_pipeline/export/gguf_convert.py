"""Hugging Face Llama/Mistral/Qwen2/Gemma2 folder -> one GGUF file, in-process, with the ``gguf`` package.

Tensors are streamed one at a time (safetensors -> numpy -> quantized -> file),
so memory stays near one tensor. Names follow llama.cpp; for the ``llama`` graph q/k
projections are permuted into llama.cpp's rotary layout (without it the file loads and
the model is wrong); what else differs per architecture is in :mod:`.gguf_arch`.
F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 are quantized in numpy; K-quants go through
llama.cpp's quantizer (see :mod:`persona_pipeline.export.llamacpp`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm.auto import tqdm

from persona_pipeline.core.errors import PipelineError
from persona_pipeline.export.gguf_arch import add_arch_hparams, arch_spec, check_supported, transform
from persona_pipeline.export.gguf_io import open_weights, permute_qk, read_hf_config, tensor_types
from persona_pipeline.export.gguf_vocab import VocabMetadata, add_to_writer, read_vocab
from persona_pipeline.export.llamacpp import find_quantizer, kquant_hint, quantize

log = logging.getLogger(__name__)


NUMPY_QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


K_QUANTS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")


@dataclass
class _Planned:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType


def normalize_quant(quant: str) -> str:
    """Upper-case and check a quant name. K-quants need llama.cpp's quantizer (``make kquants``), else a clear error."""
    q = quant.strip().upper()
    if q in NUMPY_QUANTS:
        return q
    supported = ", ".join(NUMPY_QUANTS)
    if q in K_QUANTS:
        if find_quantizer() is None:
            raise PipelineError(
                f"QUANT={q} is a K-quant; it needs llama.cpp's quantizer, which is not available here. "
                f"Supported without it: {supported}",
                hint=kquant_hint(),
            )
        return q
    raise PipelineError(
        f"unsupported GGUF type QUANT={quant!r}. Supported: {supported}; "
        f"with llama.cpp's quantizer also {', '.join(K_QUANTS)}",
        hint="e.g. make gguf QUANT=Q8_0",
    )


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope_theta, scaling dict) from transformers 5 ``rope_parameters`` or the older keys."""
    params = dict(hf.get("rope_parameters") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = dict(hf.get("rope_scaling") or {})
    scaling.update({k: v for k, v in params.items() if k != "rope_theta"})
    scaling["rope_type"] = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    return float(theta), scaling


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict[str, Any]):
    """Per-frequency factors of Llama 3.1 rope scaling, stored as ``rope_freqs.weight`` (as llama.cpp does)."""
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _qtype_for(quant: str, shape: tuple[int, ...]):
    """Tensor type: 1-D (norms) stay F32; rows not divisible by the block size fall back to F16."""
    if len(shape) == 1 or quant == "F32":
        return gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return qtype


def _encode(array, qtype):
    """numpy float32 -> (bytes-like array, shape for add_tensor_info, numpy dtype)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def _info_shape(shape: tuple[int, ...], qtype) -> tuple[tuple[int, ...], Any, int]:
    """(shape, numpy dtype, nbytes) as GGUFWriter.add_tensor_info wants them, without the data."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return shape, np.dtype(np.float32), 4 * math.prod(shape)
    if qtype == gguf.GGMLQuantizationType.F16:
        return shape, np.dtype(np.float16), 2 * math.prod(shape)
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.dtype(np.uint8), math.prod(byte_shape)


def _add_hparams(writer, hf: dict[str, Any], n_vocab: int, head_dim: int, theta: float, scaling: dict[str, Any]) -> None:
    """``<arch>.*`` keys every architecture has: sizes, heads, norms, rope."""
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(hf.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hf["hidden_size"])
    writer.add_block_count(hf["num_hidden_layers"])
    writer.add_feed_forward_length(hf["intermediate_size"])
    writer.add_head_count(hf["num_attention_heads"])
    writer.add_head_count_kv(hf.get("num_key_value_heads") or hf["num_attention_heads"])
    writer.add_layer_norm_rms_eps(hf.get("rms_norm_eps", 1e-5))
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if scaling["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])


def convert(
    model_dir: Path,
    out_path: Path,
    quant: str,
    *,
    name: str = "model",
    metadata: dict[str, str] | None = None,
    vocab: VocabMetadata | None = None,
    permute: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out_path`` (atomically) from a Hugging Face model folder. numpy quant types only.

    ``vocab`` and ``permute`` exist so tests can reproduce the known export mistakes.
    Returns a summary: tensor types, fallbacks, size, seconds.
    """
    start = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    if quant not in NUMPY_QUANTS:
        raise PipelineError(f"convert() writes {', '.join(NUMPY_QUANTS)}; got {quant}")
    hf = read_hf_config(model_dir)
    arch_name, spec = arch_spec(hf, f"{model_dir}/config.json")
    permute = permute and spec.permute_qk
    n_layer, n_head = hf["num_hidden_layers"], hf["num_attention_heads"]
    n_head_kv = hf.get("num_key_value_heads") or n_head
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_head
    theta, scaling = _rope(hf)
    rope_type = scaling["rope_type"]
    if rope_type not in spec.rope_scaling:
        raise PipelineError(
            f"{model_dir}/config.json: rope scaling '{rope_type}' of {arch_name} is not supported by the "
            "in-process exporter",
            hint="use llama.cpp's convert_hf_to_gguf.py for this model",
        )
    check_supported(arch_name, hf, head_dim, f"{model_dir}/config.json")
    tensor_map = gguf.get_tensor_name_map(spec.arch, n_layer)

    with open_weights(model_dir) as handles:
        embed = handles.get("model.embed_tokens.weight")
        if embed is None:
            raise PipelineError(f"{model_dir}: no model.embed_tokens.weight; not a {arch_name} checkpoint")
        n_vocab = embed.get_slice("model.embed_tokens.weight").get_shape()[0]
        vocab = vocab or read_vocab(model_dir, n_vocab)

        plan: list[_Planned] = []
        for hf_name in handles:
            if hf_name.endswith("rotary_emb.inv_freq") or hf_name in spec.skip:
                continue  # recomputed by llama.cpp / not read by it
            mapped = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if mapped is None:
                raise PipelineError(f"{model_dir}: tensor {hf_name} has no llama.cpp counterpart")
            shape = tuple(handles[hf_name].get_slice(hf_name).get_shape())
            plan.append(_Planned(hf_name, mapped, shape, _qtype_for(quant, shape)))
        # llama.cpp expects token_embd first and blocks in order; sort like its converter for stable files.
        plan.sort(key=lambda p: _order(p.gguf_name))

        ftype = gguf.LlamaFileType.ALL_F32 if quant == "F32" else gguf.LlamaFileType[f"MOSTLY_{quant}"]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[spec.arch])
        try:
            writer.add_type("model")
            writer.add_name(name)
            n_params = sum(math.prod(p.shape) for p in plan)
            writer.add_size_label(gguf.utility.size_label(n_params, n_params, 0, 0))
            for key, value in (metadata or {}).items():
                writer.add_string(key, value)
            writer.add_file_type(int(ftype))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            _add_hparams(writer, hf, n_vocab, head_dim, theta, scaling)
            add_arch_hparams(writer, arch_name, hf)
            add_to_writer(writer, vocab)

            extra: dict[str, Any] = {}
            if rope_type == "llama3":
                extra["rope_freqs.weight"] = llama3_rope_factors(theta, head_dim, scaling)
            for gname, arr in extra.items():
                shape, dtype, nbytes = _info_shape(arr.shape, gguf.GGMLQuantizationType.F32)
                writer.add_tensor_info(gname, shape, dtype, nbytes)
            for p in plan:
                shape, dtype, nbytes = _info_shape(p.shape, p.qtype)
                writer.add_tensor_info(p.gguf_name, shape, dtype, nbytes, raw_dtype=p.qtype)
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for arr in extra.values():
                writer.write_tensor_data(arr)
            for p in tqdm(plan, desc=f"gguf {quant}", unit="tensor", disable=not progress, leave=False):
                data = transform(spec, p.hf_name, handles[p.hf_name].get_tensor(p.hf_name).float().numpy())
                if permute and p.hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = permute_qk(data, n_head)
                elif permute and p.hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                    data = permute_qk(data, n_head_kv)
                writer.write_tensor_data(_encode(data, p.qtype))
            writer.close()
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is not a secret
            os.replace(tmp, out_path)
        except BaseException:
            writer.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
    types: dict[str, int] = {}
    for p in plan:
        types[p.qtype.name] = types.get(p.qtype.name, 0) + 1
    fallbacks = [p.gguf_name for p in plan if len(p.shape) > 1 and p.qtype.name not in (quant, "F32")]
    if fallbacks:
        log.warning("%d tensor(s) kept in F16 (row width not a multiple of the %s block): %s",
                    len(fallbacks), quant, ", ".join(fallbacks[:4]) + (" ..." if len(fallbacks) > 4 else ""))
    return {
        "quant": quant,
        "file": out_path.name,
        "bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
        "tensor_types": types,
        "f16_fallback": fallbacks,
        "tokenizer": {"model": vocab.model, "pre": vocab.pre, "tokens": len(vocab.tokens), "merges": len(vocab.merges)},
        "n_vocab": int(n_vocab),
        "architecture": gguf.MODEL_ARCH_NAMES[spec.arch],
        "permuted_qk": permute,
    }


def _order(gguf_name: str) -> tuple[int, int, str]:
    if gguf_name.startswith("token_embd"):
        return (0, 0, gguf_name)
    if gguf_name.startswith("blk."):
        return (1, int(gguf_name.split(".")[1]), gguf_name)
    return (2, 0, gguf_name)


def export_kquant(model_name: str, merged: Path, out: Path, quant: str, metadata: dict[str, str]) -> dict[str, Any]:
    """K-quants: a full-precision GGUF first, then llama.cpp's quantizer; the intermediate is removed."""
    start = time.perf_counter()
    src_dtype = str(read_hf_config(merged).get("dtype") or read_hf_config(merged).get("torch_dtype") or "")
    inter_quant = "BF16" if src_dtype == "bfloat16" else ("F32" if src_dtype == "float32" else "F16")
    inter = out.with_name(f".{out.stem}.{inter_quant}.intermediate.gguf")
    try:
        base = convert(merged, inter, inter_quant, name=model_name, metadata=metadata)
        tool = quantize(inter, out, quant)
    finally:
        with contextlib.suppress(FileNotFoundError):
            inter.unlink()
    base.update(
        quant=quant,
        file=out.name,
        bytes=out.stat().st_size,
        seconds=round(time.perf_counter() - start, 3),
        intermediate=inter_quant,
        quantizer=tool,
        tensor_types=tensor_types(out),
    )
    return base

