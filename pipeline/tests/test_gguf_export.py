"""GGUF export and check on the tiny Llama: metadata, the known export traps, llama.cpp agreement, bad input.

Each trap from peers' trackers is reproduced on purpose (file written the wrong
way) and shown to be caught, next to the correct file passing:
q/k permutation, tokenizer.ggml.pre, BPE merges, EOS / prompt template.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from persona_pipeline.core.config import load_config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.runs import RunDir
from persona_pipeline.export.llamacpp import runtime_library
from persona_pipeline.export.modelfile import modelfile_text

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
needs_llamacpp = pytest.mark.skipif(
    runtime_library() is None, reason="llama.cpp runtime missing: pip install -e '.[llamacpp]'"
)
# Tokenizer edge cases: leading/multiple spaces, digits, punctuation, unicode, emoji, newlines, contractions.
TRICKY = [
    "You are Tilda, an actress.\n\nHuman: Why no exams?\n\nTilda:",
    "  two leading spaces and   three inside",
    "numbers 12345, 3.14159 and 2026-11-26",
    "Ünïcödé — dashes … ‘quotes’ \"double\" naïve café",
    "tabs\tand\nnewlines\n\n\nend",
    "emoji 🙂🍵 and Bangla চা বাগান",
    "don't I'm we'll they've WE'LL",
]


def _cfg(root: Path, model_dir: Path, *extra: str):
    return load_config(
        CONFIGS / "train_tiny.yaml",
        [
            f"paths.outputs={root / 'outputs'}",
            f"model.name_or_path={model_dir}",
            f"data.eval={root / 'missing' / 'eval.jsonl.enc'}",
            f"data.key_file={root / 'missing' / 'key'}",
            "gguf.check_prompts=4",
            "gguf.check_max_new_tokens=12",
            "gguf.threads=1",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory, tiny_model_dir):
    """(cfg, run dir) with the tiny model as the run's merged model, and its F16 and Q8_0 exports."""
    from persona_pipeline.stages.gguf import export_gguf

    root = tmp_path_factory.mktemp("gguf")
    run = root / "outputs" / "runs" / "20260101-000000"
    shutil.copytree(tiny_model_dir, run / "merged")
    cfg = _cfg(root, tiny_model_dir)
    for quant in ("F16", "Q8_0"):
        export_gguf(cfg, RunDir(run), quant)
    return cfg, run


def _reader(path: Path):
    import gguf

    return gguf.GGUFReader(path)


def _field(reader, key):
    from persona_pipeline.export.gguf_io import field_value

    return field_value(reader, key)


# --------------------------------------------------------------------------- metadata


