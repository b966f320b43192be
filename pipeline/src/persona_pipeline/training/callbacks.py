"""The Trainer subclass and callbacks used by ``train``: throughput, log lines, Ctrl-C, sampler, loss.

Imported only by the train stage, so transformers is imported at module level here.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.procmem import PhasePeaks
from persona_pipeline.training.collate import EpochLengthGroupedSampler, without_redundant_mask
from persona_pipeline.training.loss import label_position_loss, supports_label_loss

log = logging.getLogger("persona_pipeline.stages.train")

LOG_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch",
            "train_loss", "train_runtime")


class ThroughputWindow(TrainerCallback):
    """Real (non-padding) tokens per second between two training logs, evaluation time excluded."""

    def __init__(self):
        self.time = time.perf_counter()
        self.tokens = 0
        self.session_start = 0  # tokens already seen when this train() call began (resume)

    def restart(self, tokens_seen: int) -> None:
        self.time, self.tokens = time.perf_counter(), tokens_seen

    def on_train_begin(self, args, state, control, **kwargs):
        self.session_start = state.num_input_tokens_seen  # after a resume: the checkpoint's count
        self.restart(state.num_input_tokens_seen)

    def rate(self, tokens_seen: int) -> float | None:
        dt, dtok = time.perf_counter() - self.time, tokens_seen - self.tokens
        self.restart(tokens_seen)
        return round(dtok / dt, 1) if dt > 0 and dtok > 0 else None


class PersonaTrainer(Trainer):
    """Trainer + ``tokens_per_second`` in the logs + a resumable length-grouped sampler.

    ``loss_chunk_size`` > 0: logits only at label positions, cross-entropy in chunks of that
    many tokens (:mod:`persona_pipeline.training.loss`); 0: the model's own full-logits loss.
    """

    def __init__(self, *a, train_lengths=None, batching: str = "group_by_length", loss_chunk_size: int = 0, **kw):
        self.window = ThroughputWindow()
        callbacks = list(kw.pop("callbacks", None) or []) + [self.window]
        super().__init__(*a, callbacks=callbacks, **kw)
        self._lengths = train_lengths
        self._batching = batching
        if loss_chunk_size < 0:
            raise PipelineError(f"train.loss_chunk_size must be >= 0, got {loss_chunk_size}",
                                hint="use e.g. train.loss_chunk_size=1024, or 0 for the model's full-logits loss")
        if loss_chunk_size and not supports_label_loss(self.model):
            log.info("label-position loss not applicable to this model's LM head: using full logits")
            loss_chunk_size = 0
        self.loss_chunk_size = loss_chunk_size

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = without_redundant_mask(inputs)  # the Trainer counted real tokens from the mask already
        if not self.loss_chunk_size or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = label_position_loss(model, inputs, chunk_size=self.loss_chunk_size,
                                            num_items_in_batch=num_items_in_batch)
        # The scaling Trainer.compute_loss applies to a model loss normalised by the global token count.
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        if self._batching == "group_by_length" and self._lengths is not None:
            mega = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return EpochLengthGroupedSampler(self._lengths, mega, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _save_checkpoint(self, model, trial) -> None:
        """A save that fails (a full disk, most often) removes its incomplete folder and says which."""
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
        except Exception as exc:  # torch, safetensors and the OS each raise their own type
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)
            cause = (str(exc).strip().splitlines() or [""])[0][:200]
            raise PipelineError(
                f"saving checkpoint {folder} failed ({type(exc).__name__}: {cause}); the incomplete "
                "checkpoint was removed, the earlier ones are intact",
                hint=f"if the disk is full (df -h), free space, then continue with "
                f"`make train RESUME={folder.parent.parent.name}`",
            ) from exc

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            rate = self.window.rate(self.state.num_input_tokens_seen)
            if rate is not None:
                logs["tokens_per_second"] = rate
        super().log(logs, start_time)

    def evaluate(self, *a, **kw):
        out = super().evaluate(*a, **kw)
        self.window.restart(self.state.num_input_tokens_seen)  # eval time is not training throughput
        return out


class RssPhases(TrainerCallback):
    """Peak RSS of the training steps, the evaluations and the checkpoint saves, each apart."""

    def __init__(self, peaks: PhasePeaks):
        self.peaks = peaks

    def on_step_end(self, args, state, control, **kwargs):
        self.peaks.mark("train_steps")

    def on_evaluate(self, args, state, control, **kwargs):
        self.peaks.mark("eval")

    def on_save(self, args, state, control, **kwargs):
        self.peaks.mark("checkpoint_save")


class QuietProgress(ProgressCallback):
    """Progress bars only; metric lines go through :class:`LogLines` (console and train.log)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class LogLines(TrainerCallback):
    """One concise log line per Trainer log (rank 0)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for k in LOG_KEYS:
            if k in logs:
                v = logs[k]
                parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
        if len(parts) > 1:
            log.info("  ".join(parts))


class StopOnSignal(TrainerCallback):
    """Ctrl-C / SIGTERM: finish the current step, save a checkpoint, stop."""

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.requested
        if args.world_size > 1:  # every rank must stop at the same step, or collectives hang
            flag = torch.tensor([int(stop)], device=args.device)
            dist.all_reduce(flag)
            stop = bool(flag.item())
        if stop:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # checkpoint already saved; no epoch-end eval on the way out
            control.should_evaluate = False
            control.should_save = False
        return control

    def install(self) -> dict:
        """Route SIGINT/SIGTERM here (main thread only); a second Ctrl-C aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log.warning("%s received: saving a checkpoint after this step (press Ctrl-C again to abort)",
                        signal.Signals(signum).name)

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def uninstall(old: dict) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


def use_quiet_progress(trainer: Trainer) -> None:
    """Replace the Trainer's printing callbacks by bars-only progress (metrics go to LogLines)."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress())
