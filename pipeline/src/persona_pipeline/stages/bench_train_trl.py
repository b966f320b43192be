"""Stage ``bench-train-trl``: the project's training against TRL's ``SFTTrainer``, side by side.

Every variant trains the same LoRA model (same initial weights, LoRA dropout 0) for one
epoch over the same seeded subset of the training set (``--steps`` x samples-per-step,
already tokenized, so every variant sees exactly the same tokens and labels), with the
same learning rate, schedule, samples per optimizer step and optimizer (TRL takes a step's
samples in one batch; the project in its configured micro-batches with gradient
accumulation, the same loss normalised over the whole step):

* ``trl_defaults``: ``SFTConfig`` defaults (bf16 autocast, gradient checkpointing);
* ``trl_best``: fp32, no checkpointing, transformers' length-grouped sampler;
* ``trl_padding_free``: fp32, no checkpointing, ``padding_free=True`` (``max_length=None``);
* ``project``: the ``PersonaTrainer``, collator, sampler and loss that ``make train`` builds;
* ``project_full_logits``: the same with the model's own full-logits loss (``loss_chunk_size=0``).

A variant may name its thread count (``project@2``); without one, ``train.num_threads``.

Each (variant, repeat) runs in a fresh child process, one at a time (RSS is per process
and a fresh process starts every variant from the same allocator state); the order
rotates between repeats. Reported per variant: real (non-padding) tokens per second of
``trainer.train()`` (median and min-max over repeats), the padding share, the peak RSS
growth during training (VmHWM reset after loading) and the absolute peak, and the eval
loss after training, computed for every variant by the same function (mean over the
label tokens of the first ``--samples`` eval samples, first repeat only).
Ratios are paired: project / other within the same repeat. The load average is recorded
with every child, as timings on a shared machine vary with what else runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import pickle
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from persona_pipeline.core import procmem
from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_write_json
from persona_pipeline.core.modeling import build_peft_model, load_tokenizer, resolve_dtype
from persona_pipeline.core.runs import bench_file
from persona_pipeline.training.arguments import training_arguments
from persona_pipeline.training.benchmark import config_arg, without_lora_dropout
from persona_pipeline.training.callbacks import PersonaTrainer
from persona_pipeline.training.collate import DynamicPaddingCollator, TokenizedDataset, make_collator, padded_tokens, real_tokens
from persona_pipeline.training.loss import label_position_loss
from persona_pipeline.training.tokenized import IGNORE_INDEX, load_tokenized

log = logging.getLogger(__name__)

TRL_VARIANTS = ("trl_defaults", "trl_best", "trl_padding_free")
PROJECT_VARIANTS = ("project", "project_full_logits")
VARIANTS = (*TRL_VARIANTS, *PROJECT_VARIANTS)
DEFAULT_VARIANTS = ("trl_defaults", "trl_best", "trl_padding_free", "project")
TARGET_RATIO = 1.3  # project vs trl_best, real tokens/s (issue 15)


def bench_path(cfg: Config) -> Path:
    """One file per config: the tiny model's and SmolLM2's comparisons do not overwrite each other."""
    return bench_file(cfg.outputs_dir, f"bench_train_trl_{cfg.name}.json")


def parse_variant(spec: str, default_threads: int | None) -> tuple[str, int | None]:
    """``"project@2"`` -> ("project", 2); an unknown name is a PipelineError."""
    name, _, threads = spec.partition("@")
    if name not in VARIANTS or (threads and not threads.isdigit()):
        raise PipelineError(f"bench-train-trl --variants: unknown variant {spec!r}",
                            hint=f"use {', '.join(VARIANTS)}, optionally with @THREADS (e.g. project@2)")
    return name, int(threads) if threads else default_threads


# --------------------------------------------------------------------------- child process


class _CountingCollator:
    """Wraps a collator; counts the real and computed token positions of every batch."""

    def __init__(self, inner):
        self.inner, self.real, self.computed = inner, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.real += real_tokens(batch)
        self.computed += padded_tokens(batch)
        return batch


def _step_samples(cfg: Config) -> int:
    """Samples per optimizer step: TRL takes them in one batch, the project in its configured micro-batches."""
    return cfg.train.batch_size * cfg.train.gradient_accumulation_steps


def _common_args(cfg: Config, out_dir: str) -> dict[str, Any]:
    """The TrainingArguments every variant shares (taken from the config, as `make train` does)."""
    t = cfg.train
    return dict(
        output_dir=out_dir, per_device_train_batch_size=_step_samples(cfg), learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, num_train_epochs=1, max_steps=-1, optim=t.optim, seed=cfg.seed,
        eval_strategy="no", save_strategy="no", logging_steps=10**6, report_to="none", disable_tqdm=True,
        dataloader_pin_memory=False, use_cpu=not torch.cuda.is_available(),
    )


def _project_trainer(cfg: Config, model, tok, samples: list[dict], out_dir: str, loss_chunk_size: int):
    args = training_arguments(cfg, Path(out_dir), has_cuda=torch.cuda.is_available(), dtype=resolve_dtype(cfg))
    keep = {"per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "optim", "seed"}
    args = dataclasses.replace(args, **{k: v for k, v in _common_args(cfg, out_dir).items() if k not in keep})
    return PersonaTrainer(
        model=model, args=args, train_dataset=TokenizedDataset(samples),
        data_collator=make_collator(cfg.train.batching, tok.pad_token_id, cfg.data.max_length),
        processing_class=tok, train_lengths=[len(s["input_ids"]) for s in samples],
        batching=cfg.train.batching, loss_chunk_size=loss_chunk_size,
    )


def _trl_trainer(variant: str, cfg: Config, model, tok, samples: list[dict], out_dir: str):
    # TRL is the optional `bench` extra: imported only when a TRL variant runs.
    from trl import SFTConfig, SFTTrainer

    extra: dict[str, Any] = {"max_length": cfg.data.max_length}
    if variant != "trl_defaults":
        extra.update(bf16=False, gradient_checkpointing=False)
    if variant == "trl_best":
        extra["train_sampling_strategy"] = "group_by_length"
    if variant == "trl_padding_free":
        extra.update(padding_free=True, max_length=None)  # TRL refuses padding_free with a max_length
    args = SFTConfig(**_common_args(cfg, out_dir), **extra)
    # Tokenized rows with our labels: TRL keeps a given "labels" column as it is (same supervision).
    data = Dataset.from_list([{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples])
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)


def _eval_loss(model, samples: list[dict], pad_id: int, batch_size: int) -> float:
    """Mean loss over the label tokens of ``samples`` (one function for every variant)."""
    coll = DynamicPaddingCollator(pad_id)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            batch = coll(samples[i : i + batch_size])
            total += label_position_loss(model, batch, num_items_in_batch=1)[0].item()  # the sum
            count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return total / count


def run_variant(cfg: Config, variant: str, threads: int | None, train: list[dict], evl: list[dict]) -> dict:
    """Train one variant for one epoch over ``train`` in this process; its figures."""
    if threads:
        torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    tok = load_tokenizer(cfg)
    torch.manual_seed(cfg.seed)
    model = build_peft_model(cfg)
    with tempfile.TemporaryDirectory() as out:
        if variant in PROJECT_VARIANTS:
            chunk = cfg.train.loss_chunk_size if variant == "project" else 0
            trainer = _project_trainer(cfg, model, tok, train, out, chunk)
        else:
            trainer = _trl_trainer(variant, cfg, model, tok, train, out)
        trainer.data_collator = counter = _CountingCollator(trainer.data_collator)
        procmem.reset_peak()
        rss_before = procmem.read_mib("VmRSS")
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        peak = procmem.read_mib("VmHWM")
    eval_loss = _eval_loss(model, evl, tok.pad_token_id, cfg.train.batch_size) if evl else None
    return {
        "variant": variant, "threads": torch.get_num_threads(), "seconds": seconds,
        "real_tokens": counter.real, "computed_tokens": counter.computed,
        "real_tokens_per_second": counter.real / seconds, "peak_rss_growth_mib": peak - rss_before,
        "peak_rss_mib": peak, "eval_loss": eval_loss, "loadavg_1min_at_start": load,
    }


# --------------------------------------------------------------------------- parent


def _spawn(cfg: Config, variant: str, threads: int | None, train: list[dict], evl: list[dict]) -> dict:
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child cannot block on it
        p = subprocess.Popen([sys.executable, "-m", "persona_pipeline.stages.bench_train_trl"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        out, _ = p.communicate(pickle.dumps((cfg, variant, threads, train, evl)))  # token ids stay off disk
        if p.returncode != 0:
            err.seek(0)
            raise PipelineError(f"bench-train-trl: variant {variant} failed (exit {p.returncode}):\n"
                                + err.read().decode(errors="replace")[-2000:])
    return json.loads(out.decode().strip().splitlines()[-1])


def _stats(xs: list[float], nd: int = 1) -> dict:
    return {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd), "max": round(max(xs), nd)}


def bench(cfg: Config, *, steps: int, repeats: int, variants: tuple[str, ...], eval_samples: int,
          command: str | None = None) -> dict[str, Any]:
    """Run the comparison, write ``outputs/bench/bench_train_trl_<config>.json`` and return its content."""
    if len(set(variants)) != len(variants):
        raise PipelineError(f"bench-train-trl --variants: a variant is named twice in {','.join(variants)}")
    specs = [parse_variant(s, cfg.train.num_threads) for s in variants]
    if any(n in TRL_VARIANTS for n, _ in specs) and importlib.util.find_spec("trl") is None:
        raise PipelineError("bench-train-trl needs TRL, which is not installed",
                            hint="make bench-train installs it; or: .venv/bin/python -m pip install -e '.[bench]'")
    if not procmem.available():
        raise PipelineError("bench-train-trl measures peak RSS through /proc/self/clear_refs (Linux only)")
    bcfg = without_lora_dropout(cfg)
    tok = load_tokenizer(bcfg)
    train_ts = load_tokenized(bcfg, "train", tokenizer=tok)
    eval_ts = load_tokenized(bcfg, "eval", tokenizer=tok)
    n = min(len(train_ts.samples), steps * _step_samples(cfg))
    idx = sorted(random.Random(cfg.seed).sample(range(len(train_ts.samples)), n))
    train = [train_ts.samples[i] for i in idx]
    evl = list(eval_ts.samples[:eval_samples])

    names = list(variants)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    with tqdm(total=repeats * len(specs), desc="bench-train-trl", unit="run") as bar:
        for r in range(repeats):
            order = list(range(len(specs)))
            for i in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
                (v, t), key = specs[i], names[i]
                runs[key].append(_spawn(bcfg, v, t, train, evl if r == 0 else []))
                bar.update()

    variants = {}
    for key, rs in runs.items():
        first = rs[0]
        variants[key] = {
            "real_tokens_per_second": _stats([x["real_tokens_per_second"] for x in rs]),
            "padding_fraction": round(1 - first["real_tokens"] / first["computed_tokens"], 3),
            "peak_rss_growth_mib": _stats([x["peak_rss_growth_mib"] for x in rs]),
            "peak_rss_mib": _stats([x["peak_rss_mib"] for x in rs]),
            "eval_loss": round(first["eval_loss"], 5) if first["eval_loss"] is not None else None,
            "threads": first["threads"],
            "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in x.items()} for x in rs],
        }
    summary: dict[str, Any] = {}
    ours = [k for k in names if k.partition("@")[0] == "project"]
    for o in ours:
        for other in names:
            if other == o:
                continue
            paired = [a["real_tokens_per_second"] / b["real_tokens_per_second"]
                      for a, b in zip(runs[o], runs[other], strict=True)]
            entry = {"throughput_ratio": _stats(paired, 3)}
            mo, mb = variants[o]["peak_rss_growth_mib"]["median"], variants[other]["peak_rss_growth_mib"]["median"]
            entry["peak_rss_growth_ratio"] = round(mo / mb, 3) if mb > 0 else None
            eo, eb = variants[o]["eval_loss"], variants[other]["eval_loss"]
            entry["eval_loss_relative_diff"] = round(eo / eb - 1, 4) if eo and eb else None
            summary[f"{o}_vs_{other}"] = entry
    if "project" in names and "trl_best" in names:
        s = summary["project_vs_trl_best"]
        summary["target"] = {
            "throughput_ratio_at_least": TARGET_RATIO,
            "throughput_met": s["throughput_ratio"]["median"] >= TARGET_RATIO,
            "peak_rss_not_higher": s["peak_rss_growth_ratio"] is not None and s["peak_rss_growth_ratio"] <= 1.0,
            "eval_loss_within_1pct": s["eval_loss_relative_diff"] is not None
            and abs(s["eval_loss_relative_diff"]) <= 0.01,
        }
    result = {
        "name": "bench_train_trl",
        "summary": summary,
        "variants": variants,
        "settings": {
            "config": cfg.name, "model": cfg.model.name_or_path, "batch_size": _step_samples(cfg),
            "project_micro_batch": cfg.train.batch_size,
            "gradient_accumulation_steps_project": cfg.train.gradient_accumulation_steps,
            "train_samples": n, "optimizer_steps": -(-n // _step_samples(cfg)), "epochs": 1,
            "eval_samples": len(evl), "repeats": repeats, "lora_r": cfg.lora.r, "lora_dropout": 0.0,
            "learning_rate": cfg.train.learning_rate, "batching": cfg.train.batching,
            "loss_chunk_size": cfg.train.loss_chunk_size, "max_length": cfg.data.max_length,
            "trl": _version("trl"), "transformers": _version("transformers"),
            "timing": "wall time of trainer.train() in a fresh process per (variant, repeat), children run one "
            "at a time; peak RSS growth = VmHWM after training minus VmRSS before (VmHWM reset via clear_refs)",
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "note": "shared machine: see loadavg_1min_at_start per run"},
        "command": command or f"make bench-train TRAIN_CONFIG={config_arg(cfg)}",
    }
    atomic_write_json(bench_path(cfg), result)
    return result


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def run(cfg: Config, *, steps: int = 40, repeats: int = 3, samples: int = 48,
        variants: tuple[str, ...] = DEFAULT_VARIANTS, overrides: tuple[str, ...] = ()) -> int:
    opts = f"--steps {steps} --repeats {repeats} --samples {samples} --variants {','.join(variants)}"
    extra = f" ARGS='{' '.join(overrides)}'" if overrides else ""
    command = f"make bench-train-trl TRAIN_CONFIG={config_arg(cfg)} BENCH_ARGS='{opts}'{extra}"
    res = bench(cfg, steps=steps, repeats=repeats, variants=tuple(variants), eval_samples=samples, command=command)
    st = res["settings"]
    print(f"bench-train-trl ({st['model']}, {st['train_samples']} samples = {st['optimizer_steps']} steps of "
          f"{st['batch_size']}, {st['repeats']} repeats; medians [min-max]):")
    for key, x in res["variants"].items():
        tps, mem = x["real_tokens_per_second"], x["peak_rss_growth_mib"]
        print(f"  {key:18s} {tps['median']:>8.1f} [{tps['min']:.0f}-{tps['max']:.0f}] real tokens/s  "
              f"padding {x['padding_fraction']:.1%}  peak RSS +{mem['median']:.0f} MiB  eval loss {x['eval_loss']}")
    for key, s in res["summary"].items():
        if key != "target":
            r, diff = s["throughput_ratio"], s["eval_loss_relative_diff"]
            loss = f"eval loss {diff:+.2%}" if diff is not None else "eval loss not measured (no eval samples)"
            print(f"  {key}: {r['median']}x [{r['min']}-{r['max']}] tokens/s, peak RSS x{s['peak_rss_growth_ratio']}, {loss}")
    if "target" in res["summary"]:
        print(f"  target (project >= {TARGET_RATIO}x trl_best, RSS not higher, eval loss within 1%): "
              f"{res['summary']['target']}")
    print(f"  written to {bench_path(cfg)}")
    return 0


if __name__ == "__main__":  # a child of _spawn
    logging.disable(logging.WARNING)
    print(json.dumps(run_variant(*pickle.loads(sys.stdin.buffer.read()))))
