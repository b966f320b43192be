"""What differs between the architectures the in-process GGUF exporter writes.

Llama and Mistral share llama.cpp's ``llama`` graph (rotary pairs interleaved, so q/k
are permuted); Qwen2 and Gemma2 use the rotate-half ("NEOX") layout that Hugging Face
stores, so their weights go in as they are. The rest follows llama.cpp's own
``convert_hf_to_gguf.py``: Qwen2 has q/k/v biases; Gemma2 stores its RMSNorm weights as
``w - 1`` (its norm multiplies by ``1 + w``), caps attention and final logits, alternates
sliding-window and global layers, and scales queries by ``query_pre_attn_scalar``, which
llama.cpp takes to be the head size (hidden/heads for the 46-layer 27B model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from persona_pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class ArchSpec:
    arch: Any  # gguf.MODEL_ARCH
    permute_qk: bool  # HF rotate-half -> llama.cpp interleaved pairs (the ``llama`` graph only)
    norm_plus_one: bool  # Gemma: llama.cpp multiplies by the stored weight, HF by 1 + weight
    rope_scaling: tuple[str, ...]  # rope types written faithfully
    skip: tuple[str, ...] = ()  # HF tensors llama.cpp does not read (Gemma's lm_head is the embedding)


_LLAMA = ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True, norm_plus_one=False,
                  rope_scaling=("default", "linear", "llama3"))
ARCHS: dict[str, ArchSpec] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA,  # Llama with another tokenizer (SentencePiece) and sliding window unused
    "Qwen2ForCausalLM": ArchSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False, norm_plus_one=False,
                                 rope_scaling=("default",)),
    "Gemma2ForCausalLM": ArchSpec(gguf.MODEL_ARCH.GEMMA2, permute_qk=False, norm_plus_one=True,
                                  rope_scaling=("default",), skip=("lm_head.weight",)),
}


def arch_spec(hf: dict[str, Any], source: str) -> tuple[str, ArchSpec]:
    """(HF architecture name, its spec); an architecture the exporter does not know is a PipelineError."""
    archs = hf.get("architectures") or []
    for name in archs:
        if name in ARCHS:
            return name, ARCHS[name]
    raise PipelineError(
        f"{source}: architecture {archs or '?'} is not supported by the in-process exporter "
        f"(supported: {', '.join(ARCHS)})",
        hint="convert it with llama.cpp's convert_hf_to_gguf.py, then `make gguf-check INPUT=file.gguf`",
    )


def check_supported(name: str, hf: dict[str, Any], head_dim: int, source: str) -> None:
    """Refuse settings llama.cpp would silently compute differently from transformers."""
    if name == "Gemma2ForCausalLM":
        scalar = hf.get("query_pre_attn_scalar", head_dim)
        llama_cpp = hf["hidden_size"] // hf["num_attention_heads"] if hf["num_hidden_layers"] == 46 else head_dim
        if scalar != llama_cpp:
            raise PipelineError(
                f"{source}: Gemma2 query_pre_attn_scalar={scalar}, but llama.cpp scales queries by "
                f"1/sqrt({llama_cpp}) for a {hf['num_hidden_layers']}-layer model; the GGUF would be wrong",
                hint="set query_pre_attn_scalar to head_dim (or use the 27B layout), or convert with llama.cpp",
            )
    if name == "Qwen2ForCausalLM" and hf.get("use_sliding_window"):
        raise PipelineError(f"{source}: Qwen2 with use_sliding_window=true is not exported in-process",
                            hint="convert it with llama.cpp's convert_hf_to_gguf.py")


def add_arch_hparams(writer: Any, name: str, hf: dict[str, Any]) -> None:
    """Keys only some architectures have (the shared sizes, heads and rope are written by the caller)."""
    if name == "Gemma2ForCausalLM":
        if hf.get("attn_logit_softcapping") is not None:
            writer.add_attn_logit_softcapping(float(hf["attn_logit_softcapping"]))
        if hf.get("final_logit_softcapping") is not None:
            writer.add_final_logit_softcapping(float(hf["final_logit_softcapping"]))
        if hf.get("sliding_window") is not None:
            writer.add_sliding_window(int(hf["sliding_window"]))


def transform(spec: ArchSpec, hf_name: str, data: np.ndarray) -> np.ndarray:
    """Per-tensor value changes other than the q/k permutation."""
    if spec.norm_plus_one and hf_name.endswith("norm.weight"):
        return data + 1.0
    return data
