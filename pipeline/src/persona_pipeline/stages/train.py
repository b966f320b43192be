"""Stage ``train``: LoRA / QLoRA fine-tuning with the transformers ``Trainer`` and peft.

A run lives in ``outputs/runs/<timestamp>/``::

    config.yaml          resolved config (secrets redacted)
    train.log            what the console showed (metrics, warnings, the summary)
    logs/                TensorBoard: loss, learning_rate, grad_norm, tokens_per_second, eval_loss
    checkpoints/         checkpoint-N/ (adapter, optimizer, scheduler, RNG states, trainer state)
    adapter/             the final LoRA adapter + tokenizer
    base_eval.json       eval loss of the base model, measured before the first step
    train_summary.json   losses per epoch, tokens, time, samples, peak RSS per phase

Every input (model, key, data) is checked before the run folder is created, so a bad
input never switches ``runs/latest`` to a broken run. ``resume`` continues a run from
its last complete checkpoint; Ctrl-C (or SIGTERM) saves a checkpoint and stops with
exit code 130. Launched with several processes (``torchrun``, see ``make train NPROC=2``),
rank 0 alone creates the run folder and broadcasts its path; every rank draws the same
seeded length-grouped order and the Trainer gives each rank its own share of batches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from persona_pipeline.core.config import Config, dump_config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_dir, atomic_write_json, atomic_write_text
from persona_pipeline.core.procmem import PhasePeaks
from persona_pipeline.core.runs import mark_latest, new_run_dir, resolve_run

log = logging.getLogger(__name__)

RUN_NAME_ENV = "PERSONA_RUN_NAME"
# Test hook: each rank writes the sample indices it trained on and the files it wrote here.
TRACE_ENV = "PERSONA_TRAIN_TRACE_DIR"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"


class TrainingInterrupted(PipelineError):
    """Ctrl-C / SIGTERM: a checkpoint was saved; the CLI exits with 130."""

    exit_code = 130


# --------------------------------------------------------------------------- checkpoints


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first; one killed mid-save (no trainer_state.json) is skipped."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        step = p.name.removeprefix("checkpoint-")
        if p.is_dir() and step.isdigit() and (p / TRAINER_STATE).is_file():
            found.append((int(step), p))
    return [p for _, p in sorted(found)]


def last_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of ``run_dir``, or a PipelineError saying there is none."""
    ckpts = complete_checkpoints(run_dir)
    if not ckpts:
        raise PipelineError(
            f"cannot resume {run_dir}: it has no complete checkpoint under {run_dir / CHECKPOINTS}",
            hint="start a new run with `make train` (without RESUME); checkpoints are written every "
            "train.save_steps steps, or at each epoch end when it is null",
        )
    return ckpts[-1]


def _drop_partial_checkpoints(run_dir: Path, keep_upto: Path) -> None:
    """Remove checkpoint folders newer than the resume point (left by a kill mid-save)."""
    step = int(keep_upto.name.removeprefix("checkpoint-"))
    for p in (run_dir / CHECKPOINTS).iterdir():
        s = p.name.removeprefix("checkpoint-")
        if p.is_dir() and s.isdigit() and int(s) > step:
            log.warning("removing incomplete checkpoint %s", p)
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- model


