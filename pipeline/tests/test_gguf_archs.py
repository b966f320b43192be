"""GGUF export of the other seed architectures: Qwen2, Gemma2 and Mistral's SentencePiece vocabulary.

Each tiny model is built here, random but with sharpened attention (a near-uniform model
hides rotary and norm mistakes), with a tokenizer trained on the project's text the way
its family's is built: Qwen2's split regex over byte-level BPE, SentencePiece BPE with
byte fallback for Gemma (no space prefix) and Mistral (space prefix). Each goes through
``make gguf`` and ``make gguf-check`` as a run's merged model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from persona_pipeline.core.config import load_config
from persona_pipeline.core.errors import PipelineError
from persona_pipeline.core.runs import RunDir
from persona_pipeline.export.gguf_vocab import _QWEN2_REGEX, BYTE
from persona_pipeline.export.llamacpp import runtime_library

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
needs_llamacpp = pytest.mark.skipif(runtime_library() is None, reason="llama.cpp runtime missing (make install)")
PROMPTS = [
    "You are Tilda, an actress.\n\nHuman: Why no exams?\n\nTilda:",
    "numbers 12345, 3.14159 and 2026-11-26",
    "Ünïcödé — dashes … ‘quotes’ \"double\" naïve café",
    "tabs\tand\nnewlines\n\n\nend",
    "emoji 🙂🍵 and Bangla চা বাগান",
    "don't I'm we'll they've WE'LL",
]


def _texts() -> list[str]:
    from persona_pipeline.stages.base_model import _project_text

    return _project_text(load_config(CONFIGS / "train_tiny.yaml"))


def _qwen2_tokenizer(texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=1024, min_frequency=2, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _sentencepiece_tokenizer(texts: list[str], folder: Path, family: str):
    """A SentencePiece BPE model with byte fallback, loaded by transformers as its family's tokenizer."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import GemmaTokenizer, LlamaTokenizer

    folder.mkdir(parents=True)
    (folder / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    if family == "gemma":  # Gemma's special pieces and ids, no "▁" before the text
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                   unk_piece="<unk>", add_dummy_prefix=False)
    else:
        ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=1024, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2, **ids)
    return (GemmaTokenizer if family == "gemma" else LlamaTokenizer).from_pretrained(folder)


