"""``make chat`` / ``make ask``: talk to a trained persona in the training prompt format, streaming the answer.

The model is what ``eval.source`` names (the run's adapter, its merged model,
or the un-tuned base) through transformers, or the run's GGUF through
llama.cpp (``--backend llamacpp``, file type ``gguf.quant``). Decoding follows
the eval config (greedy unless ``eval.do_sample``); ``--temperature T`` samples
at T (0: greedy). A chat keeps earlier turns in the prompt and drops the
oldest ones when the prompt would no longer leave ``eval.max_new_tokens`` of
room inside ``data.max_length`` (what the model was trained on). Answers go to
stdout, everything else (banner, timing) to stderr, so a piped chat's output
is just the answers. Nothing is written to disk.
"""

from __future__ import annotations

import dataclasses
import readline  # noqa: F401  (loaded for its effect: line editing and history in input())
import sys
from pathlib import Path
from typing import TextIO

from persona_pipeline.core.config import Config
from persona_pipeline.core.errors import ConfigError, PipelineError
from persona_pipeline.core.prompt_format import PromptTooLong, fit_prompt
from persona_pipeline.core.runs import RunDir
from persona_pipeline.data.personas import Persona, load_personas
from persona_pipeline.evaluation.generation import GenerationSettings, load_eval_model, set_eval_threads
from persona_pipeline.inference.streaming import LlamaCppBackend, TransformersBackend

BACKENDS = ("transformers", "llamacpp")
COMMANDS = "/persona NAME switches persona (and starts over), /reset forgets the conversation, /quit leaves"


def decoding(cfg: Config, temperature: float | None) -> GenerationSettings:
    """The eval config's decoding; ``temperature`` > 0 samples at it, 0 is greedy."""
    s = GenerationSettings.from_config(cfg)
    if temperature is None:
        return s
    if temperature < 0:
        raise ConfigError(f"TEMPERATURE must be 0 (greedy) or positive, got {temperature:g}")
    return dataclasses.replace(s, do_sample=temperature > 0, temperature=temperature or s.temperature)


def pick_persona(personas: dict[str, Persona], name: str) -> Persona:
    """The persona called ``name`` (any case), or an error listing the persona files."""
    found = {n.lower(): p for n, p in personas.items()}.get(name.strip().lower())
    if found is None:
        raise PipelineError(f"no persona named {name!r}; the persona files have: {', '.join(personas)}",
                            hint="pick one of those, or add data/personas/<name>.yaml")
    return found


