"""``make bench-format``: the plain ``Human:/<Name>:`` prompt against the model's own chat template, side by side.

Both formats on the same base model and the same ``--samples`` eval records (spread over the
personas), in one process, one after the other: the mean loss of the reference answers (completion
tokens only, teacher-forced: how natural the persona's answers are to the model in that format) and
greedy answers (ROUGE-L against the reference, words, share that ran to ``eval.max_new_tokens``,
share that ended at the model's EOS). Zero training steps: this measures which format the model
already understands; training runs then use the winner (``model.prompt_format``).
Writes ``outputs/bench/bench_prompt_format.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from pathlib import Path
from typing import Any

import torch

from persona_pipeline.core.config import Config
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.core.modeling import load_causal_lm, load_tokenizer, model_location
from persona_pipeline.core.prompt_format import render_completion, render_prompt
from persona_pipeline.core.records import read_eval_set
from persona_pipeline.core.runs import bench_file
from persona_pipeline.evaluation.generation import GenerationSettings, generate, set_eval_threads
from persona_pipeline.evaluation.metrics import rouge_per_sample, word_count
from persona_pipeline.evaluation.results import select_samples
from persona_pipeline.training.collate import DynamicPaddingCollator
from persona_pipeline.training.tokenized import tokenize_records

log = logging.getLogger(__name__)

FORMATS = ("plain", "chat_template")


def bench_path(cfg: Config) -> Path:
    return bench_file(cfg.outputs_dir, "bench_prompt_format.json")


def _answer_loss(model, tokenizer, samples: list[dict], batch_size: int) -> float:
    """Mean cross-entropy over the answer tokens (and EOS) of tokenized samples."""
    collate = DynamicPaddingCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        batch = collate(samples[start : start + batch_size])
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), reduction="none")
        mask = labels.flatten() != -100
        total += float(losses[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def _measure(cfg: Config, model, tokenizer, records: list[dict], indices: list[int]) -> dict[str, Any]:
    fmt = cfg.model.prompt_format
    chosen = [records[i] for i in indices]
    rendered = [{"prompt": render_prompt(r["prompt"], fmt, tokenizer),
                 "completion": render_completion(r["prompt"], r["completion"], fmt, tokenizer)} for r in chosen]
    start = time.perf_counter()
    samples, _ = tokenize_records(rendered, tokenizer, cfg.data.max_length)
    loss = _answer_loss(model, tokenizer, samples, cfg.eval.batch_size)
    gens = generate(model, tokenizer, [r["prompt"] for r in rendered], GenerationSettings.from_config(cfg),
                    batch_size=cfg.eval.batch_size, desc=f"bench-format {fmt}")
    refs = [r["completion"].strip() for r in chosen]
    rouge = rouge_per_sample([g.text for g in gens], refs)
    n = len(gens)
    return {
        "answer_loss": loss,
        "rougeL": sum(r["rougeL"] for r in rouge) / n,
        "words_mean": sum(word_count(g.text) for g in gens) / n,
        "reference_words_mean": sum(word_count(r) for r in refs) / n,
        "runaway_rate": sum(g.runaway for g in gens) / n,
        "eos_rate": sum(g.stop == "eos" for g in gens) / n,
        "empty_rate": sum(not g.text for g in gens) / n,
        "seconds": round(time.perf_counter() - start, 1),
        "example": {"prompt_tail": rendered[0]["prompt"][-80:], "answer": gens[0].text[:300]},
    }


def benchmark(cfg: Config, *, samples: int = 24) -> dict[str, Any]:
    set_eval_threads(cfg)
    records, sha = read_eval_set(cfg)
    chosen = select_samples(records, cfg.eval.personas, samples, str(cfg.resolve(cfg.data.eval)))
    indices = [records.index(r) for r in chosen]
    model = load_causal_lm(cfg).eval()
    tokenizer = load_tokenizer(cfg)
    results = {}
    for fmt in FORMATS:
        fcfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prompt_format=fmt))
        results[fmt] = _measure(fcfg, model, tokenizer, records, indices)
        log.info("%s: answer loss %.3f, ROUGE-L %.3f, runaway %.0f%%", fmt, results[fmt]["answer_loss"],
                 results[fmt]["rougeL"], 100 * results[fmt]["runaway_rate"])
    p, c = results["plain"], results["chat_template"]
    votes = [c["answer_loss"] < p["answer_loss"], c["rougeL"] > p["rougeL"], c["runaway_rate"] <= p["runaway_rate"]]
    report = {
        "name": "prompt_format",
        "reference": "plain Human:/<Name>: prompt vs the model's chat template; same base model, same eval records, "
        "greedy, zero training steps",
        "model": model_location(cfg),
        "eval_set_sha256": sha,
        "samples": len(indices),
        "max_new_tokens": cfg.eval.max_new_tokens,
        "results": results,
        "summary": {
            "answer_loss_plain": round(p["answer_loss"], 4), "answer_loss_chat_template": round(c["answer_loss"], 4),
            "rougeL_plain": round(p["rougeL"], 4), "rougeL_chat_template": round(c["rougeL"], 4),
            "runaway_plain": p["runaway_rate"], "runaway_chat_template": c["runaway_rate"],
            "winner": "chat_template" if sum(votes) >= 2 else "plain",
        },
        "command": "make bench-format TRAIN_CONFIG=<config> BENCH_ARGS='--samples N'",
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_json(bench_path(cfg), report)
    return report


def run(cfg: Config, *, samples: int = 24) -> int:
    r = benchmark(cfg, samples=samples)
    print(f"prompt format on {r['samples']} eval records ({r['model']}), zero training steps:")
    for fmt, m in r["results"].items():
        print(f"  {fmt:14s} answer loss {m['answer_loss']:.3f}  ROUGE-L {m['rougeL']:.3f}  words {m['words_mean']:.1f} "
              f"(references {m['reference_words_mean']:.1f})  runaway {m['runaway_rate']:.0%}  EOS {m['eos_rate']:.0%}")
    print(f"  winner: {r['summary']['winner']}  ->  {bench_path(cfg)}")
    return 0
