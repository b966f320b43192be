"""A run remembers its config: --run stages default to run/config.yaml; a config for another model or data is an error."""

from __future__ import annotations

import json
import subprocess

from conftest import CONFIGS, PIPELINE
from persona_pipeline.cli import main
from persona_pipeline.core.config import dump_config, load_config
from test_merge import save_random_adapter


def _trained_run(tmp_path, tiny_model_dir):
    """A run as `make train` leaves it for a non-default config: adapter + the resolved config.yaml."""
    own = [f"model.name_or_path={tiny_model_dir}", "name=mytiny",
           f"data.train={tmp_path / 'mine' / 'train.jsonl.enc'}", f"data.eval={tmp_path / 'mine' / 'eval.jsonl.enc'}",
           f"paths.outputs={tmp_path / 'outputs'}", "train.num_threads=1"]
    cfg = load_config(CONFIGS / "train_tiny.yaml", own)
    run_dir = cfg.runs_dir / "r1"
    save_random_adapter(tiny_model_dir, run_dir)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    (cfg.runs_dir / "latest").symlink_to("r1")
    return run_dir, own


def test_merge_without_a_config_uses_the_runs_config(tmp_path, tiny_model_dir, capsys):
    run_dir, _ = _trained_run(tmp_path, tiny_model_dir)
    # As `make merge RUN=r1` runs it: no --config; the default tiny config names another model folder.
    assert main(["merge", "--run", "r1", f"paths.outputs={tmp_path / 'outputs'}"]) == 0
    info = json.loads((run_dir / "merged" / "merge_info.json").read_text())
    assert info["base_model"] == str(tiny_model_dir)
    # Names derived from the config follow the run's (mytiny), e.g. the GGUF file.
    assert main(["gguf", "--run", "latest", f"paths.outputs={tmp_path / 'outputs'}", "gguf.quant=F16"]) == 0
    assert (run_dir / "gguf" / "mytiny-F16.gguf").is_file()
    capsys.readouterr()


def test_a_config_for_another_model_or_data_is_an_error_naming_both(tmp_path, tiny_model_dir, capsys):
    run_dir, own = _trained_run(tmp_path, tiny_model_dir)
    outputs = f"paths.outputs={tmp_path / 'outputs'}"
    assert main(["merge", "--config", "train_tiny", "--run", "r1", outputs]) == 2
    err = capsys.readouterr().err
    assert "does not match run r1, trained with config mytiny" in err
    assert f"{tiny_model_dir} (run)" in err and "outputs/models/tiny-llama (config)" in err
    assert "data.train:" in err and "leave out --config" in err
    assert not (run_dir / "merged").exists()
    # The same model but other data is refused as well; the run's own settings pass.
    other_data = [o for o in own if not o.startswith("data.train")] + [f"data.train={tmp_path / 'other.jsonl.enc'}"]
    assert main(["merge", "--config", "train_tiny", "--run", "r1", *other_data]) == 2
    assert "data.train:" in capsys.readouterr().err
    assert main(["merge", "--config", "train_tiny", "--run", "r1", *own]) == 0


def test_make_targets_leave_the_config_to_the_run():
    """The Makefile passes --config only when you set TRAIN_CONFIG / EVAL_CONFIG / BASELINE_CONFIG yourself."""
    def dry(*args):
        # --no-print-directory: under an outer make (CI runs `make test`) -C adds enter/leave lines.
        proc = subprocess.run(["make", "-s", "-n", "--no-print-directory", "-C", str(PIPELINE), *args],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return next(line.strip() for line in proc.stdout.splitlines() if "persona-pipeline " in line)

    for target in ("merge", "eval", "compare", "gguf", "gguf-check", "publish-hf", "chat"):
        assert "--config" not in dry(target), target
    assert "--config" not in dry("ask", "Q=hi")
    assert "--config train_llama31_8b_instruct" in dry("merge", "TRAIN_CONFIG=train_llama31_8b_instruct")
    baseline = dry("eval-baseline")
    assert "--config" not in baseline and baseline.endswith("eval.source=base")
