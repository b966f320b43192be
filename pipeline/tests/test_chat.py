"""make chat / make ask on a fine-tuned tiny run: streaming equals batched eval generation, multi-turn
history in the training format (oldest turns dropped first), persona commands, piped stdin, a real
pseudo-terminal, the llama.cpp backend on the run's GGUF, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIGS, finetune, persona_records
from persona_pipeline.cli import main
from persona_pipeline.core.config import load_config
from persona_pipeline.core.errors import ConfigError, PipelineError
from persona_pipeline.core.prompt_format import PromptTooLong, fit_prompt, format_prompt
from persona_pipeline.export.llamacpp import runtime_library
from persona_pipeline.inference.streaming import StopFilter

needs_llamacpp = pytest.mark.skipif(runtime_library() is None, reason="llama.cpp runtime missing: pip install -e '.[llamacpp]'")
PP = str(Path(sys.executable).with_name("persona-pipeline"))


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tiny_model_dir):
    """(CLI overrides, run dir): a fine-tuned adapter marked latest; nothing else (chat needs no data)."""
    from persona_pipeline.core.runs import mark_latest, new_run_dir

    root = tmp_path_factory.mktemp("chat")
    overrides = [
        f"paths.outputs={root / 'outputs'}",
        f"model.name_or_path={tiny_model_dir}",
        "eval.max_new_tokens=24",
        "eval.num_threads=1",
        "gguf.threads=1",
    ]
    cfg = load_config(CONFIGS / "eval_tiny.yaml", overrides)
    run_dir = new_run_dir(cfg.runs_dir, "chat")
    finetune(tiny_model_dir, run_dir / "adapter", persona_records(60, 1))
    mark_latest(run_dir)
    return overrides, run_dir


def _cfg(overrides, *extra):
    return load_config(CONFIGS / "eval_tiny.yaml", [*overrides, *extra])


# --------------------------------------------------------------------------- pure parts


def test_fit_prompt_drops_the_oldest_turns_first():
    history = [(f"question {i}", f"answer {i} " + "word " * 10) for i in range(4)]
    words = lambda text: len(text.split())  # noqa: E731  (a token counter for the test)
    full, kept = fit_prompt("Tilda", "an actress", "and now?", history, words, 10_000)
    assert kept == 4 and full == format_prompt("Tilda", "an actress", "and now?", history)
    budget = words(format_prompt("Tilda", "an actress", "and now?", history[2:]))
    prompt, kept = fit_prompt("Tilda", "an actress", "and now?", history, words, budget)
    assert kept == 2 and prompt == format_prompt("Tilda", "an actress", "and now?", history[2:])
    with pytest.raises(PromptTooLong, match="at most 5 fit"):
        fit_prompt("Tilda", "an actress", "a long question " * 5, [], words, 5)


@pytest.mark.parametrize(
    "chunks, shown",
    [
        ([" Hello", " world.\n", "\nHu", "man: next"], "Hello world."),  # stop string split over chunks, cut
        ([" One.\n\nTwo", " parts."], "One.\n\nTwo parts."),  # a blank line that is not a turn is kept
        ([" ends with\n\nHum"], "ends with\n\nHum"),  # a held-back prefix that never became a stop is released
    ],
)
def test_stop_filter(chunks, shown):
    f = StopFilter()
    out = "".join(f.feed(c) for c in chunks) + f.flush()
    assert out == shown


def test_decoding_follows_the_eval_config_and_temperature(chat_run):
    from persona_pipeline.stages.chat import decoding

    cfg = _cfg(chat_run[0])
    assert not decoding(cfg, None).do_sample
    hot = decoding(cfg, 0.7)
    assert hot.do_sample and hot.temperature == 0.7 and hot.top_p == cfg.eval.top_p
    assert not decoding(cfg, 0).do_sample
    with pytest.raises(ConfigError, match="TEMPERATURE"):
        decoding(cfg, -1)


# --------------------------------------------------------------------------- transformers backend


def test_streamed_answers_equal_batched_eval_generation(chat_run):
    """Streaming changes how text arrives, not what it is: the same answers as `make eval` generates."""
    from persona_pipeline.evaluation.generation import generate
    from persona_pipeline.stages.chat import decoding, open_backend

    cfg = _cfg(chat_run[0])
    backend, desc = open_backend(cfg, "latest", "transformers", decoding(cfg, None))
    assert "adapter of run" in desc
    prompts = [r["prompt"] for r in persona_records(3, 7)]
    reference = generate(backend.model, backend.tokenizer, prompts, backend.settings, batch_size=4, progress=False)
    for prompt, ref in zip(prompts, reference, strict=True):
        chunks = list(backend.stream(prompt))
        assert "".join(chunks).strip() == ref.text and ref.text
        stats = backend.last_stats
        # The streamer also counts the EOS token, which Generation leaves out of its count.
        assert stats.new_tokens == ref.new_tokens + (ref.stop == "eos") and 0 < stats.first_token_s <= stats.total_s


def test_multi_turn_prompts_are_the_training_format(chat_run):
    """The prompts the model sees: earlier turns in format_prompt's layout, the oldest dropped when over budget."""
    import io

    from persona_pipeline.data.personas import load_personas
    from persona_pipeline.stages.chat import Conversation, decoding, open_backend

    cfg = _cfg(chat_run[0])
    backend, _ = open_backend(cfg, "latest", "transformers", decoding(cfg, None))
    seen: list[str] = []
    real_stream = backend.stream
    backend.stream = lambda prompt: (seen.append(prompt), real_stream(prompt))[1]
    tilda = load_personas(cfg)["Tilda"]
    out, err = io.StringIO(), io.StringIO()
    chat = Conversation(backend, tilda, budget=10_000, out=out, err=err)
    a1 = chat.reply("Tell me about the forest.")
    a2 = chat.reply("And the school?")
    assert a1 and a2
    assert seen[0] == format_prompt("Tilda", tilda.system, "Tell me about the forest.")
    assert seen[1] == format_prompt("Tilda", tilda.system, "And the school?", [("Tell me about the forest.", a1)])
    assert out.getvalue() == f"Tilda: {a1}\nTilda: {a2}\n"
    # A budget that holds only the newest earlier turn: the oldest goes first, and the user is told.
    chat.budget = backend.count_tokens(format_prompt("Tilda", tilda.system, "Why?", chat.history[1:]))
    chat.reply("Why?")
    assert seen[2] == format_prompt("Tilda", tilda.system, "Why?", [("And the school?", a2)])
    assert "1 oldest turn(s) no longer fit" in err.getvalue()


