"""Training the tiny model in-process: run folder, TensorBoard scalars, loss drop; bad inputs fail clean."""

from __future__ import annotations

import json

import pytest

from persona_pipeline.core.crypto import encode_key
from persona_pipeline.core.errors import CryptoError, DataError, PipelineError
from persona_pipeline.core.records import write_records
from persona_pipeline.core.runs import RunDir, mark_latest, new_run_dir
from persona_pipeline.stages.train import last_checkpoint, train


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_tiny_run_folder_and_loss(make_cfg, write_dataset, data_key):
    cfg = make_cfg("train_tiny.yaml", "train.epochs=3", "train.logging_steps=2", "train.learning_rate=3e-3",
                   "train.num_threads=1")
    write_dataset(cfg, n_train=48, n_eval=12)
    run = train(cfg).path

    assert (cfg.runs_dir / "latest").resolve() == run
    for name in ("config.yaml", "train.log", "train_summary.json", "base_eval.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "adapter/tokenizer.json"):
        assert (run / name).is_file(), name
    assert last_checkpoint(RunDir(run)).name == "checkpoint-18"  # 48 samples / batch 8 = 6 steps per epoch, 3 epochs
    assert data_key not in (run / "config.yaml").read_text()  # the resolved config holds no secret

    s = json.loads((run / "train_summary.json").read_text())
    assert s["status"] == "completed" and s["global_step"] == 18 and s["samples"] == {"train": 48, "eval": 12}
    assert [e["epoch"] for e in s["eval_loss_per_epoch"]] == [1.0, 2.0, 3.0]
    print("eval loss", s["base_eval_loss"], "->", s["final_eval_loss"])
    assert s["final_eval_loss"] < s["base_eval_loss"] - 0.3, s
    assert s["tokens_seen"] == 3 * s["tokenize"]["train"]["tokens"]  # non-padding tokens only

    tb = _scalars(run / "logs")
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second", "eval/loss"):
        assert tb.get(tag), f"{tag} missing from TensorBoard ({sorted(tb)})"
    log = (run / "train.log").read_text()
    assert "base model eval loss" in log and "eval_loss" in log and "tokens_per_second" in log


def _no_run_created(cfg):
    runs = cfg.runs_dir
    return not runs.exists() or not any(p for p in runs.iterdir())


def test_missing_base_model_folder(make_cfg, write_dataset, tmp_path):
    cfg = make_cfg("train_tiny.yaml", f"model.name_or_path={tmp_path / 'no-such-model'}")
    write_dataset(cfg, n_train=8, n_eval=4)
    with pytest.raises(PipelineError, match="base model folder not found"):
        train(cfg)
    assert _no_run_created(cfg)


def test_hub_id_without_network_says_not_cached(make_cfg, write_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    cfg = make_cfg("train_tiny.yaml", "model.name_or_path=meta-llama/Llama-3.1-8B-Instruct")
    write_dataset(cfg, n_train=8, n_eval=4)
    with pytest.raises(PipelineError, match="not cached locally") as exc:
        train(cfg)
    assert "download" in str(exc.value)
    assert _no_run_created(cfg)


def test_wrong_key_and_empty_data_leave_latest_alone(make_cfg, write_dataset, monkeypatch):
    cfg = make_cfg()
    write_dataset(cfg, n_train=8, n_eval=4)
    previous = new_run_dir(cfg.runs_dir, "previous")
    mark_latest(previous)

    monkeypatch.setenv("PERSONA_DATA_KEY", encode_key(bytes(32)))
    with pytest.raises(CryptoError):
        train(cfg)
    monkeypatch.setenv("PERSONA_DATA_KEY", encode_key(bytes(range(32))))

    from persona_pipeline.core.crypto import load_key

    blank = [{"prompt": "You are Tilda.\n\nHuman: hi\n\nTilda:", "completion": "", "meta": {}}]
    write_records(cfg.resolve(cfg.data.train), blank, load_key(cfg.resolve(cfg.data.key_file)))
    with pytest.raises(DataError, match="no usable samples"):
        train(cfg)
    assert (cfg.runs_dir / "latest").resolve() == previous.resolve()
    assert sorted(p.name for p in cfg.runs_dir.iterdir()) == ["latest", "previous"]


def test_resume_a_run_without_checkpoints(make_cfg, write_dataset):
    cfg = make_cfg()
    write_dataset(cfg, n_train=8, n_eval=4)
    empty = new_run_dir(cfg.runs_dir, "empty")
    with pytest.raises(PipelineError, match="no complete checkpoint"):
        train(cfg, resume="empty")
    with pytest.raises(PipelineError, match="run not found"):
        train(cfg, resume="nope")
    assert not (cfg.runs_dir / "latest").exists() and empty.is_dir()


def test_qlora_without_cuda_is_a_clear_error(make_cfg, write_dataset):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = make_cfg("train_tiny.yaml", "quantization.load_in_4bit=true")
    write_dataset(cfg, n_train=8, n_eval=4)
    with pytest.raises(PipelineError, match="needs a CUDA GPU"):
        train(cfg)
    assert _no_run_created(cfg)


def test_cli_exit_code_and_message(make_cfg, write_dataset, tmp_path, capsys):
    from persona_pipeline.cli import main

    cfg = make_cfg()
    write_dataset(cfg, n_train=8, n_eval=4)
    rc = main(["train", "--config", str(cfg.source_file), f"paths.outputs={tmp_path / 'outputs'}",
               f"model.name_or_path={tmp_path / 'missing'}", f"data.train={cfg.data.train}",
               f"data.eval={cfg.data.eval}", "--resume", "latest"])
    err = capsys.readouterr().err
    assert rc != 0 and "error: run not found: latest" in err and "hint:" in err
