"""Stage ``train``: LoRA / QLoRA fine-tuning with the transformers ``Trainer`` and peft.

A run lives in ``outputs/runs/<timestamp>/``; training writes ``config.yaml``, ``train.log``,
``logs/`` (TensorBoard), ``checkpoints/``, ``base_eval.json``, ``adapter/`` and
``train_summary.json`` (the layout is :class:`~persona_pipeline.core.runs.RunDir`).

Every input (model, key, data) is checked before the run folder is created, so a bad
input never switches ``runs/latest`` to a broken run. ``resume`` continues a run from
its last complete checkpoint; Ctrl-C (or SIGTERM) saves a checkpoint and stops with
exit code 130. Launched with several processes (``torchrun``, see ``make train NPROC=2``),
rank 0 alone creates the run folder and broadcasts its path; every rank draws the same
seeded length-grouped order and the Trainer gives each rank its own share of batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import set_seed
from transformers.integrations import TensorBoardCallback

from persona_pipeline.core.config import Config, dump_config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.fsutil import atomic_dir, atomic_write_json, atomic_write_text
from persona_pipeline.core.modeling import build_peft_model, ensure_available, load_tokenizer, quantization_config, resolve_dtype
from persona_pipeline.core.procmem import PhasePeaks
from persona_pipeline.core.runs import RunDir, mark_latest, new_run_dir, read_json, run_lock
from persona_pipeline.training.arguments import training_arguments
from persona_pipeline.training.callbacks import LogLines, PersonaTrainer, RssPhases, StopOnSignal, use_quiet_progress
from persona_pipeline.training.collate import TokenizedDataset, make_collator
from persona_pipeline.training.tokenized import TokenizedSplit, load_tokenized

log = logging.getLogger(__name__)

RUN_NAME_ENV = "PERSONA_RUN_NAME"
TRAINER_STATE = "trainer_state.json"


class TrainingInterrupted(PipelineError):
    """Ctrl-C / SIGTERM: a checkpoint was saved; the CLI exits with 130."""

    exit_code = 130


# --------------------------------------------------------------------------- checkpoints


def complete_checkpoints(run: RunDir) -> list[Path]:
    """Checkpoints of a run, oldest first; one killed mid-save (no trainer_state.json) is skipped."""
    if not run.checkpoints.is_dir():
        return []
    found = []
    for p in run.checkpoints.iterdir():
        step = p.name.removeprefix("checkpoint-")
        if p.is_dir() and step.isdigit() and (p / TRAINER_STATE).is_file():
            found.append((int(step), p))
    return [p for _, p in sorted(found)]


def last_checkpoint(run: RunDir) -> Path:
    """The newest complete checkpoint of ``run``, or a PipelineError saying there is none."""
    ckpts = complete_checkpoints(run)
    if not ckpts:
        raise PipelineError(
            f"cannot resume {run.path}: it has no complete checkpoint under {run.checkpoints}",
            hint="start a new run with `make train` (without RESUME); checkpoints are written every "
            "train.save_steps steps, or at each epoch end when it is null",
        )
    return ckpts[-1]


def _drop_partial_checkpoints(run: RunDir, keep_upto: Path) -> None:
    """Remove checkpoint folders newer than the resume point (left by a kill mid-save)."""
    step = int(keep_upto.name.removeprefix("checkpoint-"))
    for p in run.checkpoints.iterdir():
        s = p.name.removeprefix("checkpoint-")
        if p.is_dir() and s.isdigit() and int(s) > step:
            log.warning("removing incomplete checkpoint %s", p)
            shutil.rmtree(p, ignore_errors=True)


def _config_drift(run: RunDir, cfg: Config) -> list[str]:
    """Config keys whose value differs from the run's saved config.yaml."""
    if not run.config.is_file():
        raise PipelineError(f"cannot resume {run.path}: {run.config} is missing", hint="start a new run with `make train`")
    saved = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
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


class _FileLog:
    """Mirror our log lines (and transformers warnings) into ``train.log`` on rank 0."""

    def __init__(self, path: Path | None):
        self.handler = None
        if path is None:
            return
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


# --------------------------------------------------------------------------- training


