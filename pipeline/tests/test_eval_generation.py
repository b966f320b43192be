"""Batched generation: left padding gives the same greedy answers as one prompt at a time; stop reasons."""

from __future__ import annotations

import torch

from conftest import persona_records
from persona_pipeline.evaluation.generation import GenerationSettings, _finish, generate


def _load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def test_stop_reasons(tiny_model_dir):
    _, tok = _load(tiny_model_dir)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ids = tok("Children learn by doing.", add_special_tokens=False)["input_ids"]
    g = _finish(torch.tensor(ids + [eos, pad, pad]), tok, {eos}, 64)
    assert (g.text, g.stop, g.new_tokens, g.runaway) == ("Children learn by doing.", "eos", len(ids), False)

    turn = tok(" Children learn.\n\nHuman: and then?", add_special_tokens=False)["input_ids"]
    g = _finish(torch.tensor(turn + [pad]), tok, {eos}, 64)
    assert (g.text, g.stop) == ("Children learn.", "stop_string")

    g = _finish(torch.tensor(ids), tok, {eos}, len(ids))
    assert g.stop == "max_tokens" and g.runaway


def test_batched_greedy_equals_one_at_a_time(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    prompts = [r["prompt"] for r in persona_records(6, 3)]
    prompts[0] = prompts[0].replace("Tell me", "Please, if you have a moment, tell me")  # unequal lengths: real padding
    s = GenerationSettings(max_new_tokens=12)
    one = generate(model, tok, prompts, s, batch_size=1, progress=False)
    batched = generate(model, tok, prompts, s, batch_size=4, progress=False)
    assert [g.text for g in one] == [g.text for g in batched]
    assert all(g.new_tokens <= 12 for g in batched)
    assert tok.padding_side == "right" or tok.padding_side == _load(tiny_model_dir)[1].padding_side  # restored


def test_sampling_is_seeded(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    prompts = [r["prompt"] for r in persona_records(2, 4)]
    s = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=0.95, seed=5)
    a = generate(model, tok, prompts, s, batch_size=2, progress=False)
    b = generate(model, tok, prompts, s, batch_size=2, progress=False)
    assert [g.text for g in a] == [g.text for g in b]


def test_plan_batches_groups_similar_lengths():
    from persona_pipeline.evaluation.generation import plan_batches

    lengths = [50, 44, 253, 47, 169, 55, 115, 48, 253, 60]
    batches = plan_batches(lengths, 4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 4 for b in batches)
    # Shortest first, and the long multi-turn prompts are not batched with the short ones.
    assert [lengths[i] for i in batches[0]] == [44, 47, 48, 50]
    assert all(max(lengths[i] for i in b) <= 1.5 * sum(lengths[i] for i in b) / len(b) for b in batches)
    assert plan_batches(lengths, 1) == [[i] for i in sorted(range(10), key=lambda i: (lengths[i], i))]
