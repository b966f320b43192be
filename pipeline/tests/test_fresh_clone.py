"""A fresh clone works in any order: a stage that needs the tiny base model or the generated data builds them first."""

from __future__ import annotations

from conftest import CONFIGS, TINY_TEST_MODEL
from persona_pipeline.cli import main


def test_tokenize_on_a_fresh_clone_builds_base_model_and_data(tmp_path, data_key, capsys):
    out = tmp_path / "outputs"
    args = ["tokenize", "--config", "train_tiny", *TINY_TEST_MODEL, "base_model.warmup_steps=2",
            f"paths.outputs={out}", f"model.name_or_path={out / 'models' / 'tiny-llama'}",
            f"generate.output_dir={tmp_path / 'data'}", f"data.train={tmp_path / 'data' / 'train.jsonl.enc'}",
            f"data.eval={tmp_path / 'data' / 'eval.jsonl.enc'}", "train.num_threads=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "base model" in printed and "building it first" in printed
    assert "generating them first" in printed and "train: tokenized" in printed
    assert (out / "models" / "tiny-llama" / "config.json").is_file()
    assert (tmp_path / "data" / "train.jsonl.enc").is_file()
    # Second time: nothing to build.
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "building it first" not in printed and "generating them first" not in printed


def test_own_model_and_data_paths_are_never_built(tmp_path, data_key, capsys):
    args = ["tokenize", "--config", str(CONFIGS / "train_tiny.yaml"), f"paths.outputs={tmp_path / 'outputs'}",
            f"model.name_or_path={tmp_path / 'elsewhere' / 'model'}", f"generate.output_dir={tmp_path / 'data'}",
            f"data.train={tmp_path / 'mine' / 'train.jsonl'}", f"data.eval={tmp_path / 'mine' / 'eval.jsonl'}"]
    assert main(args) == 1
    assert "base model folder not found" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "data").exists()