@dataclass
class TrainJob:
    """One training session: every input checked and loaded, before the run folder exists.

    ``prepare`` validates (model, key, data, resume point) and loads; ``open_run``
    creates or reuses the run folder; ``fit`` trains and writes the adapter and summary.
    Rank 0 holds the run's training lock in ``locks`` from the moment the run is chosen:
    a second process that tries to train into the same run fails at once.
    """

    cfg: Config
    state: PartialState
    tokenizer: Any
    model: Any
    train_ts: TokenizedSplit
    eval_ts: TokenizedSplit
    has_cuda: bool
    dtype: torch.dtype
    locks: contextlib.ExitStack
    resume_run: RunDir | None = None
    checkpoint: Path | None = None  # the checkpoint a resumed session continues from
    peaks: PhasePeaks = field(default_factory=PhasePeaks)  # peak RSS per phase, in train_summary.json

    @classmethod
    def prepare(cls, cfg: Config, resume: str | None, locks: contextlib.ExitStack) -> TrainJob:
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        has_cuda = torch.cuda.is_available()
        # cpu=True is what makes accelerate pick gloo for several CPU processes (torchrun / accelerate launch).
        state = PartialState(cpu=not has_cuda)
        if not state.is_main_process:  # one copy of every message, from rank 0
            logging.getLogger("persona_pipeline").setLevel(logging.WARNING)
        resume_run = checkpoint = None
        if resume:
            resume_run = RunDir.resolve(cfg.runs_dir, resume)
            if state.is_main_process:
                locks.enter_context(run_lock(resume_run.path))
            checkpoint = last_checkpoint(resume_run)
        ensure_available(cfg)
        quantization_config(cfg)  # QLoRA without CUDA fails here, with the fix
        tokenizer = load_tokenizer(cfg)
        with state.main_process_first():  # rank 0 builds the cache, the others read it
            train_ts = load_tokenized(cfg, "train", tokenizer=tokenizer)
            eval_ts = load_tokenized(cfg, "eval", tokenizer=tokenizer)
        set_seed(cfg.seed)
        model = build_peft_model(cfg)
        return cls(cfg, state, tokenizer, model, train_ts, eval_ts, has_cuda, resolve_dtype(cfg), locks, resume_run, checkpoint)

    def open_run(self) -> RunDir:
        """Rank 0 creates (or reuses) the run folder and switches ``latest``; all ranks learn its path."""
        holder: list[Any] = [None]
        if self.state.is_main_process:
            if self.resume_run is not None:
                run = self.resume_run
            else:
                run = RunDir(new_run_dir(self.cfg.runs_dir, os.environ.get(RUN_NAME_ENV) or None))
                # Locked before `latest` points at it, so that RESUME=latest cannot join it.
                self.locks.enter_context(run_lock(run.path))
                atomic_write_text(run.config, dump_config(self.cfg))
            mark_latest(run.path)
            holder[0] = str(run.path)
        if self.state.num_processes > 1:
            broadcast_object_list(holder)
        run = RunDir(Path(holder[0]))
        if self.state.is_main_process and self.checkpoint is not None:
            _drop_partial_checkpoints(run, self.checkpoint)
            drift = _config_drift(run, self.cfg)
            if drift:
                log.warning("resuming with a config that differs from the run's config.yaml in: %s", ", ".join(drift))
        return run

    def _trainer(self, run: RunDir, stopper: StopOnSignal) -> PersonaTrainer:
        cfg = self.cfg
        collator = make_collator(cfg.train.batching, self.tokenizer.pad_token_id, cfg.data.max_length,
                                 pad_to_multiple_of=8 if self.has_cuda else None)
        trainer = PersonaTrainer(
            model=self.model,
            args=training_arguments(cfg, run.checkpoints, has_cuda=self.has_cuda, dtype=self.dtype),
            train_dataset=TokenizedDataset(self.train_ts.samples),
            eval_dataset=TokenizedDataset(self.eval_ts.samples),
            data_collator=collator,
            processing_class=self.tokenizer,
            train_lengths=self.train_ts.lengths,
            batching=cfg.train.batching,
            loss_chunk_size=cfg.train.loss_chunk_size,
            callbacks=[LogLines(), stopper, RssPhases(self.peaks)],
        )
        use_quiet_progress(trainer)
        if "tensorboard" in cfg.train.report_to:
            tb = TensorBoardCallback()
            tb.logging_dir = str(run.tensorboard)
            trainer.add_callback(tb)
        return trainer

    def _base_eval(self, trainer: PersonaTrainer, run: RunDir) -> float:
        """Eval loss before training (LoRA B starts at zero: this is the base model); read back on resume."""
        if self.checkpoint is not None:
            log.info("resuming %s from %s", run.name, self.checkpoint.name)
            return read_json(run.base_eval, written_by="make train")["eval_loss"]
        base_eval = trainer.evaluate()["eval_loss"]
        if self.state.is_main_process:
            atomic_write_json(run.base_eval, {"eval_loss": base_eval, "eval_samples": len(self.eval_ts.samples)})
        log.info("base model eval loss %.4f (before training)", base_eval)
        return base_eval

    def fit(self, run: RunDir) -> RunDir:
        """Trainer set-up, base eval, the training loop, then adapter + summary (rank 0)."""
        stopper = StopOnSignal()
        self.peaks.mark("load")  # from process start: imports, model, tokenized data
        trainer = self._trainer(run, stopper)
        base_eval = self._base_eval(trainer, run)
        old_handlers = stopper.install()
        start = time.perf_counter()
        try:
            out = trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
        finally:
            stopper.uninstall(old_handlers)
        seconds = time.perf_counter() - start

        if stopper.stopped_at is not None:
            self.state.wait_for_everyone()
            raise TrainingInterrupted(
                f"training interrupted at step {stopper.stopped_at}; checkpoint saved in "
                f"{run.checkpoints / f'checkpoint-{stopper.stopped_at}'}",
                hint=f"continue with `make train RESUME={run.name}` (or RESUME=latest)",
            )
        if self.state.is_main_process:
            with atomic_dir(run.adapter) as tmp:
                trainer.model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            self.peaks.mark("save_adapter")
            summary = _summary(self, run, trainer, out, base_eval, seconds)
            summary["peak_rss_mib"] = self.peaks.report()  # this process (rank 0), per phase: core/procmem.py
            log.info("peak RSS by phase (MiB): %s", summary["peak_rss_mib"])
            atomic_write_json(run.train_summary, summary)
            log.info(
                "done: eval loss %s -> %s, %d tokens in %.0fs; adapter in %s",
                f"{base_eval:.4f}",
                f"{summary['final_eval_loss']:.4f}" if summary["final_eval_loss"] is not None else "?",
                summary["tokens_seen"], seconds, run.adapter,
            )
        self.state.wait_for_everyone()
        return run


