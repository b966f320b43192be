"""The CLI and the Makefile expose every stage, with help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PIPELINE
from persona_pipeline.cli import STAGES, build_parser, main


def test_every_stage_module_exists():
    import importlib.util

    for stage in STAGES:
        module = stage.target.split(":")[0]
        assert importlib.util.find_spec(f"persona_pipeline.{module}"), f"{stage.name}: module {module} missing"


def test_help_lists_stages(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage.name in out


def test_stage_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "--config" in out and "--resume" in out and "key=value" in out


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "persona_pipeline", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "persona-pipeline" in proc.stdout


def test_make_help_lists_targets_and_variables():
    proc = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(PIPELINE), "help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for target in ["venv", "install", "base-model", "data", "validate-data", "tokenize", "train", "train-bg",
                   "merge", "eval", "compare", "gguf", "gguf-check", "publish-hf", "bench", "demo", "test"]:
        assert f"  {target} " in proc.stdout, target
    for var in ["TRAIN_CONFIG", "EVAL_CONFIG", "QUANT", "HF_REPO_ID", "RUN", "NPROC", "RESUME"]:
        assert var in proc.stdout


def test_show_config_prints_resolved(capsys):
    assert main(["show-config", "--config", str(PIPELINE / "configs/eval_tiny_baseline.yaml")]) == 0
    out = capsys.readouterr().out
    assert "source: base" in out and "lora_alpha: 128" in out


def test_bare_config_names_resolve_from_any_folder(tmp_path):
    """The seed's commands as written: TRAIN_CONFIG=train_llama31_8b_instruct (no folder, no .yaml)."""
    proc = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(PIPELINE), "show-config",
                           "TRAIN_CONFIG=train_llama31_8b_instruct"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "name: llama31_8b_instruct" in proc.stdout and "meta-llama/Llama-3.1-8B-Instruct" in proc.stdout
    # The CLI itself, from another folder, with or without .yaml; an unknown name lists the shipped ones.
    for name in ("eval_tiny_baseline", "eval_tiny_baseline.yaml"):
        proc = subprocess.run([str(Path(sys.executable).with_name("persona-pipeline")), "show-config", "--config", name],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0 and "source: base" in proc.stdout, proc.stderr
    proc = subprocess.run([str(Path(sys.executable).with_name("persona-pipeline")), "show-config", "--config", "train_lama31"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "config not found: train_lama31" in proc.stderr and "train_llama31_8b_instruct" in proc.stderr
