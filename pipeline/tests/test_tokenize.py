"""Tokenization: completion-only labels, EOS, left truncation of prompts, the encrypted cache."""

from __future__ import annotations

import json
import zlib

import pytest

from persona_pipeline.core.crypto import HEADER_SIZE, decrypt_bytes, encode_key, load_key
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

    # At rest: the samples are in the file, but only the key opens it (compression alone would not hide them).
    blob = open(first["train"]["cache"], "rb").read()
    ts = load_tokenized(cfg, "train")
    key = load_key(cfg.resolve(cfg.data.key_file))
    assert json.loads(zlib.decompress(decrypt_bytes(blob, key)))["samples"] == ts.samples
    for start in (0, HEADER_SIZE):  # neither the file nor its body after the header is a bare zlib stream
        with pytest.raises(zlib.error):
            zlib.decompress(blob[start:])

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


@pytest.fixture(scope="module")
def sentencepiece_tokenizer():
    """A SentencePiece BPE tokenizer laid out like Llama 2 / Mistral's tokenizer.json (the normalizer
    prepends "▁" and turns spaces into "▁"; no pre-tokenizer), trained here on persona text: no download."""
    from tokenizers import SentencePieceBPETokenizer, normalizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from conftest import persona_records

    texts = [r["prompt"] + r["completion"] for r in persona_records(300, 5)]
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(texts, vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tk = sp._tokenizer  # the tokenizers.Tokenizer inside the trainer's wrapper
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = None
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_boundary_has_no_extra_space_token(sentencepiece_tokenizer):
    """Tokenized apart, ' answer' becomes '▁' + '▁answer'; the sample must equal the text tokenized whole."""
    tok = sentencepiece_tokenizer
    prompt = "You are Tilda, an actress.\n\nHuman: Why does the forest matter to you?\n\nTilda:"
    completion = " Children learn best when they make things with their hands."
    (s,), _ = tokenize_records([_rec(prompt, completion)], tok, 512)
    whole = tok(prompt + completion)["input_ids"]
    assert s["input_ids"] == whole + [tok.eos_token_id]
    n_prompt = s["labels"].count(IGNORE_INDEX)
    last_prompt, first_answer = tok.convert_ids_to_tokens(s["input_ids"][n_prompt - 1 : n_prompt + 1])
    assert last_prompt.endswith("Tilda:") and first_answer == "▁Children"
    assert tok.decode(s["input_ids"][:n_prompt], skip_special_tokens=True) == prompt


def test_long_dialogue_keeps_the_system_line_and_drops_the_oldest_turns(tokenizer):
    from persona_pipeline.core.prompt_format import format_prompt

    system = "an actress who co-founded Drumduan, a school in the Scottish Highlands without exams"
    history = [(f"Tell me about day {d} at the school.", f"On day {d} we planted trees and read poems aloud.") for d in
               ("one", "two", "three", "four")]
    prompt = format_prompt("Tilda", system, "And what came after?", history)
    completion = " Winter, and stories by the fire."
    c_len = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1
    full = len(tokenizer(prompt)["input_ids"])
    newest_two = format_prompt("Tilda", system, "And what came after?", history[2:])
    budget = len(tokenizer(newest_two)["input_ids"]) + c_len  # room for the system line and two turns, not three
    (s,), stats = tokenize_records([_rec(prompt, completion)], tokenizer, budget + 3)
    assert stats["prompt_truncated"] == 1 and len(s["input_ids"]) < full + c_len
    n_prompt = s["labels"].count(IGNORE_INDEX)
    assert s["input_ids"][0] == tokenizer.bos_token_id
    assert tokenizer.decode(s["input_ids"][1:n_prompt]) == newest_two