def open_backend(cfg: Config, run: str, backend: str, settings: GenerationSettings):
    """(backend, description) for ``eval.source`` and ``backend``."""
    if backend not in BACKENDS:
        raise ConfigError(f"BACKEND must be one of {', '.join(BACKENDS)}, got {backend!r}")
    source = cfg.eval.source
    run_dir = None if source == "base" else RunDir.resolve(cfg.runs_dir, run)
    if backend == "llamacpp":
        if run_dir is None:
            raise ConfigError("BACKEND=llamacpp runs the run's GGUF; eval.source=base has none",
                              hint="use the transformers backend for the base model")
        quant = cfg.gguf.quant.upper()
        path = run_dir.gguf_file(cfg.name, quant)
        if not path.is_file():
            raise PipelineError(f"no {quant} GGUF in run {run_dir.name} ({path})",
                                hint=f"create it with `make gguf RUN={run_dir.name} QUANT={quant}`, or pick QUANT=...")
        n_ctx = -(-(cfg.data.max_length + 8) // 256) * 256
        # gguf.threads, else the eval threads: llama.cpp's spinning threads slowed the tiny model from 1,589 to
        # 3.6 tokens/s when 2 threads shared 2 busy cores (measured), as torch's do.
        threads = cfg.gguf.threads or cfg.eval.num_threads or cfg.train.num_threads
        llm = LlamaCppBackend(path, settings, n_ctx=n_ctx, threads=threads)
        return llm, f"{path.name} via llama.cpp"
    set_eval_threads(cfg)
    model, tokenizer, desc = load_eval_model(cfg, run_dir)
    what = {"run": "adapter", "merged": "merged model", "base": "base model (un-tuned)"}[source]
    where = f"run {run_dir.name}" if run_dir else Path(desc["model"]).name
    return TransformersBackend(model, tokenizer, settings), f"{what} of {where} via transformers"


class Conversation:
    """One persona's chat: earlier (question, answer) turns, trimmed to the token budget when prompting."""

    def __init__(self, backend, persona: Persona, budget: int, out: TextIO, err: TextIO):
        self.backend, self.persona, self.budget = backend, persona, budget
        self.out, self.err = out, err
        self.history: list[tuple[str, str]] = []

    def reply(self, question: str) -> str | None:
        """Stream the answer to stdout; returns it (None when the question does not fit)."""
        try:
            prompt, kept = fit_prompt(self.persona.name, self.persona.system, question, self.history,
                                      self.backend.count_tokens, self.budget)
        except PromptTooLong as exc:
            print(f"(not asked: {exc})", file=self.err, flush=True)
            return None
        if kept < len(self.history):
            print(f"(the {len(self.history) - kept} oldest turn(s) no longer fit in {self.budget} tokens and are left out)",
                  file=self.err, flush=True)
            self.history = self.history[len(self.history) - kept :]
        self.out.write(f"{self.persona.name}: ")
        self.out.flush()
        parts = []
        for chunk in self.backend.stream(prompt):
            parts.append(chunk)
            self.out.write(chunk)
            self.out.flush()
        self.out.write("\n")
        self.out.flush()
        print(f"  [{self.backend.last_stats.line()}]", file=self.err, flush=True)
        text = "".join(parts).strip()
        if text:
            self.history.append((question, text))
        return text


def _setup(cfg: Config, run: str, persona: str | None, backend: str, temperature: float | None):
    personas = load_personas(cfg)
    default = next((n for n in cfg.eval.personas if n in personas), next(iter(personas)))
    chosen = pick_persona(personas, persona or default)
    settings = decoding(cfg, temperature)
    budget = cfg.data.max_length - settings.max_new_tokens
    if budget <= 0:
        raise ConfigError(f"eval.max_new_tokens ({settings.max_new_tokens}) leaves no room for a prompt "
                          f"in data.max_length ({cfg.data.max_length})")
    engine, desc = open_backend(cfg, run, backend, settings)
    mode = f"sampling at temperature {settings.temperature:g}, top-p {settings.top_p:g}" if settings.do_sample else "greedy"
    return personas, chosen, settings, budget, engine, f"{desc}, {mode}, config {cfg.name}"


def ask(cfg: Config, *, run: str = "latest", persona: str | None = None, question: str | None = None,
        backend: str = "transformers", temperature: float | None = None) -> int:
    """Answer one question and exit."""
    if not question or not question.strip():
        raise ConfigError("no question: pass Q=\"...\" (make ask) or --question \"...\"")
    _, chosen, _, budget, engine, desc = _setup(cfg, run, persona, backend, temperature)
    print(f"[{chosen.name}: {desc}]", file=sys.stderr, flush=True)
    answer = Conversation(engine, chosen, budget, sys.stdout, sys.stderr).reply(question)
    return 0 if answer is not None else 1


def _read(interactive: bool) -> str | None:
    """The next line, or None at end of input (Ctrl-D, end of the pipe)."""
    try:
        return input("you> ") if interactive else (sys.stdin.readline() or None)
    except EOFError:
        return None


def run(cfg: Config, *, run: str = "latest", persona: str | None = None, backend: str = "transformers",
        temperature: float | None = None) -> int:
    """The interactive chat (also reads questions line by line from a pipe)."""
    personas, chosen, _, budget, engine, desc = _setup(cfg, run, persona, backend, temperature)
    interactive = sys.stdin.isatty()
    chat = Conversation(engine, chosen, budget, sys.stdout, sys.stderr)
    print(f"[chatting with {chosen.name}: {desc}]\n[{COMMANDS}; Ctrl-D ends]", file=sys.stderr, flush=True)
    while True:
        line = _read(interactive)
        if line is None:
            if interactive:
                print(file=sys.stderr)
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/quit", "/exit", "/q"):
                return 0
            if cmd == "/reset":
                chat.history = []
                print(f"[conversation with {chat.persona.name} reset]", file=sys.stderr, flush=True)
            elif cmd == "/persona" and arg.strip():
                try:
                    chat.persona = pick_persona(personas, arg)
                except PipelineError as exc:
                    print(f"[{exc.message}]", file=sys.stderr, flush=True)
                    continue
                chat.history = []
                print(f"[now chatting with {chat.persona.name}]", file=sys.stderr, flush=True)
            else:
                print(f"[unknown command {line!r}: {COMMANDS}]", file=sys.stderr, flush=True)
            continue
        try:
            chat.reply(line)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            print("\n[answer interrupted]", file=sys.stderr, flush=True)