def test_ask_prints_one_answer_and_errors_are_clear(chat_run, capsys):
    overrides = chat_run[0]
    args = ["ask", "--config", str(CONFIGS / "eval_tiny.yaml"), *overrides]
    assert main([*args[:1], "--persona", "anis", "--question", "What do you grow?", *args[1:]]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Anis: ") and len(captured.out.strip()) > len("Anis:")
    assert "tokens, first after" in captured.err and "adapter of run chat" in captured.err

    assert main([*args[:1], "--persona", "Nobody", "-q", "hi", *args[1:]]) == 1
    assert "no persona named 'Nobody'; the persona files have: " in capsys.readouterr().err
    assert main([*args, "--question", " "]) == 2
    assert "no question" in capsys.readouterr().err
    assert main([*args, "-q", "hi", "--backend", "llamacpp"]) == 1
    err = capsys.readouterr().err
    assert "no Q8_0 GGUF in run chat" in err and "make gguf RUN=chat QUANT=Q8_0" in err
    assert main([*args, "-q", "hi", "--run", "missing"]) == 1
    assert "run not found: missing" in capsys.readouterr().err


def test_chat_reads_a_piped_stdin(chat_run):
    overrides, _ = chat_run
    script = "Tell me about tea.\n/persona anis\nWhat do you grow?\n/persona Nobody\n/reset\n/bogus\n\n/quit\nnot asked\n"
    proc = subprocess.run([PP, "chat", "--config", str(CONFIGS / "eval_tiny.yaml"), *overrides],
                          input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # No PERSONA and eval.personas unset: the first persona file (ahsan.yaml).
    assert len(lines) == 2 and lines[0].startswith("Ahsan: ") and lines[1].startswith("Anis: "), proc.stdout
    for note in ("chatting with Ahsan", "now chatting with Anis", "no persona named 'Nobody'", "reset", "unknown command '/bogus'"):
        assert note in proc.stderr, note


def test_chat_in_a_pseudo_terminal(chat_run):
    """An interactive session as a user has it: a prompt, the answer streamed, commands, /quit."""
    pexpect = pytest.importorskip("pexpect")
    overrides, _ = chat_run
    child = pexpect.spawn(PP, ["chat", "--config", str(CONFIGS / "eval_tiny.yaml"), "--persona", "Ahsan", *overrides],
                          env={**os.environ, "TERM": "dumb"}, encoding="utf-8", timeout=240)
    try:
        child.expect_exact("chatting with Ahsan")
        child.expect_exact("you> ")
        child.sendline("What is the festival for?")
        child.expect(r"Ahsan: (.*?)\r\n")
        first = child.match.group(1)
        child.expect(r"tokens, first after [0-9.]+ s")
        child.expect_exact("you> ")
        child.sendline("/persona Tilda")
        child.expect_exact("now chatting with Tilda")
        child.expect_exact("you> ")
        child.sendline("Why no exams?")
        child.expect(r"Tilda: (.*?)\r\n")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0 and first.strip()


# --------------------------------------------------------------------------- llama.cpp backend


@needs_llamacpp
def test_llamacpp_backend_on_the_runs_gguf_matches_transformers(chat_run):
    """BACKEND=llamacpp on the run's F16 GGUF: greedy answers equal the merged model's through transformers."""
    from persona_pipeline.core.runs import RunDir
    from persona_pipeline.stages.chat import decoding, open_backend
    from persona_pipeline.stages.gguf import export_gguf
    from persona_pipeline.stages.merge import merge

    overrides, run_dir = chat_run
    cfg = _cfg(overrides, "gguf.quant=F16", "eval.source=merged")
    merge(cfg, RunDir(run_dir))
    export_gguf(cfg, RunDir(run_dir), "F16")
    hf, hf_desc = open_backend(cfg, "latest", "transformers", decoding(cfg, None))
    cpp, cpp_desc = open_backend(cfg, "latest", "llamacpp", decoding(cfg, None))
    assert hf_desc.startswith("merged model of run chat") and cpp_desc == "tiny-F16.gguf via llama.cpp"
    try:
        for r in persona_records(3, 5):
            want = "".join(hf.stream(r["prompt"]))
            got = "".join(cpp.stream(r["prompt"]))
            assert got == want and got
            assert cpp.last_stats.new_tokens == hf.last_stats.new_tokens
            assert cpp.last_stats.first_token_s > 0
        # Sampling goes through the same settings: seeded, so repeatable.
        hot = decoding(cfg, 0.7)
        a, _ = open_backend(cfg, "latest", "llamacpp", hot)
        b, _ = open_backend(cfg, "latest", "llamacpp", hot)
        prompt = persona_records(1, 9)[0]["prompt"]
        assert "".join(a.stream(prompt)) == "".join(b.stream(prompt))
        a.close()
        b.close()
    finally:
        cpp.close()
    with pytest.raises(PipelineError, match="no llama.cpp runtime|no Q4_0 GGUF"):
        open_backend(_cfg(overrides, "gguf.quant=Q4_0"), "latest", "llamacpp", decoding(cfg, None))