def build_peft_model(cfg: Config):
    """Base model (4-bit for QLoRA) wrapped with the LoRA adapter described by ``cfg.lora``."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from persona_pipeline.core.modeling import load_causal_lm

    model = load_causal_lm(cfg)
    if cfg.quantization.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing
        )
    lc = cfg.lora
    peft_config = LoraConfig(
        r=lc.r,
        lora_alpha=lc.lora_alpha,
        lora_dropout=lc.lora_dropout,
        target_modules=list(lc.target_modules),
        bias=lc.bias,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_config)
    model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    return model


# --------------------------------------------------------------------------- run folder


def _config_drift(run_dir: Path, cfg: Config) -> list[str]:
    import yaml

    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return []
    saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    now = yaml.safe_load(dump_config(cfg)) or {}

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(saved), flat(now)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _open_run(cfg: Config, resume_dir: Path | None, state) -> Path:
    """Rank 0 creates (or reuses) the run folder and switches ``latest``; all ranks learn its path."""
    from accelerate.utils import broadcast_object_list

    holder: list[Any] = [None]
    if state.is_main_process:
        if resume_dir is not None:
            run_dir = resume_dir
        else:
            run_dir = new_run_dir(cfg.runs_dir, os.environ.get(RUN_NAME_ENV) or None)
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        mark_latest(run_dir)
        holder[0] = str(run_dir)
    if state.num_processes > 1:
        broadcast_object_list(holder)
    return Path(holder[0])


class _FileLog:
    """Mirror our log lines (and transformers warnings) into ``train.log`` on rank 0."""

    def __init__(self, path: Path | None):
        self.handler = None
        if path is None:
            return
        import transformers

        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        self.handler.setLevel(logging.INFO)
        self.loggers = [logging.getLogger("persona_pipeline"), transformers.logging.get_logger()]
        for lg in self.loggers:
            lg.addHandler(self.handler)
        pp = self.loggers[0]
        if pp.getEffectiveLevel() > logging.INFO:
            pp.setLevel(logging.INFO)

    def close(self) -> None:
        if self.handler is not None:
            for lg in self.loggers:
                lg.removeHandler(self.handler)
            self.handler.close()


def _start_trace() -> tuple[Path | None, list[int] | None, list[str] | None]:
    """With PERSONA_TRAIN_TRACE_DIR set: record sample indices and every file written (tests)."""
    trace_dir = os.environ.get(TRACE_ENV)
    if not trace_dir:
        return None, None, None
    import sys

    writes: list[str] = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            ):
                writes.append(os.fsdecode(args[0]))
        elif event in ("os.mkdir", "os.rename", "os.symlink", "os.remove", "shutil.rmtree"):
            writes.append(os.fsdecode(args[1] if event in ("os.rename", "os.symlink") else args[0]))

    sys.addaudithook(hook)
    return Path(trace_dir), [], writes


# --------------------------------------------------------------------------- training


def _training_arguments(cfg: Config, run_dir: Path, *, has_cuda: bool, dtype):
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    by_steps = t.save_steps is not None and t.save_steps > 0
    return TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        optim=t.optim,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="epoch",
        save_strategy="steps" if by_steps else "epoch",
        save_steps=t.save_steps if by_steps else 500,
        save_total_limit=t.save_total_limit,
        seed=cfg.seed,
        bf16=has_cuda and dtype == torch.bfloat16,
        fp16=has_cuda and dtype == torch.float16,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        dataloader_pin_memory=has_cuda,
        use_cpu=not has_cuda,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[r for r in t.report_to if r != "tensorboard"] or "none",
    )


def _summary(cfg, run_dir, trainer, out, base_eval, train_ts, eval_ts, resumed_from, seconds) -> dict:
    history = trainer.state.log_history
    evals = [
        {"epoch": round(h["epoch"], 3), "step": h["step"], "eval_loss": h["eval_loss"]}
        for h in history
        if "eval_loss" in h and h.get("step", 0) > 0
    ]
    losses = [h for h in history if "loss" in h]
    return {
        "run": run_dir.name,
        "status": "completed",
        "config": cfg.name,
        "base_model": cfg.model.name_or_path,
        "batching": cfg.train.batching,
        "world_size": trainer.args.world_size,
        "device": str(trainer.args.device),
        "qlora": cfg.quantization.load_in_4bit,
        "epochs": trainer.state.epoch,
        "global_step": trainer.state.global_step,
        "base_eval_loss": base_eval,
        "eval_loss_per_epoch": evals,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "final_train_loss": losses[-1]["loss"] if losses else None,
        "train_loss_mean_this_session": out.training_loss,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_seconds_this_session": round(seconds, 1),
        "tokens_per_second_this_session": round(
            (trainer.state.num_input_tokens_seen - trainer.window.session_start) / max(seconds, 1e-9), 1
        ),
        "samples": {"train": len(train_ts.samples), "eval": len(eval_ts.samples)},
        "tokenize": {s.split: {k: v for k, v in s.stats.items() if k != "source"} for s in (train_ts, eval_ts)},
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "resumed_from": resumed_from,
        "adapter": "adapter",
    }


def train(cfg: Config, resume: str | None = None) -> Path:
    """Train a LoRA adapter; returns the run folder. ``resume``: 'latest', a run name or a folder."""
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    from persona_pipeline.core.modeling import ensure_available, load_tokenizer, quantization_config, resolve_dtype
    from persona_pipeline.stages.tokenize import load_tokenized

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    has_cuda = torch.cuda.is_available()
    # cpu=True is what makes accelerate pick gloo for several CPU processes (torchrun / accelerate launch).
    state = PartialState(cpu=not has_cuda)
    if not state.is_main_process:  # one copy of every message, from rank 0
        logging.getLogger("persona_pipeline").setLevel(logging.WARNING)
    trace_dir, trace, writes = _start_trace()

    # 1. Validate every input before anything is written to the runs folder.
    resume_dir = ckpt = None
    if resume:
        resume_dir = resolve_run(cfg.runs_dir, resume)
        ckpt = last_checkpoint(resume_dir)
    ensure_available(cfg)
    quantization_config(cfg)  # QLoRA without CUDA fails here, with the fix
    tokenizer = load_tokenizer(cfg)
    with state.main_process_first():  # rank 0 builds the cache, the others read it
        train_ts = load_tokenized(cfg, "train", tokenizer=tokenizer)
        eval_ts = load_tokenized(cfg, "eval", tokenizer=tokenizer)
    set_seed(cfg.seed)
    model = build_peft_model(cfg)
    dtype = resolve_dtype(cfg)

    # 2. The run folder (rank 0), `latest` switched now that the inputs are known good.
    run_dir = _open_run(cfg, resume_dir, state)
    if state.is_main_process and ckpt is not None:
        _drop_partial_checkpoints(run_dir, ckpt)
        drift = _config_drift(run_dir, cfg)
        if drift:
            log.warning("resuming with a config that differs from the run's config.yaml in: %s", ", ".join(drift))
    filelog = _FileLog(run_dir / "train.log" if state.is_main_process else None)
    try:
        log.info(
            "run %s: %s%s, %d train / %d eval samples, batching %s, %d process(es)",
            run_dir, cfg.model.name_or_path, " (QLoRA 4-bit)" if cfg.quantization.load_in_4bit else "",
            len(train_ts.samples), len(eval_ts.samples), cfg.train.batching, state.num_processes,
        )
        for ts in (train_ts, eval_ts):
            s = ts.stats
            if s["prompt_truncated"] or s["completion_truncated"]:
                log.warning("%s: %d prompts cut from the left and %d completions cut to fit max_length %d",
                            ts.split, s["prompt_truncated"], s["completion_truncated"], s["max_length"])
        return _fit(cfg, run_dir, model, tokenizer, train_ts, eval_ts, ckpt, state, has_cuda, dtype, trace)
    finally:
        filelog.close()
        _write_trace(trace_dir, state, trace, writes)


def _fit(cfg, run_dir, model, tokenizer, train_ts, eval_ts, ckpt, state, has_cuda, dtype, trace) -> Path:
    """Trainer set-up, base eval, the training loop, then adapter + summary (rank 0)."""
    from transformers.integrations import TensorBoardCallback

    from persona_pipeline.training.collate import TokenizedDataset, make_collator
    from persona_pipeline.training.callbacks import (LogLines, PersonaTrainer, RssPhases, StopOnSignal,
                                                     use_quiet_progress)

    args = _training_arguments(cfg, run_dir, has_cuda=has_cuda, dtype=dtype)
    collator = make_collator(cfg.train.batching, tokenizer.pad_token_id, cfg.data.max_length,
                             pad_to_multiple_of=8 if has_cuda else None)
    stopper = StopOnSignal()
    peaks = PhasePeaks()
    peaks.mark("load")  # from process start: imports, model, tokenized data
    trainer = PersonaTrainer(
        model=model,
        args=args,
        train_dataset=TokenizedDataset(train_ts.samples, trace),
        eval_dataset=TokenizedDataset(eval_ts.samples),
        data_collator=collator,
        processing_class=tokenizer,
        train_lengths=train_ts.lengths,
        batching=cfg.train.batching,
        loss_chunk_size=cfg.train.loss_chunk_size,
        callbacks=[LogLines(), stopper, RssPhases(peaks)],
    )
    use_quiet_progress(trainer)
    if "tensorboard" in cfg.train.report_to:
        tb = TensorBoardCallback()
        tb.logging_dir = str(run_dir / "logs")
        trainer.add_callback(tb)

    base_file = run_dir / "base_eval.json"
    if ckpt is None:
        base_eval = trainer.evaluate()["eval_loss"]  # LoRA B starts at zero: this is the base model
        if state.is_main_process:
            atomic_write_json(base_file, {"eval_loss": base_eval, "eval_samples": len(eval_ts.samples)})
        log.info("base model eval loss %.4f (before training)", base_eval)
    else:
        base_eval = json.loads(base_file.read_text())["eval_loss"] if base_file.is_file() else None
        log.info("resuming %s from %s", run_dir.name, ckpt.name)

    old_handlers = stopper.install()
    start = time.perf_counter()
    try:
        out = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    finally:
        stopper.uninstall(old_handlers)
    seconds = time.perf_counter() - start

    if stopper.stopped_at is not None:
        state.wait_for_everyone()
        raise TrainingInterrupted(
            f"training interrupted at step {stopper.stopped_at}; checkpoint saved in "
            f"{run_dir / CHECKPOINTS / f'checkpoint-{stopper.stopped_at}'}",
            hint=f"continue with `make train RESUME={run_dir.name}` (or RESUME=latest)",
        )

    if state.is_main_process:
        with atomic_dir(run_dir / "adapter") as tmp:
            trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        peaks.mark("save_adapter")
        summary = _summary(cfg, run_dir, trainer, out, base_eval, train_ts, eval_ts,
                           ckpt.name if ckpt else None, seconds)
        summary["peak_rss_mib"] = peaks.report()  # rank 0; per phase (see core/procmem.py)
        log.info("peak RSS by phase (MiB): %s", summary["peak_rss_mib"])
        atomic_write_json(run_dir / "train_summary.json", summary)
        log.info(
            "done: eval loss %s -> %s, %d tokens in %.0fs; adapter in %s",
            f"{base_eval:.4f}" if base_eval is not None else "?",
            f"{summary['final_eval_loss']:.4f}" if summary["final_eval_loss"] is not None else "?",
            summary["tokens_seen"], seconds, run_dir / "adapter",
        )
    state.wait_for_everyone()
    return run_dir


def _write_trace(trace_dir: Path | None, state, trace, writes) -> None:
    if trace_dir is None:
        return
    trace_dir.mkdir(parents=True, exist_ok=True)
    rank = state.process_index
    payload = {"rank": rank, "world_size": state.num_processes, "samples": trace, "writes": list(writes)}
    (trace_dir / f"rank{rank}.json").write_text(json.dumps(payload))


def run(cfg: Config, *, resume: str | None = None) -> int:
    run_dir = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"run: {run_dir}")
    print(f"  adapter:      {run_dir / 'adapter'}")
    print(f"  summary:      {run_dir / 'train_summary.json'}")
    print(f"  tensorboard:  make tensorboard   (logs in {run_dir / 'logs'})")
    return 0
