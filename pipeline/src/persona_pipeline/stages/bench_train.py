"""Stage ``bench-train``: real-token throughput of our batching vs padding every sample to max_length.

Fair by construction: every variant trains the same LoRA model from the same initial
weights on the *same batches* (the length-grouped order ``make train`` uses, spread over
the whole epoch) with the same optimizer; only the collator differs:

* ``pad_to_max`` (the reference): each sample padded to ``data.max_length`` (512);
* ``group_by_length`` (ours, the default): padded to the longest sample of the batch;
* ``packed``: the batch concatenated into one row, positions restarting per sample.

Because the samples per step are identical and the loss is a mean over completion
tokens, the loss curves must match (reported as the largest per-step difference);
LoRA dropout is set to 0 here so that random masks of different shapes do not blur
that comparison. Variants alternate inside each repeat (rotating the order) and
the median of the repeats is reported, as timings on a shared 2-core machine are noisy.

Peak memory: on CUDA, the allocator's peak per variant. On CPU, torch's allocations
are invisible to tracemalloc, so each variant runs 2 steps in its own fresh process;
the peak RSS (VmHWM, reset through /proc/self/clear_refs once the model is loaded) minus
the RSS at that point is the memory the training steps needed.
"""

from __future__ import annotations

import logging
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from persona_pipeline.core import procmem
from persona_pipeline.core.config import Config
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.core.modeling import build_peft_model, load_tokenizer
from persona_pipeline.core.modeling import device as pick_device
from persona_pipeline.core.runs import bench_file
from persona_pipeline.training.benchmark import config_arg, without_lora_dropout
from persona_pipeline.training.collate import EpochLengthGroupedSampler, make_collator, padded_tokens, real_tokens
from persona_pipeline.training.tokenized import load_tokenized

log = logging.getLogger(__name__)

VARIANTS = ("pad_to_max", "group_by_length", "packed")
REFERENCE = "pad_to_max"
TARGET_RATIO = 3.0


def bench_path(cfg: Config) -> Path:
    return bench_file(cfg.outputs_dir, "bench_train.json")


