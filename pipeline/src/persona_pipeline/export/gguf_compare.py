"""Measuring a GGUF against transformers: llama.cpp's tokenization, logits along transformers'
greedy continuation and both greedy outputs (:func:`compare_with_llamacpp`), or, without llama.cpp,
every tensor dequantized against the source weights (:func:`compare_tensors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.modeling import device, resolve_dtype
from persona_pipeline.core.prompt_format import render_prompt
from persona_pipeline.export.gguf_io import open_weights, read_gguf, read_hf_config, unpermute_qk
from persona_pipeline.export.llamacpp import LlamaCppModel, runtime_library

EXACT_TYPES = ("F32", "F16", "BF16")  # must agree on greedy output


# Relative RMS error per tensor that the tensor-only fallback accepts for the exact types.
TENSOR_TOLERANCE = {"F32": 1e-6, "F16": 1e-3, "BF16": 1e-2}


# A greedy divergence counts as a near-tie when transformers' logit gap between the two competing tokens
# is at most this many times the largest logit difference measured between the two implementations.
TIE_FACTOR = 2.0


def _hf_reference(cfg: Config, merged: Path):
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=resolve_dtype(cfg)).to(device()).eval()
    return model, tokenizer


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _hf_forced(model, tokenizer, ids: list[int], max_new: int, eos_ids: set[int]) -> list[int]:
    """Greedy continuation of exactly ``max_new`` tokens, end-of-sequence suppressed (more positions to compare)."""
    inp = torch.tensor([ids], device=model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    with torch.inference_mode():
        out = model.generate(
            inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new, min_new_tokens=max_new,
            do_sample=False, eos_token_id=sorted(eos_ids) or None, pad_token_id=pad,
        )
    return out[0, len(ids):].tolist()


def greedy_with_stop(forced: list[int], ref_logits, eos_ids: set[int]) -> list[int]:
    """transformers' ordinary greedy output (stopping at EOS), read off the forced path's unmasked logits.

    Until the first step whose argmax is an EOS token the two paths are identical.
    """
    for k in range(len(forced)):
        best = int(ref_logits[k].argmax())
        if best in eos_ids:
            return forced[:k] + [best]
    return list(forced)


def _hf_logits(model, ids: list[int]):
    with torch.inference_mode():
        return model(torch.tensor([ids], device=model.device)).logits[0].float().cpu().numpy()


def _compare_prompt(model, tokenizer, llm, prompt: str, ids: list[int], max_new: int, eos_ids: set[int]) -> dict[str, Any]:
    """One prompt: logits along transformers' forced continuation, and both greedy outputs."""
    forced = _hf_forced(model, tokenizer, ids, max_new, eos_ids)
    seq = ids + forced
    start = len(ids) - 1  # positions predicting the first new token onwards
    ref = _hf_logits(model, seq)[start:]
    got = llm.logits(seq, all_positions=True)[start:]
    hf_new = greedy_with_stop(forced, ref, eos_ids)
    cpp_new = llm.greedy(ids, max_new)
    diff = np.abs(got - ref)
    top1 = got.argmax(-1) == ref.argmax(-1)
    first_div = next((k for k, (a, b) in enumerate(zip(hf_new, cpp_new, strict=False)) if a != b), None)
    if first_div is None and len(hf_new) != len(cpp_new):
        first_div = min(len(hf_new), len(cpp_new))
    # How far apart transformers put the two competing tokens where the outputs part: a gap smaller
    # than the measured logit noise is a tie that no two implementations break the same way.
    margin = None
    if first_div is not None and first_div < min(len(hf_new), len(cpp_new)):
        margin = float(ref[first_div][hf_new[first_div]] - ref[first_div][cpp_new[first_div]])
    return {
        "prompt_tokens": len(ids),
        # transformers turns special-token text (a chat template's <|im_start|>) into those tokens; so must llama.cpp.
        "tokenization_equal": llm.tokenize(prompt, parse_special=True) == ids,
        "next_token_max_logit_diff": float(diff[0].max()),
        "max_logit_diff": float(diff.max()),
        "top1_agreement": float(top1.mean()),
        "greedy_equal": hf_new == cpp_new,
        "greedy_text_equal": tokenizer.decode(hf_new, skip_special_tokens=True)
        == tokenizer.decode(cpp_new, skip_special_tokens=True),
        "first_divergence": first_div,
        "divergence_logit_margin": margin,
        "new_tokens": [len(hf_new), len(cpp_new)],
        "_positions": int(top1.size),
        "_top1": int(top1.sum()),
        # transformers' logit gap between its choice and llama.cpp's, where they disagree
        "_gaps": [float(ref[k].max() - ref[k][got[k].argmax()]) for k in (~top1).nonzero()[0]],
    }


