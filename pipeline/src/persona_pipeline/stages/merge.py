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
from pathlib import Path

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_dir

log = logging.getLogger(__name__)

ADAPTER = "adapter"
MERGED = "merged"
MERGE_INFO = "merge_info.json"
CHECK_PROMPTS = 4
# Max |logit difference| allowed between adapter and merged model. float32 merges agree to ~1e-5;
# half precision rounds W + BA once more than the adapter path does, so it gets more room.
TOLERANCE = {"float32": 1e-3, "float16": 0.1, "bfloat16": 0.5}


def adapter_dir(run_dir: Path) -> Path:
    """``run/adapter`` after checking it holds a saved LoRA adapter."""
    path = Path(run_dir) / ADAPTER
    if not (path / "adapter_config.json").is_file():
        raise PipelineError(
            f"no LoRA adapter in run {run_dir} ({path}/adapter_config.json is missing)",
            hint="the run did not finish training; pick another RUN=... or train one with `make train`",
        )
    return path


def merged_dir(run_dir: Path) -> Path:
    """``run/merged`` after checking it holds a merged model."""
    path = Path(run_dir) / MERGED
    if not (path / "config.json").is_file():
        raise PipelineError(f"no merged model in run {run_dir} ({path}/config.json is missing)", hint=f"run `make merge RUN={Path(run_dir).name}` first")
    return path


def adapter_tokenizer(cfg: Config, adapter: Path):
    """The tokenizer saved with the adapter (what training used), else the base model's."""
    from persona_pipeline.core.modeling import load_tokenizer

    if not (adapter / "tokenizer_config.json").is_file():
        return load_tokenizer(cfg)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(adapter), trust_remote_code=cfg.model.trust_remote_code)
    if tok.pad_token is None:  # as modeling.load_tokenizer does for the base model
        tok.pad_token = tok.eos_token
    return tok


def load_adapter_model(cfg: Config, run_dir: Path, *, quantize: bool = True):
    """(PeftModel on the base model, tokenizer) for ``run_dir``'s adapter, on :func:`modeling.device`."""
    from peft import PeftModel

    from persona_pipeline.core.modeling import device, ensure_available, load_causal_lm, model_location

    adapter = adapter_dir(run_dir)
    base = ensure_available(cfg)
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if recorded and model_location(cfg, recorded) != base:
        log.warning("the adapter was trained on %s; merging into %s (model.name_or_path)", recorded, base)
    model = load_causal_lm(cfg, quantize=quantize)
    if not getattr(model, "is_quantized", False) and getattr(model, "hf_device_map", None) is None:
        model.to(device())
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    model.eval()
    return model, adapter_tokenizer(cfg, adapter)


def check_texts(cfg: Config, n: int = CHECK_PROMPTS) -> list[str]:
    """Prompt + answer texts for the logit check: the first eval records, or persona prompts when the data is unreadable."""
    from persona_pipeline.stages.eval import read_eval_set

    try:
        records, _ = read_eval_set(cfg)
        return [r["prompt"] + r["completion"] for r in records[:n]]
    except PipelineError as exc:  # merge must not need the data key; the check still runs on generic prompts
        log.info("logit check on generic prompts (%s)", str(exc).splitlines()[0])
        names = cfg.eval.personas or ["Assistant"]
        return [f"You are {names[i % len(names)]}.\n\nHuman: What matters most to you, and why?\n\n{names[i % len(names)]}:" for i in range(n)]


def _logits(model, tokenizer, texts: list[str]):
    import torch

    enc = tokenizer(texts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
    with torch.inference_mode():
        logits = model(**enc).logits.float()
    return logits, enc["attention_mask"].bool()


def logit_check(model, tokenizer, texts: list[str]) -> tuple[object, dict]:
    """Merge ``model`` (a PeftModel) and compare its logits with the adapter's. Returns (merged model, figures)."""
    import torch

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


def merge(cfg: Config, run_dir: Path, *, force: bool = False) -> Path:
    """Merge ``run_dir``'s adapter into the base model; returns ``run_dir/merged`` (reused unless ``force``)."""
    from transformers import GenerationConfig

    from persona_pipeline.core.modeling import device, model_location, resolve_dtype

    run_dir = Path(run_dir)
    adapter = adapter_dir(run_dir)
    out = run_dir / MERGED
    if (out / MERGE_INFO).is_file() and (out / "config.json").is_file() and not force:
        log.info("already merged: %s (FORCE=1 merges again)", out)
        return out
    start = time.perf_counter()
    dtype = str(resolve_dtype(cfg)).removeprefix("torch.")
    model, tokenizer = load_adapter_model(cfg, run_dir, quantize=False)
    merged, figures = logit_check(model, tokenizer, check_texts(cfg))
    tol = TOLERANCE.get(dtype, TOLERANCE["bfloat16"])
    log.info(
        "merged vs adapter logits: max |diff| %.3g (mean %.3g, tolerance %g for %s); the adapter moves logits by up to %.3g",
        figures["max_abs_logit_diff"], figures["mean_abs_logit_diff"], tol, dtype, figures["adapter_effect_max_abs"],
    )
    if not figures["max_abs_logit_diff"] <= tol:
        raise PipelineError(
            f"merged model differs from the adapter model: max |logit diff| {figures['max_abs_logit_diff']:.3g} > tolerance {tol:g} ({dtype}); nothing written",
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
        (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log.info("merged model saved to %s", out)
    return out


def run(cfg: Config, *, run: str = "latest", force: bool = False) -> int:
    from persona_pipeline.core.runs import resolve_run

    from persona_pipeline.evaluation.generation import set_eval_threads

    set_eval_threads(cfg)
    run_dir = resolve_run(cfg.runs_dir, run)
    out = merge(cfg, run_dir, force=force)
    info = json.loads((out / MERGE_INFO).read_text())
    print(f"merged model: {out}")
    print(f"  merged vs adapter: max |logit diff| {info['max_abs_logit_diff']:.3g} (tolerance {info['tolerance']:g}, {info['dtype']}), "
          f"adapter effect up to {info['adapter_effect_max_abs']:.3g}, same top-1 token at {info['argmax_agreement']:.1%} of positions")
    return 0
