"""Batching: dynamic padding, packing isolation, equal per-token loss, deterministic length grouping."""

from __future__ import annotations

import pytest
import torch

from persona_pipeline.training.collate import (
    DynamicPaddingCollator,
    EpochLengthGroupedSampler,
    PackedCollator,
    PadToMaxCollator,
    real_tokens,
)
from persona_pipeline.training.tokenized import IGNORE_INDEX


def _sample(n, n_prompt, start=5):
    ids = list(range(start, start + n))
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}


def test_dynamic_padding_pads_to_the_longest_sample_only():
    feats = [_sample(5, 2), _sample(9, 3), _sample(7, 1)]
    b = DynamicPaddingCollator(pad_token_id=0)(feats)
    assert b["input_ids"].shape == (3, 9)
    assert b["attention_mask"].sum().item() == 21 == real_tokens(b)
    assert (b["labels"][0, 5:] == IGNORE_INDEX).all() and (b["input_ids"][0, 5:] == 0).all()
    assert DynamicPaddingCollator(0, pad_to_multiple_of=8)(feats)["input_ids"].shape == (3, 16)
    assert PadToMaxCollator(0, 64)(feats)["input_ids"].shape == (3, 64)


def test_packed_rows_restart_positions_and_mask_boundaries():
    b = PackedCollator()([_sample(4, 2), _sample(3, 1)])
    assert b["input_ids"].shape == (1, 7) and "attention_mask" not in b
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert b["labels"][0, 4].item() == IGNORE_INDEX  # never predict across a sample boundary
    assert real_tokens(b) == 7 and b["use_cache"] is False


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    lengths = [(i * 37) % 101 + 5 for i in range(64)]
    a, b = EpochLengthGroupedSampler(lengths, 8, seed=3), EpochLengthGroupedSampler(lengths, 8, seed=3)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(1)  # the global RNG must not matter (resume, several ranks)
    assert list(b) == first and sorted(first) == list(range(64))
    a.set_epoch(1)
    assert list(a) != first
    # Batches of similar length: far less padding than a random order.
    def waste(order):
        return sum(max(lengths[i] for i in order[k : k + 8]) * 8 for k in range(0, 64, 8))

    assert waste(first) < 0.8 * waste(list(torch.randperm(64, generator=torch.Generator().manual_seed(0))))


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_packed_samples_do_not_attend_to_each_other(tiny_lm):
    """Logits of each sample inside a packed row equal its logits when run alone."""
    g = torch.Generator().manual_seed(0)
    vocab = tiny_lm.config.vocab_size
    samples = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (9, 4, 13)]
    packed = PackedCollator()([{"input_ids": s, "labels": s} for s in samples])
    with torch.no_grad():
        logits = tiny_lm(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        start = 0
        for s in samples:
            alone = tiny_lm(input_ids=torch.tensor([s])).logits[0]
            assert torch.allclose(logits[start : start + len(s)], alone, atol=1e-4), "packed sample leaked"
            start += len(s)
        # Without restarted positions the second sample would see the first: the check is not vacuous.
        leaky = tiny_lm(input_ids=packed["input_ids"]).logits[0, 9:13]
        assert (leaky - tiny_lm(input_ids=torch.tensor([samples[1]])).logits[0]).abs().max() > 1e-3


def test_same_loss_per_token_for_every_batching(tiny_lm):
    g = torch.Generator().manual_seed(1)
    vocab = tiny_lm.config.vocab_size
    feats = []
    for n, p in ((12, 5), (7, 3), (20, 9), (5, 2)):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [IGNORE_INDEX] * p + ids[p:]})
    losses = []
    with torch.no_grad():
        for coll in (DynamicPaddingCollator(0), PadToMaxCollator(0, 64), PackedCollator()):
            losses.append(tiny_lm(**coll(feats)).loss.item())
    assert max(losses) - min(losses) < 1e-4, losses
