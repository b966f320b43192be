"""make merge: adapter folded into the base model, logits checked, clear errors, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_pipeline.cli import main
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.runs import RunDir


def save_random_adapter(model_dir: Path, run_dir: Path, r: int = 8) -> Path:
    """A LoRA adapter with random (non-zero) B matrices, so that it really changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lcfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lcfg)
    out = run_dir / "adapter"
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def test_merge_checks_logits_and_saves_a_loadable_model(make_cfg, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_pipeline.stages.merge import merge

    cfg = make_cfg("train_tiny.yaml")
    run_dir = cfg.runs_dir / "r1"
    save_random_adapter(cfg.resolve(cfg.model.name_or_path), run_dir)

    out = merge(cfg, RunDir(run_dir)).merged
    info = json.loads((out / "merge_info.json").read_text())
    assert info["max_abs_logit_diff"] <= info["tolerance"] == 1e-3
    assert info["adapter_effect_max_abs"] > 100 * info["max_abs_logit_diff"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("adapter_*")), "the merged folder must be a plain model"

    # Independently: the saved merged model gives the adapter model's logits.
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["You are Tilda, an actress.\n\nHuman: What is a school for?\n\nTilda:"], return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(cfg.resolve(cfg.model.name_or_path))
    adapted = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(**enc).logits, adapted(**enc).logits, atol=1e-4)

    # A second merge reuses the folder unless forced.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert merge(cfg, RunDir(run_dir)).merged == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_merge_errors_leave_nothing_behind(make_cfg, capsys):
    from persona_pipeline.stages.merge import merge

    cfg = make_cfg("train_tiny.yaml")
    empty_run = cfg.runs_dir / "unfinished"
    empty_run.mkdir(parents=True)
    with pytest.raises(PipelineError, match="no LoRA adapter"):
        merge(cfg, RunDir(empty_run))
    assert not (empty_run / "merged").exists()

    cfg_file = str(cfg.source_file)
    overrides = [f"paths.outputs={cfg.outputs_dir}", f"model.name_or_path={cfg.model.name_or_path}"]
    assert main(["merge", "--config", cfg_file, "--run", "no-such-run", *overrides]) == 1
    assert "run not found: no-such-run" in capsys.readouterr().err

    # A missing base model folder is named, with the fix.
    save_random_adapter(cfg.resolve(cfg.model.name_or_path), empty_run)
    rc = main(["merge", "--config", cfg_file, "--run", str(empty_run), f"paths.outputs={cfg.outputs_dir}",
               f"model.name_or_path={cfg.outputs_dir / 'missing-model'}"])
    assert rc == 1
    assert "base model folder not found" in capsys.readouterr().err
    assert not (empty_run / "merged").exists()