def _summary(job: TrainJob, run: RunDir, trainer, out, base_eval: float | None, seconds: float) -> dict:
    cfg, train_ts, eval_ts = job.cfg, job.train_ts, job.eval_ts
    history = trainer.state.log_history
    evals = [
        {"epoch": round(h["epoch"], 3), "step": h["step"], "eval_loss": h["eval_loss"]}
        for h in history
        if "eval_loss" in h and h.get("step", 0) > 0
    ]
    losses = [h for h in history if "loss" in h]
    return {
        "run": run.name,
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
        "resumed_from": job.checkpoint.name if job.checkpoint else None,
        "adapter": run.adapter.name,
    }


def train(cfg: Config, resume: str | None = None) -> RunDir:
    """Train a LoRA adapter; returns the run. ``resume``: 'latest', a run name or a folder."""
    with contextlib.ExitStack() as locks:  # the run's training lock, released when training ends
        job = TrainJob.prepare(cfg, resume, locks)  # every input validated before anything is written
        run = job.open_run()  # `latest` switched now that the inputs are known good
        return _train(job, run)


def _train(job: TrainJob, run: RunDir) -> RunDir:
    cfg = job.cfg
    filelog = _FileLog(run.log if job.state.is_main_process else None)
    try:
        log.info(
            "run %s: %s%s, %d train / %d eval samples, batching %s, %d process(es)",
            run.path, cfg.model.name_or_path, " (QLoRA 4-bit)" if cfg.quantization.load_in_4bit else "",
            len(job.train_ts.samples), len(job.eval_ts.samples), cfg.train.batching, job.state.num_processes,
        )
        for ts in (job.train_ts, job.eval_ts):
            s = ts.stats
            if s["prompt_truncated"] or s["completion_truncated"]:
                log.warning("%s: %d prompts cut from the left and %d completions cut to fit max_length %d",
                            ts.split, s["prompt_truncated"], s["completion_truncated"], s["max_length"])
        return job.fit(run)
    finally:
        filelog.close()


def run(cfg: Config, *, resume: str | None = None) -> int:
    run_dir = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"run: {run_dir.path}")
    print(f"  adapter:      {run_dir.adapter}")
    print(f"  summary:      {run_dir.train_summary}")
    print(f"  tensorboard:  make tensorboard   (logs in {run_dir.tensorboard})")
    return 0
