"""Streaming one answer at a time, through transformers or llama.cpp, with the eval config's decoding.

Both backends yield text as the model produces it, stop at EOS or at the
persona format's next ``\\n\\nHuman:`` turn (never shown: :class:`StopFilter`
holds back text that may be the start of it) and record time to first token
and tokens per second in ``last_stats``.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from persona_pipeline.evaluation.generation import STOP_STRINGS, GenerationSettings, generation_config
from persona_pipeline.export.llamacpp import LlamaCppModel


@dataclass
class StreamStats:
    """One answer's timing: new tokens, seconds to the first one, and tokens/s after it (the decode rate)."""

    new_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float | None:
        if self.first_token_s is None or self.new_tokens < 2 or self.total_s <= self.first_token_s:
            return None
        return (self.new_tokens - 1) / (self.total_s - self.first_token_s)

    def line(self) -> str:
        if self.first_token_s is None:
            return "no tokens"
        rate = self.tokens_per_s
        return (f"{self.new_tokens} tokens, first after {self.first_token_s:.3f} s"
                + (f", {rate:.1f} tokens/s after it" if rate is not None else ""))


class StopFilter:
    """Cuts streamed text at the first stop string, holding back any tail that could begin one."""

    def __init__(self, stops: tuple[str, ...] = STOP_STRINGS, *, strip_leading: bool = True):
        self.stops = stops
        self.buffer = ""
        self.stopped = False
        # Completions start with a space (" <answer>"): not part of what the user reads.
        self._leading = strip_leading

    def feed(self, text: str) -> str:
        """The text that is safe to show now."""
        if self.stopped:
            return ""
        self.buffer += text
        if self._leading:
            self.buffer = self.buffer.lstrip()
            self._leading = not self.buffer
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out.rstrip()
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        out, self.buffer = self.buffer[: len(self.buffer) - hold], self.buffer[len(self.buffer) - hold :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer.rstrip()), ""
        return out


class _Cancel(StoppingCriteria):
    """Stops generate() when the reader has gone (stop string seen, Ctrl-C)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TimedStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also notes when each new token arrived."""

    def __init__(self, tokenizer, stats: StreamStats, start: float):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stats, self.start, self._prompt_seen = stats, start, False

    def put(self, value) -> None:
        if self._prompt_seen:  # the first call carries the prompt
            now = time.perf_counter() - self.start
            if self.stats.first_token_s is None:
                self.stats.first_token_s = now
            self.stats.new_tokens += int(value.numel())
        self._prompt_seen = True
        super().put(value)


class TransformersBackend:
    """A loaded transformers model (adapter, merged or base) answering one prompt at a time."""

    name = "transformers"

    def __init__(self, model, tokenizer, settings: GenerationSettings):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.gen_cfg = generation_config(model, tokenizer, settings)
        self.device = next(model.parameters()).device
        self.last_stats = StreamStats()
        if settings.do_sample:
            torch.manual_seed(settings.seed)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def stream(self, prompt: str) -> Iterator[str]:
        start = time.perf_counter()
        self.last_stats = stats = StreamStats()
        enc = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        streamer = _TimedStreamer(self.tokenizer, stats, start)
        cancel = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**enc, generation_config=self.gen_cfg, tokenizer=self.tokenizer,
                                        streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancel(cancel)]))
            except BaseException as exc:  # re-raised in the reader's thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        stop = StopFilter()
        try:
            for chunk in streamer:
                shown = stop.feed(chunk)
                if shown:
                    yield shown
                if stop.stopped:
                    break
            tail = stop.flush()
            if tail:
                yield tail
        finally:
            cancel.set()
            worker.join()
            stats.total_s = time.perf_counter() - start
        if failure:
            raise failure[0]


class Sampler:
    """Picks the next token from llama.cpp's logits as transformers would: greedy, or temperature + top-p."""

    def __init__(self, settings: GenerationSettings, eos_ids: set[int]):
        self.s, self.eos = settings, sorted(eos_ids)
        self.rng = np.random.default_rng(settings.seed)
        self.context: list[int] = []

    def __call__(self, logits: np.ndarray, step: int) -> int:
        logits = logits.astype(np.float64)
        if self.s.repetition_penalty != 1.0 and self.context:  # transformers' rule: shrink logits of seen tokens
            seen = np.unique(self.context)
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / self.s.repetition_penalty, vals * self.s.repetition_penalty)
        if step < self.s.min_new_tokens:
            logits[self.eos] = -np.inf
        if not self.s.do_sample:
            tok = int(logits.argmax())
        else:
            z = logits / max(self.s.temperature, 1e-5)
            p = np.exp(z - z.max())
            p /= p.sum()
            order = np.argsort(-p)
            keep = np.cumsum(p[order]) - p[order] < self.s.top_p  # the smallest set reaching top_p
            choice = order[keep]
            tok = int(self.rng.choice(choice, p=p[choice] / p[choice].sum()))
        self.context.append(tok)
        return tok


class LlamaCppBackend:
    """A GGUF file run in-process by llama.cpp (xllamacpp), with :class:`Sampler` decoding."""

    name = "llama.cpp"

    def __init__(self, gguf_file: Path, settings: GenerationSettings, *, n_ctx: int, threads: int | None):
        self.settings = settings
        self.llm = LlamaCppModel(gguf_file, n_ctx=n_ctx, threads=threads)
        self.last_stats = StreamStats()

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text))

    def stream(self, prompt: str) -> Iterator[str]:
        start = time.perf_counter()
        self.last_stats = stats = StreamStats()
        ids = self.llm.tokenize(prompt)
        sampler = Sampler(self.settings, {self.llm.eos_id})
        sampler.context = list(ids)
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two tokens
        stop = StopFilter()
        try:
            for tok in self.llm.stream(ids, self.settings.max_new_tokens, sampler):
                stats.new_tokens += 1
                if stats.first_token_s is None:
                    stats.first_token_s = time.perf_counter() - start
                if self.llm.is_eog(tok):
                    break
                shown = stop.feed(utf8.decode(self.llm.piece(tok)))
                if shown:
                    yield shown
                if stop.stopped:
                    break
            tail = stop.feed(utf8.decode(b"", final=True)) + stop.flush()
            if tail:
                yield tail
        finally:
            stats.total_s = time.perf_counter() - start

    def close(self) -> None:
        self.llm.close()

