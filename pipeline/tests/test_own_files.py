"""Your own files: a new persona YAML flows through data, eval (fidelity), Modelfiles and chat with no other edit;
your own eval file, plain JSONL, evaluates a run (EVAL_FILE)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import CONFIGS, PIPELINE, finetune, persona_records
from persona_pipeline.cli import main
from persona_pipeline.core.config import load_config
from persona_pipeline.core.records import read_records

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_new_persona_file_flows_through_data_eval_modelfiles_and_chat(tmp_path, tiny_model_dir, data_key, capsys):
    from persona_pipeline.core.prompt_format import format_completion, format_prompt
    from persona_pipeline.core.records import write_records
    from persona_pipeline.core.runs import RunDir
    from persona_pipeline.data.personas import load_persona_file
    from persona_pipeline.stages.gguf import export_gguf
    from persona_pipeline.stages.merge import merge

    personas_dir = tmp_path / "personas"
    shutil.copytree(PIPELINE / "data" / "personas", personas_dir)
    shutil.copy(FIXTURES / "mira.yaml", personas_dir / "mira.yaml")  # a beekeeper: nothing else mentions her
    overrides = [
        f"generate.personas_dir={personas_dir}", "generate.transcripts=[]", f"generate.output_dir={tmp_path / 'data'}",
        f"data.train={tmp_path / 'data' / 'train.jsonl.enc'}", f"data.eval={tmp_path / 'data' / 'eval.jsonl.enc'}",
        f"paths.outputs={tmp_path / 'outputs'}", f"model.name_or_path={tiny_model_dir}", "train.num_threads=1",
        "eval.max_new_tokens=16", "eval.embeddings=off",
    ]
    config = ["--config", str(CONFIGS / "eval_tiny.yaml")]
    # data: the new persona gets training samples (no other edit: eval.personas is unset, so every persona file counts).
    assert main(["data", *config, *overrides]) == 0
    cfg = load_config(CONFIGS / "eval_tiny.yaml", overrides)
    key = bytes(range(32))
    train = read_records(cfg.resolve(cfg.data.train), key)
    assert {"Tilda", "Mira"} <= {r["meta"]["persona"] for r in train}

    run_dir = cfg.runs_dir / "own"
    finetune(tiny_model_dir, run_dir / "adapter", train[:64], steps=10)
    (cfg.runs_dir / "latest").symlink_to("own")
    # eval on an eval file with Mira's questions: scored per persona, in ROUGE and the persona classifier (fidelity).
    mira = load_persona_file(personas_dir / "mira.yaml")
    own_eval = read_records(cfg.resolve(cfg.data.eval), key)[:6] + [
        {"prompt": format_prompt("Mira", mira.system, f.ask[0]), "completion": format_completion(f.text), "meta": {"persona": "Mira"}}
        for f in mira.facts[:4]
    ]
    write_records(tmp_path / "my_eval.jsonl.enc", own_eval, key)
    assert main(["eval", *config, *overrides, f"data.eval={tmp_path / 'my_eval.jsonl.enc'}"]) == 0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert "Mira" in metrics["per_persona"] and metrics["per_persona"]["Mira"]["n"] == 4
    assert "Mira" in metrics["fidelity"]["tfidf"]["per_persona"]
    # Modelfiles: one per persona file.
    merge(cfg, RunDir(run_dir))
    gguf_file = export_gguf(cfg, RunDir(run_dir), "F16")
    assert 'SYSTEM """You are Mira, a beekeeper who keeps forty hives' in (gguf_file.parent / "Modelfile.Mira").read_text()
    # chat: answers as Mira in the training prompt format.
    capsys.readouterr()
    assert main(["ask", *config, "--persona", "mira", "-q", "How many hives do you keep?", *overrides]) == 0
    assert capsys.readouterr().out.startswith("Mira: ")


def test_your_own_plain_eval_file(tmp_path, tiny_model_dir, data_key):
    """EVAL_FILE=my.jsonl: plain JSONL (predictions stay plain), personas taken from what the file covers."""
    from persona_pipeline.core.records import write_records

    overrides = [f"paths.outputs={tmp_path / 'outputs'}", f"model.name_or_path={tiny_model_dir}",
                 f"data.train={tmp_path / 'train.jsonl.enc'}", "eval.max_new_tokens=16", "eval.embeddings=off",
                 "train.num_threads=1"]
    cfg = load_config(CONFIGS / "eval_tiny.yaml", overrides)
    train = persona_records(48, 1)
    write_records(cfg.resolve(cfg.data.train), train, bytes(range(32)))
    mine = tmp_path / "my_eval.jsonl"
    own = [r for r in persona_records(12, 3) if r["meta"]["persona"] != "Ahsan"]
    mine.write_text("".join(json.dumps(r) + "\n" for r in own))
    run_dir = cfg.runs_dir / "r"
    finetune(tiny_model_dir, run_dir / "adapter", train, steps=10)
    # As `make eval RUN=r EVAL_FILE=my_eval.jsonl` runs it.
    assert main(["eval", "--run", "r", *overrides, f"data.eval={mine}"]) == 0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["eval_set"]["path"] == str(mine) and metrics["eval_set"]["n_evaluated"] == len(own)
    assert set(metrics["per_persona"]) == {"Tilda", "Anis"}
    assert (run_dir / "eval" / "predictions.jsonl").is_file() and not (run_dir / "eval" / "predictions.jsonl.enc").exists()
