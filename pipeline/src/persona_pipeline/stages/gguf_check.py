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
from persona_pipeline.core.prompt_format import format_prompt
from persona_pipeline.core.records import read_eval_set
from persona_pipeline.core.runs import RunDir, bench_file, read_json
from persona_pipeline.data.personas import persona_systems
from persona_pipeline.export.gguf_compare import (
    EXACT_TYPES,
    TENSOR_TOLERANCE,
    TIE_FACTOR,
    compare_tensors,
    compare_with_llamacpp,
)
from persona_pipeline.export.gguf_io import file_quant, read_gguf
from persona_pipeline.export.llamacpp import ensure_runtime

log = logging.getLogger(__name__)

BUILTIN_QUESTIONS = (
    "What matters most to you in your work?",
    "How did you get started?",
    "What would you tell a young person today?",
    "What does a good day look like for you?",
)


# --------------------------------------------------------------------------- prompts


def check_prompts(cfg: Config) -> tuple[list[str], str]:
    """(prompts, where they came from): eval records spread over the personas, else built-in ones."""
    n = cfg.gguf.check_prompts
    try:
        records, _ = read_eval_set(cfg)
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
    systems = persona_systems(cfg)
    names = list(systems)
    return [
        format_prompt(names[i % len(names)], systems[names[i % len(names)]], BUILTIN_QUESTIONS[i % len(BUILTIN_QUESTIONS)])
        for i in range(n)
    ]


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


def check_gguf(cfg: Config, run_dir: RunDir, quant: str | None = None, *, gguf_file: Path | None = None) -> dict[str, Any]:
    """Compare ``gguf_file`` (default: the run's file for ``quant``) with the run's merged model.

    Writes ``run/gguf/check-<QUANT>.json`` and updates ``outputs/bench/bench_gguf.json``.
    """
    start = time.perf_counter()
    if gguf_file is None:
        gguf_file = run_dir.gguf_file(cfg.name, (quant or cfg.gguf.quant).upper())
        if not gguf_file.is_file():
            raise PipelineError(
                f"no GGUF for QUANT={gguf_file.stem.rsplit('-', 1)[-1]} in run {run_dir.name} ({gguf_file})",
                hint=f"create it with `make gguf RUN={run_dir.name} QUANT=...`",
            )
    reader = read_gguf(gguf_file)
    quant = file_quant(reader, gguf_file)
    merged = run_dir.require_merged()
    prompts, source = check_prompts(cfg)
    result, reason = None, None
    try:
        ensure_runtime()
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
    atomic_write_json(run_dir.gguf_check(quant), report)
    _update_bench(cfg, run_dir, report)
    return report


def _update_bench(cfg: Config, run_dir: RunDir, report: dict[str, Any]) -> Path:
    """Merge this quant's figures into outputs/bench/bench_gguf.json (one entry per quant type)."""
    path = bench_file(cfg.outputs_dir, "bench_gguf.json")
    try:
        bench = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        bench = {}
    quants = bench.get("quants", {})
    q = report["quant"]
    # A file given with INPUT=... was not exported by this run: no export time to report.
    export = run_dir.gguf_export_info(q)
    export_s = read_json(export, written_by="make gguf").get("seconds") if export.is_file() else None
    entry = {"export_seconds": export_s, "bytes": report["bytes"], "size_vs_f32": report["size_vs_f32"],
             "mode": report["mode"], "status": report["status"], "run": run_dir.name}
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
    run_dir = RunDir.resolve(cfg.runs_dir, run)
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
    print(f"  report: {run_dir.gguf_check(r['quant'])}")
    return 0 if r["status"] != "fail" else 1