def pick_batches(lengths: list[int], batch_size: int, n: int, seed: int) -> list[list[int]]:
    """``n`` batches of sample indices in training order, evenly spread over one epoch."""
    order = list(EpochLengthGroupedSampler(lengths, batch_size, seed))
    batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    if not batches:
        raise ValueError(f"need at least {batch_size} samples, got {len(lengths)}")
    stride = max(1, len(batches) // n)
    return [batches[(i * stride) % len(batches)] for i in range(n)]


def _collators(pad_id: int, max_length: int) -> dict:
    return {v: make_collator(v, pad_id, max_length) for v in VARIANTS}


def _train_steps(model, init_state, batches, lr: float, device) -> tuple[list[float], list[float]]:
    """Reset the adapter, then one optimizer step per batch; returns (losses, seconds per step)."""
    model.load_state_dict(init_state, strict=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses, times = [], []
    for batch in batches:
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return losses, times


def _memory_child(cfg: Config, variant: str, batch_samples: list[list[dict]]) -> float:
    """In a fresh process: load, reset the RSS peak, train 2 steps with ``variant``; the peak growth (MiB)."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    tok = load_tokenizer(cfg)
    model = build_peft_model(cfg)
    coll = _collators(tok.pad_token_id, cfg.data.max_length)[variant]
    batches = [coll(b) for b in batch_samples]
    init = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    procmem.reset_peak()
    before = procmem.read_mib("VmRSS")
    _train_steps(model, init, batches, cfg.train.learning_rate, torch.device("cpu"))
    return procmem.read_mib("VmHWM") - before


def _cpu_peak_memory(cfg: Config, batch_samples: list[list[dict]]) -> dict[str, float | None]:
    """One fresh ``python -m persona_pipeline.stages.bench_train`` per variant (run side by side: RSS is per process)."""
    if not procmem.available():
        return {v: None for v in VARIANTS}
    procs = {}
    for variant in VARIANTS:
        err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child cannot block on it
        p = subprocess.Popen([sys.executable, "-m", "persona_pipeline.stages.bench_train"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=err)
        p.stdin.write(pickle.dumps((cfg, variant, batch_samples)))  # token ids stay off the disk
        p.stdin.close()
        procs[variant] = (p, err)
    out: dict[str, float | None] = {}
    for variant, (p, err) in procs.items():
        stdout = p.stdout.read().decode()
        p.wait(timeout=900)
        try:
            out[variant] = round(float(stdout.strip().splitlines()[-1]), 1)
        except (ValueError, IndexError):  # a failed measurement is reported as missing, not fatal
            err.seek(0)
            log.warning("peak memory of %s not measured: %s", variant, err.read().decode()[-500:])
            out[variant] = None
        err.close()
    return out


def bench(cfg: Config, *, steps: int = 8, repeats: int = 3, memory: bool = True, command: str | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``outputs/bench/bench_train.json`` and return its content.

    ``command`` is recorded as the way to reproduce the figures (default: the make target).
    """
    bcfg = without_lora_dropout(cfg)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    tok = load_tokenizer(bcfg)
    ts = load_tokenized(bcfg, "train", tokenizer=tok)
    bs = cfg.train.batch_size
    index_batches = pick_batches(ts.lengths, bs, steps + 1, cfg.seed)  # +1: an untimed warm-up step
    sample_batches = [[ts.samples[i] for i in b] for b in index_batches]
    collators = _collators(tok.pad_token_id, cfg.data.max_length)
    batches = {v: [c(b) for b in sample_batches] for v, c in collators.items()}

    dev = pick_device()
    torch.manual_seed(cfg.seed)
    model = build_peft_model(bcfg).to(dev)
    init = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}

    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    gpu_peak: dict[str, float] = {}
    order = list(VARIANTS)
    for r in tqdm(range(repeats), desc="bench-train", unit="repeat"):
        for v in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            losses, times = _train_steps(model, init, batches[v], cfg.train.learning_rate, dev)
            if dev.type == "cuda":
                gpu_peak[v] = max(gpu_peak.get(v, 0.0), torch.cuda.max_memory_allocated() / 2**20)
            timed = batches[v][1:]
            runs[v].append({
                "seconds": sum(times[1:]),
                "real_tokens": sum(real_tokens(b) for b in timed),
                "computed_tokens": sum(padded_tokens(b) for b in timed),
                "losses": losses,
            })

    if dev.type == "cuda":
        peak, method = {v: round(gpu_peak[v], 1) for v in VARIANTS}, "torch.cuda.max_memory_allocated per variant (MiB)"
    elif memory:
        peak = _cpu_peak_memory(bcfg, sample_batches[:2])
        method = "peak RSS growth over 2 training steps in a fresh process per variant (VmHWM reset via /proc/self/clear_refs), MiB"
    else:
        peak, method = {v: None for v in VARIANTS}, "not measured"

    variants: dict[str, dict] = {}
    for v in VARIANTS:
        tps = [x["real_tokens"] / x["seconds"] for x in runs[v]]
        first = runs[v][0]
        variants[v] = {
            "real_tokens_per_second_median": round(statistics.median(tps), 1),
            "real_tokens_per_second_runs": [round(t, 1) for t in tps],
            "real_tokens_per_step": round(first["real_tokens"] / steps, 1),
            "computed_tokens_per_step": round(first["computed_tokens"] / steps, 1),
            "padding_fraction": round(1 - first["real_tokens"] / first["computed_tokens"], 3),
            "peak_memory_mib": peak[v],
            "loss_curve": [round(x, 6) for x in first["losses"]],
        }
    ref = variants[REFERENCE]
    ref_curve = runs[REFERENCE][0]["losses"]
    loss_diff = {
        v: max(abs(a - b) for a, b in zip(runs[v][0]["losses"], ref_curve, strict=True)) for v in VARIANTS if v != REFERENCE
    }

    def ratio(v: str) -> float:
        return round(variants[v]["real_tokens_per_second_median"] / ref["real_tokens_per_second_median"], 2)

    def mem_ratio(v: str):
        return round(peak[v] / peak[REFERENCE], 3) if peak[v] and peak[REFERENCE] else None

    best = max(("group_by_length", "packed"), key=lambda v: variants[v]["real_tokens_per_second_median"])
    result = {
        "name": "bench_train",
        "reference": f"every sample padded to max_length={cfg.data.max_length} (pad_to_max); same model, "
        "initial weights, optimizer and batches as the other variants",
        "summary": {
            "throughput_ratio_group_by_length": ratio("group_by_length"),
            "throughput_ratio_packed": ratio("packed"),
            "best_variant": best,
            "target_ratio": TARGET_RATIO,
            "target_met": ratio(best) >= TARGET_RATIO,
            "peak_memory_ratio_group_by_length": mem_ratio("group_by_length"),
            "peak_memory_ratio_packed": mem_ratio("packed"),
            "loss_curve_max_abs_diff_group_by_length": float(f"{loss_diff['group_by_length']:.3g}"),
            "loss_curve_max_abs_diff_packed": float(f"{loss_diff['packed']:.3g}"),
        },
        "variants": variants,
        "memory_method": method,
        "settings": {
            "config": cfg.name,
            "model": cfg.model.name_or_path,
            "device": str(dev),
            "dtype": str(next(model.parameters()).dtype),
            "batch_size": bs,
            "timed_steps": steps,
            "repeats": repeats,
            "max_length": cfg.data.max_length,
            "train_samples": len(ts.samples),
            "mean_sample_tokens": ts.stats["mean_len"],
            "lora_r": cfg.lora.r,
            "lora_dropout": 0.0,
            "torch_threads": torch.get_num_threads(),
            "loop": "plain PyTorch loop (forward, backward, AdamW step) over the same collators the Trainer uses",
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "command": command or f"make bench-train TRAIN_CONFIG={config_arg(cfg)}",
    }
    atomic_write_json(bench_path(cfg), result)
    return result


def run(cfg: Config, *, steps: int = 8, repeats: int = 3, overrides: tuple[str, ...] = ()) -> int:
    overrides = " ".join(overrides)
    command = (f"make bench-train TRAIN_CONFIG={config_arg(cfg)} BENCH_ARGS='--steps {steps} --repeats {repeats}'"
               + (f" ARGS='{overrides}'" if overrides else ""))
    res = bench(cfg, steps=steps, repeats=repeats, command=command)
    s, v = res["summary"], res["variants"]
    print(f"bench-train ({res['settings']['device']}, batch {res['settings']['batch_size']}, "
          f"{res['settings']['timed_steps']} steps x {res['settings']['repeats']} repeats, medians):")
    for name in VARIANTS:
        x = v[name]
        mem = f"{x['peak_memory_mib']} MiB" if x["peak_memory_mib"] is not None else "n/a"
        print(f"  {name:16s} {x['real_tokens_per_second_median']:>9.1f} real tokens/s  "
              f"padding {x['padding_fraction']:.0%}  peak memory {mem}")
    print(f"  throughput vs pad_to_max: group_by_length {s['throughput_ratio_group_by_length']}x, "
          f"packed {s['throughput_ratio_packed']}x (target >= {TARGET_RATIO}x: "
          f"{'met' if s['target_met'] else 'NOT met'})")
    print(f"  loss curves vs reference, max |diff|: group_by_length {s['loss_curve_max_abs_diff_group_by_length']}, "
          f"packed {s['loss_curve_max_abs_diff_packed']}")
    print(f"  written to {bench_path(cfg)}")
    return 0


if __name__ == "__main__":  # the memory-measurement child of _cpu_peak_memory
    print(_memory_child(*pickle.loads(sys.stdin.buffer.read())))
