"""publish-hf DRY_RUN: the staged upload folder holds the model, GGUF and a card with the run's real metrics,
and never keys, data or checkpoints. Bad repo ids and a missing token fail before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from persona_pipeline.core.config import dump_config, load_config
from persona_pipeline.core.errors import ConfigError, PipelineError
from persona_pipeline.core.runs import RunDir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _metrics(rouge_l: float, persona_match: float, model: str) -> dict:
    overall = {"n": 12, "rouge1": rouge_l + 0.1, "rouge2": rouge_l / 2, "rougeL": rouge_l, "bleu": 3.25,
               "persona_match": persona_match, "blend_rate": 0.0833, "words_mean": 41.5}
    return {
        "config": "tiny", "created": "2026-11-26T00:00:00", "model": {"source": "run", "model": model},
        "eval_set": {"path": "/x/eval.jsonl.enc", "sha256": "ab" * 32, "n_records": 12, "n_evaluated": 12,
                     "containment": {"run_words": 8, "references_sharing_run": 1, "n": 12}},
        "generation": {"do_sample": False, "max_new_tokens": 64},
        "overall": overall,
        "per_persona": {name: {**overall, "n": 4} for name in ("Tilda", "Ahsan", "Anis")},
    }


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir):
    """A finished run, with private files planted where a careless publisher would pick them up."""
    run = tmp_path / "outputs" / "runs" / "20260102-030405"
    shutil.copytree(tiny_model_dir, run / "merged")
    (run / "merged" / "training_args.bin").write_bytes(b"pickle")
    (run / "merged" / "persona_data.key").write_text("c2VjcmV0")
    (run / "merged" / "train.jsonl").write_text('{"prompt": "PRIVATE-PROMPT", "completion": "PRIVATE-ANSWER"}\n')
    adapter = run / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 64, "base_model_name_or_path": str(tiny_model_dir)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    shutil.copy(tiny_model_dir / "tokenizer.json", adapter)
    (adapter / "optimizer.pt").write_bytes(b"state")
    ckpt = run / "checkpoints" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "optimizer.pt").write_bytes(b"state")
    (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (run / "secrets.key").write_text("c2VjcmV0")
    (run / "config.yaml").write_text(dump_config(load_config(CONFIGS / "train_tiny.yaml")))  # as `make train` writes it
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(_metrics(0.4321, 0.9167, "tuned")))
    (run / "eval" / "predictions.jsonl.enc").write_bytes(b"encrypted")
    (run / "eval_baseline").mkdir()
    (run / "eval_baseline" / "metrics.json").write_text(json.dumps(_metrics(0.1234, 0.3333, "base")))
    (run / "compare").mkdir()
    rouge = {"n": 12, "baseline": 0.1234, "fine_tuned": 0.4321, "change": 0.3087, "change_ci": [0.25, 0.36], "verdict": "better"}
    match = {**rouge, "n": 4, "change": 0.05, "change_ci": [-0.1, 0.2], "verdict": "no clear change"}
    (run / "compare" / "comparison.json").write_text(json.dumps(
        {"paired": {"overall": {"rougeL": rouge}, "per_origin": {"real": {"rougeL": match}}}}))
    (run / "train_summary.json").write_text(json.dumps(
        {"epochs": 6.0, "global_step": 42, "tokens_seen": 12345, "trainable_parameters": 98765,
         "base_eval_loss": 4.5, "final_eval_loss": 2.25, "samples": {"train": 48, "eval": 12}}))
    gg = run / "gguf"
    gg.mkdir()
    (gg / "tiny-Q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (gg / "Modelfile").write_text("FROM ./tiny-Q8_0.gguf\n")
    (gg / "Modelfile.Tilda").write_text("FROM ./tiny-Q8_0.gguf\n")
    (gg / ".tiny-Q5_K_M.F32.intermediate.gguf").write_bytes(b"partial")
    (gg / "check-Q8_0.json").write_text(json.dumps(
        {"mode": "llama.cpp", "status": "measured", "greedy_equal": 4, "prompts": 4, "top1_agreement": 0.987,
         "max_logit_diff": 0.0123}))
    return run


def _cfg(tmp_path, tiny_model_dir, *extra):
    return load_config(CONFIGS / "train_tiny.yaml", [f"paths.outputs={tmp_path / 'outputs'}",
                                                     f"model.name_or_path={tiny_model_dir}", *extra])


def test_dry_run_stages_model_gguf_and_card_with_real_metrics(tmp_path, tiny_model_dir, run_dir, capsys):
    from persona_pipeline.stages.publish_hf import forbidden_files, run

    data = tmp_path / "data"
    data.mkdir()
    (data / "stats.json").write_text(json.dumps({"origin_share": {"quote": 0.21, "quote_derived": 0.166, "invented": 0.624}}))
    cfg = _cfg(tmp_path, tiny_model_dir, "publish.repo_id=me/personas", f"data.train={data / 'train.jsonl.enc'}")
    (run_dir / "config.yaml").write_text(dump_config(cfg))  # the run was trained on that data
    assert run(cfg, run=run_dir.name, dry_run=True) == 0
    staged = run_dir / "publish" / "tiny"
    names = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert names == ["README.md", "chat_template.jinja", "config.json", "generation_config.json",
                     "gguf/Modelfile", "gguf/Modelfile.Tilda", "gguf/tiny-Q8_0.gguf", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"]
    assert forbidden_files(staged) == []
    for p in staged.rglob("*"):
        assert not p.name.endswith((".key", ".jsonl", ".enc", ".pt", ".bin")) and "checkpoint" not in str(p)
    out = capsys.readouterr().out
    assert "would upload 10 files" in out and "me/personas/tiny" in out and "nothing sent" in out
    card = (staged / "README.md").read_text()
    assert "license: apache-2.0" in card
    assert "| ROUGE-L | 0.123 | 0.432 | +0.309 [+0.250, +0.360] ✓ |" in card
    assert "| persona match | 0.333 | 0.917 | no interval |" in card  # compared, but no interval in comparison.json
    assert "| real | 4 | +0.050 [-0.100, +0.200] ≈ | n/a | n/a |" in card
    assert "| Tilda | 4 |" in card
    # What "held out" means is measured, not asserted: the eval's own overlap count from metrics.json.
    assert "1 of 12 reference answers share a run of 8 words with a training answer" in card and "never seen" not in card
    assert "r=64, alpha=128" in card and "48 training and 12 held-out samples" in card
    assert "public statements" not in card  # the data's provenance is measured (origin shares below)
    assert "2.250 after" in card and "top-1 agreement 0.987" in card
    assert 'subfolder="tiny"' in card and "You are Tilda, " in card
    assert "21.0% real quotes" in card and "16.6% derived from quotes" in card and "62.4% invented" in card
    for p in staged.rglob("*"):  # no data text anywhere
        assert b"PRIVATE-" not in p.read_bytes() if p.is_file() else True


def test_adapter_artifact_and_missing_eval(tmp_path, tiny_model_dir, run_dir):
    from persona_pipeline.stages.publish_hf import stage_publish

    shutil.rmtree(run_dir / "eval")
    cfg = _cfg(tmp_path, tiny_model_dir, "publish.artifact=adapter", "publish.include_gguf=false",
               "publish.subfolder=tiny-adapter")
    staged = stage_publish(cfg, RunDir(run_dir), dry_run=True, repo_id="me/personas")
    assert staged.name == "tiny-adapter"
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "adapter_config.json",
                                                        "adapter_model.safetensors", "tokenizer.json"]
    card = (staged / "README.md").read_text()
    assert "not evaluated yet" in card and "PeftModel.from_pretrained" in card and "library_name: peft" in card


@pytest.mark.parametrize("repo_id", ["me", "a/b/c", "-me/x", "me/na me", "me/x--y", "me/", "/x", "me/x.git"])
def test_bad_repo_id_fails_before_any_work(tmp_path, tiny_model_dir, run_dir, repo_id):
    from persona_pipeline.stages.publish_hf import run

    cfg = _cfg(tmp_path, tiny_model_dir, f"publish.repo_id={repo_id}")
    with pytest.raises(ConfigError, match="owner/name"):
        run(cfg, run=run_dir.name, dry_run=True)
    assert not (run_dir / "publish").exists()


def test_missing_repo_id_and_missing_token(tmp_path, tiny_model_dir, run_dir, monkeypatch):
    from persona_pipeline.cli import main
    from persona_pipeline.stages.publish_hf import run

    args = ["publish-hf", "--config", str(CONFIGS / "train_tiny.yaml"), "--run", str(run_dir), "--dry-run",
            f"paths.outputs={tmp_path / 'outputs'}"]
    assert main(args) == 2  # no HF_REPO_ID: a usage error
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    cfg = _cfg(tmp_path, tiny_model_dir, "publish.repo_id=me/personas")
    with pytest.raises(PipelineError, match="no Hugging Face token"):
        run(cfg, run=run_dir.name, dry_run=False)
    assert not (run_dir / "publish").exists()


def test_forbidden_files_detects_private_files(tmp_path):
    from persona_pipeline.stages.publish_hf import forbidden_files

    for rel in ("ok/config.json", "a.key", "data/x.txt", "checkpoint-3/adapter_model.safetensors", "e.jsonl.enc",
                "optimizer.pt", ".secrets/k", "tokenizer.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    bad = forbidden_files(tmp_path)
    assert "ok/config.json" not in bad and "tokenizer.json" not in bad
    for rel in ("a.key", "data/x.txt", "checkpoint-3/adapter_model.safetensors", "e.jsonl.enc", "optimizer.pt", ".secrets/k"):
        assert rel in bad
