"""``make merge``: fold a run's LoRA adapter into the base model and prove the result is the same model.

The base model is loaded un-quantized in the configured dtype on whatever
device exists (a QLoRA adapter is merged into the full-precision base, the
standard way to ship it). Before saving, the logits of the adapter model and
of the merged model are compared on a few prompts; the merge fails, and
nothing is written, when they differ by more than :data:`TOLERANCE` for the
dtype. ``run/merged/`` then holds the model, the tokenizer, the generation
config and ``merge_info.json`` with the measured difference.
"""

from __future__ import annotations

import json
import logging
import time

import torch
from transformers import GenerationConfig

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_dir
from persona_pipeline.core.modeling import device, load_adapter_model, model_location, resolve_dtype
from persona_pipeline.core.prompt_format import format_prompt
from persona_pipeline.core.records import read_eval_set
from persona_pipeline.core.runs import RunDir
from persona_pipeline.data.personas import persona_systems
from persona_pipeline.evaluation.generation import set_eval_threads

log = logging.getLogger(__name__)

CHECK_PROMPTS = 4
FALLBACK_QUESTION = "What matters most to you, and why?"
# Max |logit difference| allowed between adapter and merged model. float32 merges agree to ~1e-5;
# half precision rounds W + BA once more than the adapter path does, so it gets more room.
TOLERANCE = {"float32": 1e-3, "float16": 0.1, "bfloat16": 0.5}


def check_texts(cfg: Config, n: int = CHECK_PROMPTS) -> list[str]:
    """Prompt + answer texts for the logit check: the first eval records, or persona prompts when the data is unreadable."""
    try:
        records, _ = read_eval_set(cfg)
        return [r["prompt"] + r["completion"] for r in records[:n]]
    except PipelineError as exc:  # merge must not need the data key; the check still runs on generic prompts
        log.info("logit check on generic prompts (%s)", str(exc).splitlines()[0])
        systems = persona_systems(cfg)
        names = list(systems)
        return [format_prompt(names[i % len(names)], systems[names[i % len(names)]], FALLBACK_QUESTION) for i in range(n)]


def _logits(model, tokenizer, texts: list[str]):
    enc = tokenizer(texts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
    with torch.inference_mode():
        logits = model(**enc).logits.float()
    return logits, enc["attention_mask"].bool()


def logit_check(model, tokenizer, texts: list[str]) -> tuple[object, dict]:
    """Merge ``model`` (a PeftModel) and compare its logits with the adapter's. Returns (merged model, figures)."""
    with model.disable_adapter():
        base, mask = _logits(model, tokenizer, texts)
    adapted, _ = _logits(model, tokenizer, texts)
    merged = model.merge_and_unload()
    after, _ = _logits(merged, tokenizer, texts)
    diff = (after - adapted).abs()[mask]
    figures = {
        "max_abs_logit_diff": diff.max().item(),
        "mean_abs_logit_diff": diff.mean().item(),
        # How much the adapter itself moves the logits: the scale the difference above should be tiny against.
        "adapter_effect_max_abs": (adapted - base).abs()[mask].max().item(),
        "argmax_agreement": (after.argmax(-1) == adapted.argmax(-1))[mask].float().mean().item(),
        "check_texts": len(texts),
        "check_tokens": int(mask.sum().item()),
    }
    del base, adapted, after
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return merged, figures


def merge(cfg: Config, run: RunDir, *, force: bool = False) -> RunDir:
    """Merge the run's adapter into the base model, into ``run/merged`` (reused unless ``force``)."""
    adapter = run.require_adapter()
    out = run.merged
    if run.merge_info.is_file() and (out / "config.json").is_file() and not force:
        log.info("already merged: %s (FORCE=1 merges again)", out)
        return run
    start = time.perf_counter()
    dtype = str(resolve_dtype(cfg)).removeprefix("torch.")
    model, tokenizer = load_adapter_model(cfg, run, quantize=False)
    merged, figures = logit_check(model, tokenizer, check_texts(cfg))
    tol = TOLERANCE.get(dtype, TOLERANCE["bfloat16"])
    log.info(
        "merged vs adapter logits: max |diff| %.3g (mean %.3g, tolerance %g for %s); the adapter moves logits by up to %.3g",
        figures["max_abs_logit_diff"], figures["mean_abs_logit_diff"], tol, dtype, figures["adapter_effect_max_abs"],
    )
    if not figures["max_abs_logit_diff"] <= tol:
        raise PipelineError(
            f"merged model differs from the adapter model: max |logit diff| {figures['max_abs_logit_diff']:.3g} "
            f"> tolerance {tol:g} ({dtype}); nothing written",
            hint="merge in float32 (ARGS='model.dtype=float32') or check that model.name_or_path is the base the run was trained on",
        )
    info = {
        "base_model": model_location(cfg),
        "adapter": str(adapter),
        "dtype": dtype,
        "device": str(device()),
        "tolerance": tol,
        **figures,
        "seconds": round(time.perf_counter() - start, 1),
    }
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:  # the base folder's generation config (EOS ids, sampling defaults) if it has one
            GenerationConfig.from_pretrained(model_location(cfg), revision=cfg.model.revision).save_pretrained(tmp)
        except Exception:  # no generation_config.json there (or offline): the one the model carries
            merged.generation_config.save_pretrained(tmp)
        (tmp / run.merge_info.name).write_text(json.dumps(info, indent=2) + "\n")
    log.info("merged model saved to %s", out)
    return run


def run(cfg: Config, *, run: str = "latest", force: bool = False) -> int:
    set_eval_threads(cfg)
    run_dir = merge(cfg, RunDir.resolve(cfg.runs_dir, run), force=force)
    info = json.loads(run_dir.merge_info.read_text())
    print(f"merged model: {run_dir.merged}")
    print(f"  merged vs adapter: max |logit diff| {info['max_abs_logit_diff']:.3g} (tolerance {info['tolerance']:g}, {info['dtype']}), "
          f"adapter effect up to {info['adapter_effect_max_abs']:.3g}, same top-1 token at {info['argmax_agreement']:.1%} of positions")
    return 0
