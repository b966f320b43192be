"""``make bench-eval``: the same eval prompts generated one at a time (the reference loop) and batched.

Both variants run in one process on the same model with greedy decoding, one
after the other, ``--repeats`` times; medians are reported. Greedy
outputs must be identical (batching is an optimisation, not a change of
model). The model is the latest run's (adapter merged in memory) when there
is one, else the base model. Writes ``outputs/bench/bench_eval.json``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import statistics
import time
from dataclasses import replace

import torch

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.core.modeling import device
from persona_pipeline.core.prompt_format import render_prompt
from persona_pipeline.core.records import persona_of, read_eval_set
from persona_pipeline.core.runs import RunDir, bench_file
from persona_pipeline.evaluation.generation import GenerationSettings, generate, load_eval_model, plan_batches, set_eval_threads
from persona_pipeline.evaluation.results import select_samples

log = logging.getLogger(__name__)

TARGET_SPEEDUP = 5.0


def _model_for_bench(cfg: Config):
    """(model, tokenizer, description): the latest run's model if there is one, else the base model."""
    run_dir: RunDir | None = None
    if cfg.eval.source != "base":
        try:
            run_dir = RunDir.resolve(cfg.runs_dir, "latest")
            run_dir.require_merged() if cfg.eval.source == "merged" else run_dir.require_adapter()
        except PipelineError as exc:
            log.info("benchmarking the base model: %s", str(exc).splitlines()[0])
            run_dir, cfg = None, replace(cfg, eval=replace(cfg.eval, source="base"))
    return load_eval_model(cfg, run_dir)


def benchmark(cfg: Config, *, samples: int = 32, repeats: int = 3) -> dict:
    """Run the benchmark and write ``outputs/bench/bench_eval.json``; returns its content."""
    records, sha = read_eval_set(cfg)
    chosen = select_samples(records, cfg.eval.personas, samples, str(cfg.resolve(cfg.data.eval)))
    model, tokenizer, desc = _model_for_bench(cfg)
    prompts = [render_prompt(r["prompt"], cfg.model.prompt_format, tokenizer) for r in chosen]
    settings = replace(GenerationSettings.from_config(cfg), do_sample=False)
    bs = cfg.eval.batch_size

    # The prompt pass alone (1 new token) is compute-bound and gains little from batching;
    # measuring it separately shows how much of the difference comes from the decoding steps.
    prefill = replace(settings, max_new_tokens=1)
    times: dict[str, list[float]] = {"one_at_a_time": [], "batched": [], "prefill_one_at_a_time": [], "prefill_batched": []}
    seq = bat = []

    def timed(key: str, gen_settings, size: int, desc: str):
        t = time.perf_counter()
        out = generate(model, tokenizer, prompts, gen_settings, batch_size=size, desc=desc)
        times[key].append(time.perf_counter() - t)
        return out

    for rep in range(repeats):
        seq = timed("one_at_a_time", settings, 1, f"one at a time ({rep + 1})")
        bat = timed("batched", settings, bs, f"batched {bs} ({rep + 1})")
        timed("prefill_one_at_a_time", prefill, 1, f"prompt pass, one at a time ({rep + 1})")
        timed("prefill_batched", prefill, bs, f"prompt pass, batched ({rep + 1})")
        log.info("repeat %d: one at a time %.2fs, batched %.2fs", rep + 1, times["one_at_a_time"][-1], times["batched"][-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    same = sum(a.text == b.text for a, b in zip(seq, bat, strict=True))
    seq_s, bat_s = med["one_at_a_time"], med["batched"]
    speedup = seq_s / bat_s if bat_s > 0 else float("inf")
    decode_seq, decode_bat = seq_s - med["prefill_one_at_a_time"], bat_s - med["prefill_batched"]
    new_tokens = sum(g.new_tokens for g in bat)
    prompt_tokens = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    result = {
        "name": "bench_eval",
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "reference": "the reference pipeline's loop: one eval prompt at a time; same model, prompts and greedy settings",
        "device": str(device()),
        "threads": torch.get_num_threads(),
        "model": desc,
        "eval_set_sha256": sha,
        "prompts": len(prompts),
        "personas": sorted({str(persona_of(r)) for r in chosen}),
        "batch_size": bs,
        "batches": [len(b) for b in plan_batches(prompt_tokens, bs)],
        "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
        "prompt_tokens_max": max(prompt_tokens),
        "max_new_tokens": settings.max_new_tokens,
        "new_tokens": new_tokens,
        "new_tokens_mean": new_tokens / len(bat),
        "runaway": sum(g.runaway for g in bat),
        "repeats": repeats,
        "seconds": times,
        "identical_outputs": same,
        "summary": {
            "speedup_batched_vs_one_at_a_time": round(speedup, 2),
            "target_speedup": TARGET_SPEEDUP,
            "meets_target": speedup >= TARGET_SPEEDUP,
            "greedy_outputs_identical": same == len(prompts),
            "identical": f"{same}/{len(prompts)}",
            "one_at_a_time_s": round(seq_s, 2),
            "batched_s": round(bat_s, 2),
            "prompt_pass_speedup": round(med["prefill_one_at_a_time"] / med["prefill_batched"], 2) if med["prefill_batched"] else None,
            "decoding_speedup": round(decode_seq / decode_bat, 2) if decode_bat > 0 else None,
            "batched_new_tokens_per_s": round(new_tokens / bat_s, 1) if bat_s else None,
        },
    }
    path = bench_file(cfg.outputs_dir, "bench_eval.json")
    atomic_write_json(path, result)
    result["path"] = str(path)
    return result


def run(cfg: Config, *, samples: int = 32, repeats: int = 3) -> int:
    set_eval_threads(cfg)
    res = benchmark(cfg, samples=samples, repeats=repeats)
    s = res["summary"]
    print(f"bench-eval: {res['prompts']} prompts, batch {res['batch_size']}, {res['device']}, {res['threads']} threads -> {res['path']}")
    print(f"  one at a time {s['one_at_a_time_s']}s, batched {s['batched_s']}s: {s['speedup_batched_vs_one_at_a_time']}x "
          f"(target {TARGET_SPEEDUP:g}x{'' if s['meets_target'] else ', NOT met'}); greedy outputs identical: {s['identical']}")
    print(f"  prompt pass {s['prompt_pass_speedup']}x, decoding steps {s['decoding_speedup']}x "
          f"(prompts {res['prompt_tokens_mean']:.0f} tokens on average, answers {res['new_tokens_mean']:.0f})")
    if not s["greedy_outputs_identical"]:
        print("  warning: batched greedy outputs differ from one-at-a-time outputs (numerical ties under padding)")
    return 0