def test_metadata_architecture_and_tokenizer(gguf_run, tiny_model_dir):
    from transformers import AutoTokenizer

    cfg, run = gguf_run
    hf = json.loads((tiny_model_dir / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    r = _reader(run / "gguf" / "tiny-Q8_0.gguf")
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "llama.context_length") == hf["max_position_embeddings"]
    assert _field(r, "llama.embedding_length") == hf["hidden_size"]
    assert _field(r, "llama.block_count") == hf["num_hidden_layers"]
    assert _field(r, "llama.attention.head_count") == hf["num_attention_heads"]
    assert _field(r, "llama.attention.head_count_kv") == hf["num_key_value_heads"]
    assert _field(r, "llama.rope.freq_base") == pytest.approx(hf["rope_parameters"]["rope_theta"])
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(hf["rms_norm_eps"])
    # tokenizer: full vocab, merges, special ids and types, BOS behaviour, chat template
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert len(r.get_field("tokenizer.ggml.tokens").data) == hf["vocab_size"]
    merges = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert len(r.get_field("tokenizer.ggml.merges").data) == len(merges)
    for key, name in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        assert _field(r, f"tokenizer.ggml.{key}_token_id") == getattr(tok, f"{name}_token_id")
    types = r.get_field("tokenizer.ggml.token_type")
    assert [int(types.parts[types.data[i]][0]) for i in (tok.bos_token_id, tok.eos_token_id)] == [3, 3]  # CONTROL
    assert _field(r, "tokenizer.ggml.add_bos_token") is True
    assert _field(r, "tokenizer.chat_template") == tok.chat_template
    # norms stay F32, matrices are Q8_0 (or F16 where a row is not a multiple of 32)
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["output_norm.weight"] == "F32"
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["token_embd.weight"] == "Q8_0"
    info = json.loads((run / "gguf" / "export-Q8_0.json").read_text())
    assert info["tokenizer"] == {"model": "gpt2", "pre": "gpt-2", "tokens": hf["vocab_size"], "merges": len(merges)}


# --------------------------------------------------------------------------- llama.cpp agreement


@needs_llamacpp
def test_f16_and_q8_run_in_llamacpp_and_agree_with_transformers(gguf_run):
    from persona_pipeline.export.llamacpp import LlamaCppModel
    from persona_pipeline.stages.gguf_check import check_gguf

    cfg, run = gguf_run
    f16 = check_gguf(cfg, RunDir(run), "F16")
    assert f16["mode"] == "llama.cpp" and f16["status"] == "pass", f16
    assert f16["tokenization_equal"] == f16["prompts"] == 4
    assert f16["greedy_equal"] + f16["greedy_near_tie_divergences"] == 4
    assert f16["max_logit_diff"] < 0.02 and f16["top1_agreement"] >= 0.95
    q8 = check_gguf(cfg, RunDir(run), "Q8_0")
    assert q8["status"] == "measured" and q8["top1_agreement"] >= 0.8, q8
    assert q8["max_logit_diff"] < 0.5
    for quant in ("F16", "Q8_0"):
        assert (run / "gguf" / f"check-{quant}.json").is_file()
    bench = json.loads((cfg.outputs_dir / "bench" / "bench_gguf.json").read_text())
    assert {"F16_top1_agreement", "Q8_0_top1_agreement", "Q8_0_size_vs_f32"} <= set(bench["summary"])
    assert bench["quants"]["Q8_0"]["export_seconds"] > 0 and bench["reference"]
    # It generates: a persona prompt yields new tokens that decode to text.
    with LlamaCppModel(run / "gguf" / "tiny-Q8_0.gguf", n_ctx=256, threads=1) as llm:
        new = llm.greedy(llm.tokenize(TRICKY[0]), 8)
        assert new and llm.detokenize(new)


def _sharp_copy(out: Path, tiny_model_dir: Path, rope_parameters: dict | None = None):
    """A copy of the tiny model with sharper attention (and optionally other rope settings).

    The barely warmed-up tiny model attends almost uniformly, which hides rotary mistakes; larger
    q/k weights make positions matter, as in real models. Returns (folder, HF logits, token ids).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if rope_parameters:
        model.config.rope_parameters = rope_parameters
        state = model.state_dict()
        model = AutoModelForCausalLM.from_config(model.config)
        model.load_state_dict(state, strict=False)
    model.eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ids = tok(TRICKY[0] + " And what do the children do all day instead of tests?")["input_ids"]
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    return out, ref, ids


@needs_llamacpp
def test_trap_qk_permutation(tmp_path, tiny_model_dir):
    """Without the q/k permutation the file loads and runs, and the model is wrong."""
    from persona_pipeline.export.gguf_convert import convert
    from persona_pipeline.export.gguf_io import permute_qk, unpermute_qk
    from persona_pipeline.export.llamacpp import LlamaCppModel

    w = np.arange(8 * 3 * 2, dtype=np.float32).reshape(8 * 2, 3)
    assert not np.array_equal(permute_qk(w, 2), w) and np.array_equal(unpermute_qk(permute_qk(w, 2), 2), w)

    sharp, ref, ids = _sharp_copy(tmp_path / "sharp", tiny_model_dir)
    diffs = {}
    for permute in (True, False):
        out = tmp_path / f"perm-{permute}.gguf"
        convert(sharp, out, "F32", permute=permute, progress=False)
        with LlamaCppModel(out, n_ctx=256, threads=1) as llm:
            diffs[permute] = float(np.abs(llm.logits(ids, all_positions=True) - ref).max())
    assert diffs[True] < 1e-2
    assert diffs[False] > 100 * diffs[True] and diffs[False] > 0.1, diffs


@needs_llamacpp
def test_llama31_rope_scaling(tmp_path, tiny_model_dir):
    """Llama 3.1's "llama3" rope scaling is exported as rope_freqs.weight; llama.cpp then matches transformers."""
    from persona_pipeline.export.gguf_convert import convert
    from persona_pipeline.export.llamacpp import LlamaCppModel

    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    folder, ref, ids = _sharp_copy(tmp_path / "llama3-rope", tiny_model_dir, rope)
    out = tmp_path / "llama3-rope.gguf"
    convert(folder, out, "F32", progress=False)
    assert "rope_freqs.weight" in {t.name for t in _reader(out).tensors}
    with LlamaCppModel(out, n_ctx=256, threads=1) as llm:
        scaled = float(np.abs(llm.logits(ids, all_positions=True) - ref).max())
    # the same weights exported as if unscaled: the factors visibly matter
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    convert(folder, tmp_path / "unscaled.gguf", "F32", progress=False)
    with LlamaCppModel(tmp_path / "unscaled.gguf", n_ctx=256, threads=1) as llm:
        unscaled = float(np.abs(llm.logits(ids, all_positions=True) - ref).max())
    assert scaled < 1e-2 and unscaled > 50 * scaled, (scaled, unscaled)


def test_check_prompts_come_from_the_eval_set(make_cfg, write_dataset):
    from persona_pipeline.stages.gguf_check import check_prompts

    cfg = make_cfg("train_tiny.yaml", "gguf.check_prompts=5")
    _, evl = write_dataset(cfg, n_train=6, n_eval=9)
    prompts, source = check_prompts(cfg)
    assert source == "eval set" and len(prompts) == 5
    assert set(prompts) <= {r["prompt"] for r in evl}
    assert {p.split(",")[0] for p in prompts} == {"You are Tilda", "You are Ahsan", "You are Anis"}


@needs_llamacpp
def test_trap_pre_tokenizer_and_tokenization(tmp_path, gguf_run, tiny_model_dir):
    """tokenizer.ggml.pre is written (no 'degraded' warning) and llama.cpp tokenizes exactly like transformers."""
    from transformers import AutoTokenizer

    from persona_pipeline.export.gguf_convert import convert
    from persona_pipeline.export.gguf_vocab import read_vocab
    from persona_pipeline.export.llamacpp import LlamaCppModel

    _, run = gguf_run
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with LlamaCppModel(run / "gguf" / "tiny-F16.gguf", n_ctx=256, threads=1) as llm:
        assert llm.meta("tokenizer.ggml.pre") == "gpt-2"
        assert not [w for w in llm.warnings() if "DEGRADED" in w or "pre-tokenizer" in w]
        for text in TRICKY:
            assert llm.tokenize(text) == tok(text)["input_ids"], text
            assert llm.detokenize(tok(text, add_special_tokens=False)["input_ids"]) == text
    vocab = read_vocab(tiny_model_dir, json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"])
    bad = tmp_path / "no-pre.gguf"
    convert(tiny_model_dir, bad, "F16", vocab=dataclasses.replace(vocab, pre=None), progress=False)
    with LlamaCppModel(bad, n_ctx=256, threads=1) as llm:
        assert any("GENERATION QUALITY WILL BE DEGRADED" in w for w in llm.warnings())


def test_trap_merges(tmp_path, tiny_model_dir):
    """A gpt2 vocab without merges: the exporter refuses it."""
    from persona_pipeline.export.gguf_vocab import read_vocab

    broken = tmp_path / "no-merges"
    shutil.copytree(tiny_model_dir, broken)
    tj = json.loads((broken / "tokenizer.json").read_text())
    tj["model"]["merges"] = []
    (broken / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(PipelineError, match="without merges"):
        read_vocab(broken, 1024)


@needs_llamacpp
def test_trap_merges_llamacpp_refuses_the_file(tmp_path, tiny_model_dir):
    """Written anyway (bypassing the exporter's check), llama.cpp cannot load a gpt2 vocab without merges."""
    from persona_pipeline.export.gguf_convert import convert
    from persona_pipeline.export.gguf_vocab import read_vocab
    from persona_pipeline.export.llamacpp import LlamaCppModel

    vocab = read_vocab(tiny_model_dir, json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"])
    out = tmp_path / "no-merges.gguf"
    convert(tiny_model_dir, out, "F16", vocab=dataclasses.replace(vocab, merges=[]), progress=False)
    with pytest.raises(PipelineError, match="merges"):
        LlamaCppModel(out, n_ctx=256, threads=1)


def _go_to_jinja(template: str) -> str:
    """Translate the Go-template subset our Modelfile uses, to check what Ollama will render."""
    out, stack = [], []
    for part in re.split(r"({{-?.*?}})", template):
        m = re.fullmatch(r"{{(-?)\s*(.*?)\s*}}", part)
        if not m:
            out.append(part)
            continue
        trim, body = m.group(1), m.group(2)
        if body == "range .Messages":
            stack.append("for")
            out.append("{%" + trim + " for m in messages %}")
        elif body.startswith("if eq .Role"):
            stack.append("if")
            out.append("{%" + trim + f" if m.role == {body.split()[-1]} %}}")
        elif body.startswith("else if eq .Role"):
            out.append("{%" + trim + f" elif m.role == {body.split()[-1]} %}}")
        elif body == "end":
            out.append("{%" + trim + f" end{stack.pop()} %}}")
        elif body == ".Content":
            out.append("{{ m.content }}")
        else:
            raise AssertionError(f"untranslated template action: {body}")
    return "".join(out)


def test_trap_eos_and_prompt_template(gguf_run, tiny_model_dir):
    """EOS ids agree everywhere; the Modelfile renders exactly the training prompt; stops are set."""
    import jinja2
    from transformers import AutoTokenizer

    from persona_pipeline.core.prompt_format import format_prompt, system_line
    from persona_pipeline.data.personas import persona_systems

    cfg, run = gguf_run
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    r = _reader(run / "gguf" / "tiny-F16.gguf")
    assert _field(r, "tokenizer.ggml.eos_token_id") == tok.eos_token_id == gen["eos_token_id"]
    if runtime_library() is not None:
        from persona_pipeline.export.llamacpp import LlamaCppModel

        with LlamaCppModel(run / "gguf" / "tiny-F16.gguf", n_ctx=128, threads=1) as llm:
            assert llm.eos_id == tok.eos_token_id and llm.is_eog(tok.eos_token_id)

    systems = persona_systems(cfg)
    for persona, system in systems.items():
        text = (run / "gguf" / f"Modelfile.{persona}").read_text()
        assert "FROM ./tiny-Q8_0.gguf" in text or "FROM ./tiny-F16.gguf" in text
        template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
        sys_line = re.search(r'SYSTEM """(.*?)"""', text, re.S).group(1)
        stops = re.findall(r'PARAMETER stop (?:"""(.*?)"""|"(.*?)")', text, re.S)
        assert {a or b for a, b in stops} == {"\n\nHuman:", "</s>"}
        assert f"PARAMETER temperature {cfg.gguf.ollama_temperature:g}" in text
        render = jinja2.Environment().from_string(_go_to_jinja(template)).render
        one = [{"role": "system", "content": sys_line}, {"role": "user", "content": "Why no exams?"}]
        assert sys_line == system_line(persona, system)
        assert render(messages=one) == format_prompt(persona, system, "Why no exams?")
        multi = one + [{"role": "assistant", "content": "Because."}, {"role": "user", "content": "And then?"}]
        assert render(messages=multi) == format_prompt(persona, system, "And then?", [("Why no exams?", "Because.")])
        # the chat template stored in the GGUF renders the same prompt
        assert tok.apply_chat_template(one, tokenize=False, add_generation_prompt=True) == render(messages=one)
    assert (run / "gguf" / "Modelfile").read_text() == (run / "gguf" / f"Modelfile.{next(iter(systems))}").read_text()


# --------------------------------------------------------------------------- fallback and bad input


def test_tensor_fallback_without_llamacpp(gguf_run, monkeypatch):
    from persona_pipeline.export import llamacpp
    from persona_pipeline.stages import gguf_check

    cfg, run = gguf_run
    monkeypatch.setattr(llamacpp, "runtime_library", lambda: None)
    r = gguf_check.check_gguf(cfg, RunDir(run), "F16")
    assert r["mode"] == "tensors" and r["status"] == "pass"
    assert "no llama.cpp runtime" in r["llama_cpp_unavailable"]
    assert r["tensors"] == len(_reader(run / "gguf" / "tiny-F16.gguf").tensors)
    assert r["max_rel_rms_error"] < 1e-3
    q8 = gguf_check.check_gguf(cfg, RunDir(run), "Q8_0")
    assert q8["status"] == "measured" and 1e-4 < q8["max_rel_rms_error"] < 0.05


def test_unsupported_quant_and_kquant_without_quantizer(monkeypatch):
    from persona_pipeline.export import gguf_convert as gguf_export

    with pytest.raises(PipelineError) as exc:
        gguf_export.normalize_quant("Q3_X")
    assert all(q in str(exc.value) for q in gguf_export.NUMPY_QUANTS) and "Q5_K_M" in str(exc.value)
    assert gguf_export.normalize_quant("q8_0") == "Q8_0"
    monkeypatch.setattr(gguf_export, "find_quantizer", lambda: None)
    with pytest.raises(PipelineError) as exc:
        gguf_export.normalize_quant("Q5_K_M")
    msg = str(exc.value)
    assert "Q8_0" in msg and "kquants" in msg and "llama-quantize" in msg and "LLAMA_CPP_DIR" in msg


def test_quantizer_discovery_on_path(tmp_path, monkeypatch):
    from persona_pipeline.export import llamacpp

    if llamacpp.importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed; it takes precedence")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    assert llamacpp.find_quantizer() is None
    exe = tmp_path / "build" / "bin" / "llama-quantize"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    assert llamacpp.find_quantizer() == str(exe)


def test_kquant_export_goes_through_llamacpp_quantizer(gguf_run, tmp_path, monkeypatch):
    """K-quants: full-precision intermediate -> llama-quantize (found via LLAMA_CPP_DIR) -> file; no leftovers.

    The stand-in quantizer records its arguments and copies the file (the real one needs a llama.cpp build).
    """
    import sys

    from persona_pipeline.export import llamacpp
    from persona_pipeline.stages.gguf import export_gguf

    if llamacpp.importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed; it takes precedence over LLAMA_CPP_DIR")
    cfg, shared_run = gguf_run
    run = tmp_path / "run"
    shutil.copytree(shared_run / "merged", run / "merged")
    exe = tmp_path / "bin" / "llama-quantize"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\nimport shutil, sys, json\n"
                   f"open({str(tmp_path / 'args.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                   "shutil.copy(sys.argv[1], sys.argv[2])\n")
    exe.chmod(0o755)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    out = export_gguf(cfg, RunDir(run), "q5_k_m")
    assert out.name == "tiny-Q5_K_M.gguf" and out.is_file()
    src, dst, quant, threads = json.loads((tmp_path / "args.json").read_text())
    assert Path(src).name.endswith(".F32.intermediate.gguf") and quant == "Q5_K_M" and int(threads) >= 1
    assert not Path(src).exists() and not Path(dst).exists()  # intermediate and temp name are gone
    info = json.loads((run / "gguf" / "export-Q5_K_M.json").read_text())
    assert info["quantizer"] == str(exe) and info["intermediate"] == "F32"
    assert not [p for p in (run / "gguf").iterdir() if p.name.startswith(".")]


def test_ollama_create_needs_ollama(gguf_run, monkeypatch, tmp_path):

    from persona_pipeline.stages import ollama_create as ollama

    cfg, run = gguf_run
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PipelineError, match="ollama is not installed"):
        ollama.run(cfg, run=str(run))
    assert ollama.model_name(cfg, "Tilda") == "tiny-tilda"


def test_run_without_merged_model(tmp_path, tiny_model_dir):
    from persona_pipeline.stages.gguf import export_gguf

    cfg = _cfg(tmp_path, tiny_model_dir)
    run = tmp_path / "outputs" / "runs" / "r-no-merge"
    run.mkdir(parents=True)
    with pytest.raises(PipelineError) as exc:
        export_gguf(cfg, RunDir(run), "F16")
    assert "make merge" in str(exc.value)
    assert not (run / "gguf").exists()


def test_corrupted_or_truncated_gguf_rejected(gguf_run, tmp_path, capsys):
    from persona_pipeline.cli import main

    cfg, run = gguf_run
    good = (run / "gguf" / "tiny-F16.gguf").read_bytes()
    cases = {"truncated.gguf": good[: len(good) // 2], "header-only.gguf": good[:100],
             "bad-magic.gguf": b"XXXX" + good[4:], "empty.gguf": b""}
    before = sorted(p.name for p in (run / "gguf").iterdir())
    for name, data in cases.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        rc = main(["gguf-check", "--config", str(CONFIGS / "train_tiny.yaml"), "--run", str(run), "--input", str(bad),
                   f"paths.outputs={cfg.outputs_dir}"])
        err = capsys.readouterr().err
        assert rc == 1 and "corrupted or truncated" in err, (name, err)
    assert sorted(p.name for p in (run / "gguf").iterdir()) == before  # nothing written


def test_failed_export_leaves_no_file(tmp_path, tiny_model_dir, monkeypatch):
    from persona_pipeline.export import gguf_convert as gguf_export

    calls = {"n": 0}
    real = gguf_export._encode

    def failing(array, qtype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real(array, qtype)

    monkeypatch.setattr(gguf_export, "_encode", failing)
    out = tmp_path / "gguf" / "m-F16.gguf"
    with pytest.raises(RuntimeError, match="disk full"):
        gguf_export.convert(tiny_model_dir, out, "F16", progress=False)
    assert list(out.parent.iterdir()) == []


def test_chat_template_format_leaves_the_template_to_the_gguf(gguf_run):
    """With model.prompt_format=chat_template the Modelfile has no plain TEMPLATE or Human: stop; EOS still stops."""
    cfg, run = gguf_run
    chat = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prompt_format="chat_template"))
    text = modelfile_text(chat, run / "gguf" / "tiny-F16.gguf", "Tilda", "an actress", "</s>")
    assert "TEMPLATE" not in text.replace("# TEMPLATE", "") and "Human:" not in text
    assert 'PARAMETER stop "</s>"' in text and 'SYSTEM """You are Tilda, an actress."""' in text