def compare_with_llamacpp(cfg: Config, gguf_file: Path, merged: Path, prompts: list[str], quant: str) -> dict[str, Any]:
    """Tokenization, logits along transformers' greedy path, and both greedy continuations, per prompt."""
    model, tokenizer = _hf_reference(cfg, merged)
    eos_ids = _eos_ids(model, tokenizer)
    max_new = cfg.gguf.check_max_new_tokens
    prompts = [render_prompt(p, cfg.model.prompt_format, tokenizer) for p in prompts]
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    n_ctx = -(-(max(len(e) for e in encoded) + max_new + 8) // 256) * 256  # room for prompt + continuation
    with LlamaCppModel(gguf_file, n_ctx=n_ctx, threads=cfg.gguf.threads) as llm:
        warnings = llm.warnings()
        rows = [
            {"prompt": i, **_compare_prompt(model, tokenizer, llm, prompt, ids, max_new, eos_ids)}
            for i, (prompt, ids) in enumerate(tqdm(list(zip(prompts, encoded, strict=True)), desc="gguf-check", unit="prompt", leave=False))
        ]
    positions = sum(r.pop("_positions") for r in rows)
    agree = sum(r.pop("_top1") for r in rows)
    gaps = [g for r in rows for g in r.pop("_gaps")]
    tie_tolerance = TIE_FACTOR * max(r["max_logit_diff"] for r in rows)
    for r in rows:
        m = r["divergence_logit_margin"]
        # Only meaningful for the exact types; for lossy ones a divergence is the quantization itself.
        r["near_tie"] = quant in EXACT_TYPES and not r["greedy_equal"] and m is not None and m <= tie_tolerance
    lib = runtime_library()
    return {
        "mode": "llama.cpp",
        "runtime": f"llama.cpp via {lib.name if lib else '?'}",
        "max_logit_diff": max(r["max_logit_diff"] for r in rows),
        "next_token_max_logit_diff": max(r["next_token_max_logit_diff"] for r in rows),
        "top1_agreement": agree / positions if positions else None,
        "compared_positions": positions,
        "top1_disagreements_at_near_ties": sum(g <= tie_tolerance for g in gaps) if quant in EXACT_TYPES else None,
        "greedy_equal": sum(r["greedy_equal"] for r in rows),
        "greedy_near_tie_divergences": sum(r["near_tie"] for r in rows),
        "tie_tolerance": tie_tolerance,
        "tokenization_equal": sum(r["tokenization_equal"] for r in rows),
        "llama_cpp_warnings": [w for w in warnings if "CPU_REPACK" not in w][:20],
        "per_prompt": rows,
    }


def compare_tensors(gguf_file: Path, merged: Path, reader=None) -> dict[str, Any]:
    """Fallback without llama.cpp: every GGUF tensor, dequantized and un-permuted, against the source weights."""
    reader = reader or read_gguf(gguf_file)
    hf = read_hf_config(merged)
    n_head = hf["num_attention_heads"]
    n_kv = hf.get("num_key_value_heads") or n_head
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hf["num_hidden_layers"])
    per_tensor = []
    with open_weights(merged) as handles:
        to_hf = {}
        for name in handles:
            mapped = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
            if mapped:
                to_hf[mapped] = name
        missing = sorted(set(to_hf) - {t.name for t in reader.tensors})
        for t in reader.tensors:
            if t.name not in to_hf:
                continue  # generated tensors such as rope_freqs
            src = handles[to_hf[t.name]].get_tensor(to_hf[t.name]).float().numpy()
            data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(src.shape)
            if to_hf[t.name].endswith(("q_proj.weight", "q_proj.bias")):
                data = unpermute_qk(data, n_head)
            elif to_hf[t.name].endswith(("k_proj.weight", "k_proj.bias")):
                data = unpermute_qk(data, n_kv)
            err = data.astype(np.float64) - src
            rel = float(np.sqrt((err**2).mean()) / (np.sqrt((src.astype(np.float64) ** 2).mean()) or 1.0))
            per_tensor.append({"tensor": t.name, "type": t.tensor_type.name, "max_abs_diff": float(np.abs(err).max()),
                               "rel_rms_error": rel})
    if missing:
        raise PipelineError(f"{gguf_file}: tensors missing from the file: {', '.join(missing[:5])}")
    worst = sorted(per_tensor, key=lambda r: -r["rel_rms_error"])
    return {
        "mode": "tensors",
        "tensors": len(per_tensor),
        "max_abs_diff": max(r["max_abs_diff"] for r in per_tensor),
        "max_rel_rms_error": worst[0]["rel_rms_error"],
        "worst_tensors": worst[:5],
    }
