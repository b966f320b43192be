"""Batched answer generation: left padding, greedy by default, stop at EOS or the next ``\\n\\nHuman:`` turn.

Prompts are grouped by token length (:func:`plan_batches`) so that a batch
pads as little as possible; results come back in the caller's order. The same
function with ``batch_size=1`` is the reference (one prompt at a time) that
``bench-eval`` compares against.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.modeling import device, load_adapter_model, load_causal_lm, load_tokenizer, model_location
from persona_pipeline.core.prompt_format import STOP
from persona_pipeline.core.runs import RunDir

# An answer ends where the model starts writing the human's next turn.
STOP_STRINGS = (STOP,)
# A batch's padded prompt tokens may be at most this many times its real ones (see plan_batches).
MAX_PADDING = 1.5


def set_eval_threads(cfg: Config) -> None:
    """CPU threads for the eval-side stages: ``eval.num_threads``, else ``train.num_threads``, else torch's default."""
    threads = cfg.eval.num_threads or cfg.train.num_threads
    if threads:
        torch.set_num_threads(threads)


def load_eval_model(cfg: Config, run: RunDir | None) -> tuple[Any, Any, dict]:
    """(model, tokenizer, description) for ``cfg.eval.source``, in eval mode on the available device."""
    source = cfg.eval.source
    if source == "base":
        model = load_causal_lm(cfg)
        tok = load_tokenizer(cfg)
        desc = {"source": source, "model": model_location(cfg)}
    elif run is None:
        raise PipelineError(f"eval.source={source} needs a run", hint="pass RUN=<run folder>")
    elif source == "merged":
        folder = run.require_merged()
        model = load_causal_lm(cfg, str(folder), quantize=False)
        tok = load_tokenizer(cfg, str(folder))
        desc = {"source": source, "model": str(folder)}
    else:
        model, tok = load_adapter_model(cfg, run)
        desc = {"source": source, "model": model_location(cfg), "adapter": str(run.adapter)}
        if not getattr(model, "is_quantized", False) and not cfg.quantization.load_in_4bit:
            # Same logits (see `make merge`), no per-layer LoRA overhead during generation.
            model = model.merge_and_unload()
            desc["merged_in_memory"] = True
    if not getattr(model, "is_quantized", False) and getattr(model, "hf_device_map", None) is None:
        model.to(device())
    model.eval()
    return model, tok, desc


@dataclass(frozen=True)
class GenerationSettings:
    """What decides the generated text (everything in ``cfg.eval`` that matters to generate)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int = 42
    min_new_tokens: int = 1

    @classmethod
    def from_config(cls, cfg: Config) -> GenerationSettings:
        e = cfg.eval
        return cls(e.max_new_tokens, e.do_sample, e.temperature, e.top_p, e.repetition_penalty, cfg.seed, e.min_new_tokens)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    """One answer: the text (stop string cut off, stripped), its token count and why it stopped."""

    text: str
    new_tokens: int
    # eos | stop_string | max_tokens
    stop: str

    @property
    def runaway(self) -> bool:
        return self.stop == "max_tokens"


def _generation_config(model, tokenizer, s: GenerationSettings):
    """The model's generation config with our decoding settings on top (instruct models ship sampling defaults)."""
    gen = copy.deepcopy(model.generation_config)
    eos = gen.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    gen.update(
        max_new_tokens=s.max_new_tokens,
        min_new_tokens=min(s.min_new_tokens, s.max_new_tokens) or None,
        do_sample=s.do_sample,
        repetition_penalty=s.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos_ids),
        stop_strings=list(STOP_STRINGS),
        num_beams=1,
    )
    # Leaving sampling knobs set with greedy decoding only produces warnings.
    gen.update(**(dict(temperature=s.temperature, top_p=s.top_p) if s.do_sample else dict(temperature=None, top_p=None, top_k=None)))
    if hasattr(gen, "max_length"):
        gen.max_length = None
    return gen


def plan_batches(lengths: Sequence[int], batch_size: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices grouped into batches of similar prompt length (shortest first).

    A batch holds at most ``batch_size`` prompts and is closed early when the
    next prompt would make its padded size exceed ``max_padding`` times its
    real tokens, so that a few long multi-turn prompts do not make every row
    of a batch pay for their prefill.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * n > max_padding * (real + n)):
            batches.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        batches.append(cur)
    return batches


def _finish(ids: torch.Tensor, tokenizer, eos_ids: set[int], max_new_tokens: int) -> Generation:
    """Turn one row of generated ids (right-padded after it stopped) into a :class:`Generation`."""
    row = ids.tolist()
    n, stop = len(row), None
    for i, t in enumerate(row):
        if t in eos_ids:
            n, stop = i, "eos"
            break
    if stop is None:
        # Finished rows are filled with the pad token after the stop string.
        pad = tokenizer.pad_token_id
        while n and row[n - 1] == pad:
            n -= 1
    text = tokenizer.decode(row[:n], skip_special_tokens=True)
    for marker in STOP_STRINGS:
        cut = text.find(marker)
        if cut >= 0:
            text, stop = text[:cut], "stop_string"
    if stop is None:
        stop = "max_tokens" if n >= max_new_tokens else "eos"
    return Generation(text=text.strip(), new_tokens=n, stop=stop)


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings: GenerationSettings,
    *,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
) -> list[Generation]:
    """Answers for ``prompts`` in their order; batches of ``batch_size`` with left padding."""
    if not prompts:
        return []
    gen_cfg = _generation_config(model, tokenizer, settings)
    eos_ids = set(gen_cfg.eos_token_id)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must line up at the right edge of every row
    try:
        lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
        results: list[Generation | None] = [None] * len(prompts)
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        model_device = next(model.parameters()).device
        bar = tqdm(total=len(prompts), desc=desc, unit="answer", disable=not progress, leave=False)
        for idx in plan_batches(lengths, batch_size):
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(model_device)
            with torch.inference_mode():
                out = model.generate(**enc, generation_config=gen_cfg, tokenizer=tokenizer)
            new = out[:, enc["input_ids"].shape[1] :].cpu()
            for row, i in enumerate(idx):
                results[i] = _finish(new[row], tokenizer, eos_ids, settings.max_new_tokens)
            bar.update(len(idx))
        bar.close()
    finally:
        tokenizer.padding_side = side
    return results  # type: ignore[return-value]
