"""Stage ``gguf-check``: run the GGUF with llama.cpp and compare it with transformers on the same prompts.

For each prompt (the first eval records, or built-in persona prompts when the
data is unreadable) it measures: llama.cpp's tokenization against the HF
tokenizer, next-token logits along transformers' greedy continuation
(max |difference|, top-1 agreement) and the two greedy continuations
themselves. F32/F16/BF16 files must reproduce transformers' greedy output;
other types report what they measured. When llama.cpp cannot run here, every
tensor read back with ``gguf.GGUFReader`` is compared with the source weights
instead, and the result says so.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.core.prompt_format import format_prompt, render_prompt
from persona_pipeline.stages.gguf import gguf_path, open_weights, read_hf_config
from persona_pipeline.core.runs import resolve_run

log = logging.getLogger(__name__)

EXACT_TYPES = ("F32", "F16", "BF16")  # must agree on greedy output
# Relative RMS error per tensor that the tensor-only fallback accepts for the exact types.
TENSOR_TOLERANCE = {"F32": 1e-6, "F16": 1e-3, "BF16": 1e-2}
# A greedy divergence counts as a near-tie when transformers' logit gap between the two competing tokens
# is at most this many times the largest logit difference measured between the two implementations.
TIE_FACTOR = 2.0
BUILTIN_QUESTIONS = (
    "What matters most to you in your work?",
    "How did you get started?",
    "What would you tell a young person today?",
    "What does a good day look like for you?",
)


# --------------------------------------------------------------------------- the file


def read_gguf(path: Path):
    """Open a GGUF with the reference reader; corrupted or truncated files give a clear error."""
    import gguf

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
    import gguf

    ftype = field_value(reader, "general.file_type")
    if ftype is not None:
        name = gguf.LlamaFileType(int(ftype)).name
        return "F32" if name == "ALL_F32" else name.removeprefix("MOSTLY_")
    return Path(path).stem.rsplit("-", 1)[-1].upper()


# --------------------------------------------------------------------------- prompts


def check_prompts(cfg: Config) -> tuple[list[str], str]:
    """(prompts, where they came from): eval records spread over the personas, else built-in ones."""
    n = cfg.gguf.check_prompts
    try:
        from persona_pipeline.stages.keys import data_key
        from persona_pipeline.core.records import read_records

        records = read_records(cfg.resolve(cfg.data.eval), data_key(cfg))
        by_persona: dict[str, list[str]] = {}
        for r in records:
            by_persona.setdefault(str(r.get("meta", {}).get("persona", "")), []).append(r["prompt"])
        prompts: list[str] = []
        while len(prompts) < n and any(by_persona.values()):
            for lst in by_persona.values():
                if lst and len(prompts) < n:
                    prompts.append(lst.pop(0))
        return prompts, "eval set"
    except PipelineError as exc:
        log.info("gguf-check on built-in persona prompts (%s)", str(exc).splitlines()[0])
    return builtin_prompts(cfg, n), "built-in"


def builtin_prompts(cfg: Config, n: int) -> list[str]:
    from persona_pipeline.stages.ollama_create import persona_systems

    systems = persona_systems(cfg)
    names = list(systems)
    return [
        format_prompt(names[i % len(names)], systems[names[i % len(names)]], BUILTIN_QUESTIONS[i % len(BUILTIN_QUESTIONS)])
        for i in range(n)
    ]


# --------------------------------------------------------------------------- comparisons


def _hf_reference(cfg: Config, merged: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_pipeline.core.modeling import device, resolve_dtype

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
    import torch

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
    for k, tok in enumerate(forced):
        best = int(ref_logits[k].argmax())
        if best in eos_ids:
            return forced[:k] + [best]
    return list(forced)


def _hf_logits(model, ids: list[int]):
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids], device=model.device)).logits[0].float().cpu().numpy()


def _compare_prompt(model, tokenizer, llm, prompt: str, ids: list[int], max_new: int, eos_ids: set[int]) -> dict[str, Any]:
    """One prompt: logits along transformers' forced continuation, and both greedy outputs."""
    import numpy as np

    forced = _hf_forced(model, tokenizer, ids, max_new, eos_ids)
    seq = ids + forced
    start = len(ids) - 1  # positions predicting the first new token onwards
    ref = _hf_logits(model, seq)[start:]
    got = llm.logits(seq, all_positions=True)[start:]
    hf_new = greedy_with_stop(forced, ref, eos_ids)
    cpp_new = llm.greedy(ids, max_new)
    diff = np.abs(got - ref)
    top1 = got.argmax(-1) == ref.argmax(-1)
    first_div = next((k for k, (a, b) in enumerate(zip(hf_new, cpp_new)) if a != b), None)
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
    from tqdm.auto import tqdm

    from persona_pipeline.export.llamacpp import LlamaCppModel, runtime_library

    model, tokenizer = _hf_reference(cfg, merged)
    eos_ids = _eos_ids(model, tokenizer)
    max_new = cfg.gguf.check_max_new_tokens
    prompts = [render_prompt(p, cfg.model.prompt_format, tokenizer) for p in prompts]
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    n_ctx = -(-(max(len(e) for e in encoded) + max_new + 8) // 256) * 256  # room for prompt + continuation
    with LlamaCppModel(gguf_file, n_ctx=n_ctx, threads=cfg.gguf.threads, auto_install=cfg.gguf.auto_install) as llm:
        warnings = llm.warnings()
        rows = [
            {"prompt": i, **_compare_prompt(model, tokenizer, llm, prompt, ids, max_new, eos_ids)}
            for i, (prompt, ids) in enumerate(tqdm(list(zip(prompts, encoded)), desc="gguf-check", unit="prompt", leave=False))
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


def unpermute_qk(w, n_head: int):
    """Inverse of :func:`gguf_export.permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def compare_tensors(gguf_file: Path, merged: Path, reader=None) -> dict[str, Any]:
    """Fallback without llama.cpp: every GGUF tensor, dequantized and un-permuted, against the source weights."""
    import gguf
    import numpy as np

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
            per_tensor.append({"tensor": t.name, "type": t.tensor_type.name, "max_abs_diff": float(np.abs(err).max()), "rel_rms_error": rel})
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


# --------------------------------------------------------------------------- the stage


def _status(quant: str, result: dict[str, Any], n: int) -> tuple[str, str]:
    if result["mode"] == "tensors":
        tol = TENSOR_TOLERANCE.get(quant)
        if tol is None:
            return "measured", "tensor-only check: quantized types report their error"
        ok = result["max_rel_rms_error"] <= tol
        return ("pass" if ok else "fail"), f"tensor-only check: relative RMS error <= {tol:g} for {quant}"
    if result["tokenization_equal"] != n:
        return "fail", "llama.cpp must tokenize every prompt exactly like the HF tokenizer"
    if quant in EXACT_TYPES:
        ok = result["greedy_equal"] + result["greedy_near_tie_divergences"] == n
        return ("pass" if ok else "fail"), (
            f"{quant}: greedy output must equal transformers' on every prompt, except where the two parted at a "
            f"near-tie (transformers' logit gap between the two tokens <= {TIE_FACTOR:g} x the max logit difference)"
        )
    return "measured", f"{quant} is lossy: agreement is reported, not required"


def check_gguf(cfg: Config, run_dir: Path, quant: str | None = None, *, gguf_file: Path | None = None) -> dict[str, Any]:
    """Compare ``gguf_file`` (default: the run's file for ``quant``) with the run's merged model.

    Writes ``run/gguf/check-<QUANT>.json`` and updates ``outputs/bench/bench_gguf.json``.
    """
    from persona_pipeline.export.llamacpp import ensure_runtime
    from persona_pipeline.stages.merge import merged_dir

    start = time.perf_counter()
    run_dir = Path(run_dir)
    if gguf_file is None:
        gguf_file = gguf_path(cfg, run_dir, (quant or cfg.gguf.quant).upper())
        if not gguf_file.is_file():
            raise PipelineError(
                f"no GGUF for QUANT={gguf_file.stem.rsplit('-', 1)[-1]} in run {run_dir.name} ({gguf_file})",
                hint=f"create it with `make gguf RUN={run_dir.name} QUANT=...`",
            )
    reader = read_gguf(gguf_file)
    quant = file_quant(reader, gguf_file)
    merged = merged_dir(run_dir)
    prompts, source = check_prompts(cfg)
    result, reason = None, None
    try:
        ensure_runtime(cfg.gguf.auto_install)
    except PipelineError as exc:
        reason = str(exc).splitlines()[0]
    if reason is None:
        try:
            result = compare_with_llamacpp(cfg, gguf_file, merged, prompts, quant)
        except (OSError, AttributeError) as exc:  # the library cannot be loaded, or lacks a function we call
            reason = f"llama.cpp library unusable: {type(exc).__name__}: {exc}"
    if result is None:
        log.warning("llama.cpp is not available (%s); comparing the file's tensors with the source weights instead", reason)
        result = compare_tensors(gguf_file, merged, reader)
        result["llama_cpp_unavailable"] = reason
    status, criterion = _status(quant, result, len(prompts))
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    report = {
        "quant": quant,
        "file": str(gguf_file),
        "bytes": gguf_file.stat().st_size,
        "size_vs_f32": round(gguf_file.stat().st_size / (4 * n_params), 4),
        "prompts": len(prompts),
        "prompt_source": source,
        "max_new_tokens": cfg.gguf.check_max_new_tokens,
        **result,
        "status": status,
        "criterion": criterion,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(run_dir / "gguf" / f"check-{quant}.json", report)
    _update_bench(cfg, run_dir, report)
    return report


def _update_bench(cfg: Config, run_dir: Path, report: dict[str, Any]) -> Path:
    """Merge this quant's figures into outputs/bench/bench_gguf.json (one entry per quant type)."""
    path = cfg.outputs_dir / "bench" / "bench_gguf.json"
    try:
        bench = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        bench = {}
    quants = bench.get("quants", {})
    q = report["quant"]
    export = Path(run_dir) / "gguf" / f"export-{q}.json"
    export_s = json.loads(export.read_text()).get("seconds") if export.is_file() else None
    entry = {"export_seconds": export_s, "bytes": report["bytes"], "size_vs_f32": report["size_vs_f32"],
             "mode": report["mode"], "status": report["status"], "run": Path(run_dir).name}
    if report["mode"] == "llama.cpp":
        entry.update(max_logit_diff=report["max_logit_diff"], top1_agreement=report["top1_agreement"],
                     greedy_equal=f"{report['greedy_equal']}/{report['prompts']}")
    else:
        entry.update(max_rel_rms_error=report["max_rel_rms_error"])
    quants[q] = entry
    summary: dict[str, Any] = {}
    for name, e in sorted(quants.items()):
        summary[f"{name}_size_vs_f32"] = e["size_vs_f32"]
        if "top1_agreement" in e:
            summary[f"{name}_top1_agreement"] = round(e["top1_agreement"], 4)
            summary[f"{name}_greedy_equal"] = e["greedy_equal"]
            summary[f"{name}_max_logit_diff"] = round(e["max_logit_diff"], 5)
    bench = {
        "name": "gguf",
        "reference": "transformers on the run's merged model vs llama.cpp on the GGUF; same token ids, "
        f"greedy decoding, {report['prompts']} prompts x {report['max_new_tokens']} new tokens; "
        "top-1 agreement over every position of transformers' greedy continuation",
        "summary": summary,
        "command": "make gguf QUANT=<type> && make gguf-check QUANT=<type> (one entry per type)",
        "quants": quants,
        "updated": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    return atomic_write_json(path, bench)


def run(cfg: Config, *, run: str = "latest", input: str | None = None) -> int:
    run_dir = resolve_run(cfg.runs_dir, run)
    gguf_file = Path(input) if input else None
    r = check_gguf(cfg, run_dir, gguf_file=gguf_file)
    if r["mode"] == "llama.cpp":
        print(f"{r['quant']}: llama.cpp vs transformers on {r['prompts']} prompts ({r['prompt_source']})")
        print(f"  tokenization equal   {r['tokenization_equal']}/{r['prompts']}")
        ties = r["greedy_near_tie_divergences"]
        print(f"  greedy output equal  {r['greedy_equal']}/{r['prompts']}" + (f" (+{ties} parted at a near-tie)" if ties else ""))
        miss = round((1 - r["top1_agreement"]) * r["compared_positions"])
        ties = r["top1_disagreements_at_near_ties"]
        print(f"  top-1 agreement      {r['top1_agreement']:.4f} over {r['compared_positions']} positions"
              + (f" ({ties} of the {miss} disagreements at near-ties)" if miss and ties is not None else ""))
        print(f"  max logit difference {r['max_logit_diff']:.5f} (next token after the prompt: {r['next_token_max_logit_diff']:.5f})")
    else:
        print(f"{r['quant']}: llama.cpp unavailable ({r['llama_cpp_unavailable']})")
        print(f"  compared {r['tensors']} tensors with the source weights: max relative RMS error "
              f"{r['max_rel_rms_error']:.2e}, max |diff| {r['max_abs_diff']:.2e}")
    print(f"  status: {r['status']} ({r['criterion']})")
    print(f"  report: {Path(run_dir) / 'gguf' / ('check-' + r['quant'] + '.json')}")
    return 0 if r["status"] != "fail" else 1
