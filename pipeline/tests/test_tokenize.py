"""Tokenization: completion-only labels, EOS, left truncation of prompts, the encrypted cache."""

from __future__ import annotations

import json

import pytest

from persona_pipeline.core.crypto import encode_key
from persona_pipeline.core.errors import CryptoError, DataError
from persona_pipeline.core.records import write_records
from persona_pipeline.training.tokenized import IGNORE_INDEX, load_tokenized, tokenize, tokenize_records


@pytest.fixture
def tokenizer(make_cfg):
    from persona_pipeline.core.modeling import load_tokenizer

    return load_tokenizer(make_cfg())


def _rec(prompt, completion):
    return {"prompt": prompt, "completion": completion, "meta": {}}


def test_labels_cover_only_the_completion_and_eos(tokenizer):
    prompt = "You are Tilda, an actress.\n\nHuman: Why no exams?\n\nTilda:"
    completion = " Because children learn by doing."
    (s,), stats = tokenize_records([_rec(prompt, completion)], tokenizer, 512)
    p_ids = tokenizer(prompt)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert s["input_ids"] == p_ids + c_ids + [tokenizer.eos_token_id]
    assert s["input_ids"][0] == tokenizer.bos_token_id
    assert s["labels"][: len(p_ids)] == [IGNORE_INDEX] * len(p_ids)
    assert s["labels"][len(p_ids) :] == c_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(s["input_ids"][len(p_ids) : -1]) == completion
    assert stats["prompt_truncated"] == 0 and stats["samples"] == 1


def test_long_prompt_is_cut_from_the_left_keeping_bos_and_completion(tokenizer):
    prompt = "You are Anis. " + "Earlier we talked about tea and soil. " * 30 + "\n\nHuman: And compost?\n\nAnis:"
    completion = " Compost feeds the soil."
    samples, stats = tokenize_records([_rec(prompt, completion), _rec("Hi", " Hello.")], tokenizer, 48)
    long, short = samples
    assert len(long["input_ids"]) == 48
    assert long["input_ids"][0] == tokenizer.bos_token_id
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert long["input_ids"][-len(c_ids) :] == c_ids
    assert [t for t in long["labels"] if t != IGNORE_INDEX] == c_ids
    # The end of the prompt (the question being answered) survives.
    assert tokenizer.decode(long["input_ids"][1 : -len(c_ids)]).endswith("And compost?\n\nAnis:")
    assert stats["prompt_truncated"] == 1 and stats["completion_truncated"] == 0
    assert len(short["input_ids"]) < 48


def test_empty_completions_are_dropped_and_an_empty_result_is_an_error(make_cfg, data_key):
    from persona_pipeline.core.crypto import load_key

    cfg = make_cfg()
    key = load_key(cfg.resolve(cfg.data.key_file))
    write_records(cfg.resolve(cfg.data.train), [_rec("You are Tilda.\n\nHuman: hi\n\nTilda:", "")] * 3, key)
    with pytest.raises(DataError, match="no usable samples.*3 with an empty completion"):
        load_tokenized(cfg, "train")


def test_cache_is_reused_encrypted_and_invalidated(make_cfg, write_dataset):
    cfg = make_cfg()
    train, _ = write_dataset(cfg, n_train=20, n_eval=6)
    first = tokenize(cfg)
    assert not first["train"]["from_cache"] and first["train"]["samples"] == 20
    second = tokenize(cfg)
    assert second["train"]["from_cache"] and second["eval"]["from_cache"]
    assert second["train"]["cache"] == first["train"]["cache"]

    # At rest: no JSON, no text and no token-id list is readable without the key.
    blob = open(first["train"]["cache"], "rb").read()
    assert blob.startswith(b"PPENC")
    ts = load_tokenized(cfg, "train")
    ids_text = json.dumps(ts.samples[0]["input_ids"])[1:40].encode()
    assert ids_text not in blob and b"input_ids" not in blob and train[0]["prompt"][:20].encode() not in blob

    # A different max_length (or data, or tokenizer) is a different cache entry.
    cfg2 = make_cfg("train_tiny.yaml", "data.max_length=40")
    assert not tokenize(cfg2)["train"]["from_cache"]
    assert tokenize(cfg, force=True)["train"]["from_cache"] is False


def test_wrong_key_is_a_clear_error(make_cfg, write_dataset, monkeypatch):
    cfg = make_cfg()
    write_dataset(cfg, n_train=6, n_eval=3)
    monkeypatch.setenv("PERSONA_DATA_KEY", encode_key(bytes(32)))
    with pytest.raises(CryptoError, match="authentication failed"):
        load_tokenized(cfg, "train")
