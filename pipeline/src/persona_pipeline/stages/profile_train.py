"""Stage ``profile-train``: where the time of one training step goes (``torch.profiler``).

One optimizer step as ``make train`` takes it (the same LoRA model, collator, mask
handling and loss; ``train.batch_size`` x ``train.gradient_accumulation_steps`` samples,
the longest batch of the epoch's length-grouped order, i.e. the slowest step), after one
untimed warm-up step. Writes ``outputs/bench/profile_train.txt`` (operators by self CPU
time) and ``outputs/bench/profile_train.json`` (the phases of the step and the top
operators with their share of the step).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, record_function
from torch.profiler import profile as torch_profile

from persona_pipeline.core.config import Config
from persona_pipeline.core.fsutil import atomic_write_json, atomic_write_text
from persona_pipeline.core.modeling import build_peft_model, load_tokenizer
from persona_pipeline.core.runs import bench_file
from persona_pipeline.training.benchmark import without_lora_dropout
from persona_pipeline.training.collate import EpochLengthGroupedSampler, make_collator, without_redundant_mask
from persona_pipeline.training.loss import label_position_loss
from persona_pipeline.training.tokenized import IGNORE_INDEX, load_tokenized

PHASES = ("forward+loss", "backward", "optimizer")


def _step(model, opt, micro_batches: list[dict], chunk: int, profiler_labels: bool) -> None:
    def label(name):
        return record_function(name) if profiler_labels else contextlib.nullcontext()

    n = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
    for b in micro_batches:
        b = without_redundant_mask(b)
        with label("forward+loss"):
            if chunk:
                loss = label_position_loss(model, b, chunk_size=chunk, num_items_in_batch=n)[0]
            else:
                loss = model(**b, num_items_in_batch=n).loss
        with label("backward"):
            loss.backward()
    with label("optimizer"):
        opt.step()
        opt.zero_grad(set_to_none=True)


def profile(cfg: Config) -> dict[str, Any]:
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    bcfg = without_lora_dropout(cfg)
    tok = load_tokenizer(bcfg)
    ts = load_tokenized(bcfg, "train", tokenizer=tok)
    t = cfg.train
    step = t.batch_size * t.gradient_accumulation_steps
    order = list(EpochLengthGroupedSampler(ts.lengths, step, cfg.seed))
    steps = [order[i : i + step] for i in range(0, len(order) - step + 1, step)]
    longest = max(steps, key=lambda s: sum(ts.lengths[i] for i in s))
    coll = make_collator(t.batching, tok.pad_token_id, cfg.data.max_length)
    micro = [coll([ts.samples[i] for i in longest[k : k + t.batch_size]]) for k in range(0, step, t.batch_size)]
    torch.manual_seed(cfg.seed)
    model = build_peft_model(bcfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate)
    _step(model, opt, micro, t.loss_chunk_size, profiler_labels=False)  # warm-up: optimizer state, allocator
    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        _step(model, opt, micro, t.loss_chunk_size, profiler_labels=True)
    seconds = time.perf_counter() - t0
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    phases = {e.key: round(e.cpu_time_total / total_us, 3) for e in events if e.key in PHASES}
    top = sorted((e for e in events if e.key not in PHASES), key=lambda e: -e.self_cpu_time_total)[:25]
    atomic_write_text(bench_file(cfg.outputs_dir, "profile_train.txt"),
                      events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60))
    result = {
        "name": "profile_train",
        "model": cfg.model.name_or_path,
        "step_seconds_profiled": round(seconds, 2),
        "samples": step, "micro_batches": len(micro), "real_tokens": sum(ts.lengths[i] for i in longest),
        "computed_tokens": sum(int(b["input_ids"].numel()) for b in micro),
        "threads": torch.get_num_threads(), "loss_chunk_size": t.loss_chunk_size,
        "phase_share_of_step": phases,
        "top_operators_by_self_cpu": [
            {"op": e.key, "share": round(e.self_cpu_time_total / total_us, 3), "calls": e.count} for e in top
        ],
        "note": "profiler overhead included; on a shared machine absolute times vary, shares less so",
    }
    atomic_write_json(bench_file(cfg.outputs_dir, "profile_train.json"), result)
    return result


def run(cfg: Config) -> int:
    res = profile(cfg)
    print(f"profile-train ({res['model']}, {res['samples']} samples in {res['micro_batches']} micro-batches, "
          f"{res['real_tokens']} real tokens, {res['threads']} threads): {res['step_seconds_profiled']} s")
    print("  phases: " + ", ".join(f"{k} {v:.0%}" for k, v in res["phase_share_of_step"].items()))
    for op in res["top_operators_by_self_cpu"][:12]:
        print(f"  {op['share']:6.1%}  {op['op']}  ({op['calls']} calls)")
    print(f"  written to {bench_file(cfg.outputs_dir, 'profile_train.json')} and profile_train.txt")
    return 0