def _tiny_model(arch: str, tok, out: Path, **changes) -> Path:
    import torch
    import transformers

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "qwen2":
        config = transformers.Qwen2Config(**common, tie_word_embeddings=False)
    elif arch == "gemma2":  # a 16-token window, so the prompts cross it; both soft caps on
        config = transformers.Gemma2Config(**common, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                                           attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    else:
        config = transformers.MistralConfig(**common, sliding_window=None)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    config.architectures = [type(model).__name__]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # Gemma stores w - 1: random values around 0 exercise the +1
                p.normal_(0.0 if arch == "gemma2" else 1.0, 0.2)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                p.mul_(20.0)  # decisive next-token choices: greedy output is then a sharp test
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _cfg(root: Path, model_dir: Path):
    return load_config(CONFIGS / "train_tiny.yaml", [
        f"paths.outputs={root / 'outputs'}", f"model.name_or_path={model_dir}",
        f"data.eval={root / 'missing' / 'eval.jsonl.enc'}", f"data.key_file={root / 'missing' / 'key'}",
        "gguf.check_prompts=3", "gguf.check_max_new_tokens=12", "gguf.threads=1",
    ])


@pytest.fixture(scope="module")
def arch_runs(tmp_path_factory) -> dict[str, tuple]:
    """{arch: (cfg, run dir, HF tokenizer)} with each tiny model as a run's merged model."""
    texts = _texts()
    root = tmp_path_factory.mktemp("archs")
    toks = {"qwen2": _qwen2_tokenizer(texts),
            "gemma2": _sentencepiece_tokenizer(texts, root / "spm-gemma", "gemma"),
            "mistral": _sentencepiece_tokenizer(texts, root / "spm-llama", "llama")}
    runs = {}
    for arch, tok in toks.items():
        run = root / arch / "outputs" / "runs" / "20260101-000000"
        merged = _tiny_model(arch, tok, run / "merged")
        runs[arch] = (_cfg(root / arch, merged), run, tok)
    return runs


def _meta(path: Path, key: str):
    from persona_pipeline.export.gguf_io import field_value, read_gguf

    return field_value(read_gguf(path), key)


@needs_llamacpp
@pytest.mark.parametrize("arch", ["qwen2", "gemma2", "mistral"])
def test_round_trip_through_gguf_and_gguf_check(arch_runs, arch):
    from persona_pipeline.stages.gguf import export_gguf
    from persona_pipeline.stages.gguf_check import check_gguf

    cfg, run, _ = arch_runs[arch]
    export_gguf(cfg, RunDir(run), "F16")
    info = json.loads(RunDir(run).gguf_export_info("F16").read_text())
    assert info["architecture"] == ("llama" if arch == "mistral" else arch)
    res = check_gguf(cfg, RunDir(run), "F16")
    assert res["mode"] == "llama.cpp" and res["status"] == "pass", res
    assert res["tokenization_equal"] == res["prompts"] == 3
    assert res["greedy_equal"] == 3 and res["max_logit_diff"] < 0.1, res  # no near-tie excuses needed


@needs_llamacpp
@pytest.mark.parametrize("arch", ["qwen2", "gemma2", "mistral"])
def test_llamacpp_matches_transformers_on_every_position(arch_runs, arch, tmp_path):
    """F32 file: tokenization of awkward text and the logits at every position of a prompt longer than
    Gemma2's 16-token window."""
    import torch
    from transformers import AutoModelForCausalLM

    from persona_pipeline.export.gguf_convert import convert
    from persona_pipeline.export.llamacpp import LlamaCppModel

    _, run, tok = arch_runs[arch]
    out = convert(run / "merged", tmp_path / "m.gguf", "F32", progress=False)
    model = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    ids = tok(PROMPTS[0] + " And what do the children do all day instead of tests?" * 2)["input_ids"]
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    with LlamaCppModel(tmp_path / "m.gguf", n_ctx=256, threads=1) as llm:
        assert not llm.warnings()
        for text in PROMPTS:
            assert llm.tokenize(text) == tok(text)["input_ids"], text
        diff = float(np.abs(llm.logits(ids, all_positions=True) - ref).max())
    assert len(ids) > 40 and diff < 1e-2 * max(1.0, float(np.abs(ref).max())), diff
    assert out["architecture"] == ("llama" if arch == "mistral" else arch)


def test_vocabulary_metadata(arch_runs, tmp_path):
    from persona_pipeline.export.gguf_convert import convert

    _, run, tok = arch_runs["qwen2"]
    info = convert(run / "merged", tmp_path / "q.gguf", "F16", progress=False)
    assert info["tokenizer"]["pre"] == "qwen2" and info["tokenizer"]["model"] == "gpt2"
    assert _meta(tmp_path / "q.gguf", "qwen2.context_length") == 512
    for family, space in (("gemma2", False), ("mistral", True)):
        _, run, tok = arch_runs[family]
        path = tmp_path / f"{family}.gguf"
        convert(run / "merged", path, "F16", progress=False)
        assert _meta(path, "tokenizer.ggml.model") == "llama"
        assert _meta(path, "tokenizer.ggml.add_space_prefix") is space
        from persona_pipeline.export.gguf_io import read_gguf

        types = read_gguf(path).get_field("tokenizer.ggml.token_type")
        byte_id = tok.convert_tokens_to_ids("<0x41>")
        assert int(types.parts[types.data[byte_id]][0]) == BYTE
    assert _meta(tmp_path / "gemma2.gguf", "gemma2.attn_logit_softcapping") == pytest.approx(50.0)
    assert _meta(tmp_path / "gemma2.gguf", "gemma2.final_logit_softcapping") == pytest.approx(30.0)
    assert _meta(tmp_path / "gemma2.gguf", "gemma2.attention.sliding_window") == 16


@needs_llamacpp
def test_trap_gemma_norm_offset(arch_runs, tmp_path, monkeypatch):
    """Gemma's RMSNorm weights written as stored (w - 1): the file loads and runs, and the model is wrong."""
    from persona_pipeline.export import gguf_arch
    from persona_pipeline.export.gguf_convert import convert
    from persona_pipeline.export.llamacpp import LlamaCppModel

    _, run, tok = arch_runs["gemma2"]
    ids = tok(PROMPTS[0])["input_ids"]
    top = {}
    for plus_one in (True, False):
        spec = dataclasses.replace(gguf_arch.ARCHS["Gemma2ForCausalLM"], norm_plus_one=plus_one)
        monkeypatch.setitem(gguf_arch.ARCHS, "Gemma2ForCausalLM", spec)
        convert(run / "merged", tmp_path / f"g-{plus_one}.gguf", "F32", progress=False)
        with LlamaCppModel(tmp_path / f"g-{plus_one}.gguf", n_ctx=128, threads=1) as llm:
            top[plus_one] = llm.logits(ids, all_positions=True).argmax(-1)
    assert (top[True] != top[False]).mean() > 0.3, top


def test_unsupported_gemma2_query_scale_is_refused(tmp_path):
    from persona_pipeline.export.gguf_convert import convert

    tok = _qwen2_tokenizer(_texts()[:50])
    model = _tiny_model("gemma2", tok, tmp_path / "g", query_pre_attn_scalar=32)
    with pytest.raises(PipelineError, match="query_pre_attn_scalar=32"):
        convert(model, tmp_path / "g.gguf", "F16", progress=False)
    assert not list(tmp_path.glob("*.gguf*"))
    shutil.rmtree(model)
