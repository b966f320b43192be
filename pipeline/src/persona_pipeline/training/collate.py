"""Batching without wasted padding: dynamic padding, length-grouped sampling, packing.

* ``group_by_length`` (default): batches of samples of similar length
  (:class:`EpochLengthGroupedSampler`) padded only to their longest member.
* ``packed``: the samples of a batch are concatenated into one row with no padding;
  ``position_ids`` restart at 0 for every sample, no attention mask and no KV cache are
  used, so transformers builds a block-diagonal causal mask and samples never attend to
  each other (tests/test_train_collate.py compares logits packed vs alone).
* ``pad_to_max``: the reference approach, every sample padded to ``max_length``.

The loss is the mean over completion tokens in every variant, so the three give the
same loss per token on the same samples; only the wasted work differs. On the CPU
benchmark (``make bench-train``) packing lost to grouping: its explicit block-diagonal
mask keeps sdpa off the fast causal path, so ``group_by_length`` stays the default.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from persona_pipeline.training.tokenized import IGNORE_INDEX


class TokenizedDataset(Dataset):
    """Samples from :func:`persona_pipeline.training.tokenized.load_tokenized` as a torch Dataset."""

    def __init__(self, samples: Sequence[dict[str, list[int]]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, list[int]]:
        return self.samples[idx]


def _pad(features: Sequence[dict], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    n = len(features)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, f in enumerate(features):
        ids = f["input_ids"][:width]
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(ids)] = torch.tensor(f["labels"][:width])
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class DynamicPaddingCollator:
    """Right-pad to the longest sample of the batch (rounded up to ``pad_to_multiple_of``)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        return _pad(features, self.pad_token_id, width)


class PadToMaxCollator:
    """The reference: every sample padded to ``max_length`` whatever the batch holds."""

    def __init__(self, pad_token_id: int, max_length: int):
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        return _pad(features, self.pad_token_id, self.max_length)


class PackedCollator:
    """Concatenate the batch into one row; ``position_ids`` restart per sample (no cross-sample attention)."""

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for f in features:
            n = len(f["input_ids"])
            ids.extend(f["input_ids"])
            # The first label of a sample would be predicted from the previous sample's last token.
            labels.extend([IGNORE_INDEX] + list(f["labels"][1:]))
            pos.extend(range(n))
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            # transformers only derives the per-sample mask from position_ids when no KV cache exists;
            # with use_cache on (the default in eval mode) packed samples would attend to each other.
            "use_cache": False,
        }


def make_collator(batching: str, pad_token_id: int, max_length: int, pad_to_multiple_of: int | None = None):
    """The collator for ``train.batching``."""
    if batching == "group_by_length":
        return DynamicPaddingCollator(pad_token_id, pad_to_multiple_of)
    if batching == "packed":
        return PackedCollator()
    if batching == "pad_to_max":
        return PadToMaxCollator(pad_token_id, max_length)
    raise ValueError(f"unknown batching {batching!r}")


def without_redundant_mask(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without ``attention_mask`` when every row is right-padded (ones, then zeros).

    In a causal LM a real token never sees a later position, so right padding cannot reach
    it: the outputs at real positions are the same with or without the mask (tested), and
    without one sdpa takes its causal kernel instead of building and applying a padding mask
    (measured ~5-10 % of a tiny-model step). Pad positions carry no label, so the loss is unchanged.
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or not bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return batch
    return {k: v for k, v in batch.items() if k != "attention_mask"}


def real_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens in a collated batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())  # packed rows hold no padding


def padded_tokens(batch: dict[str, Any]) -> int:
    """Token positions the model computes on, padding included."""
    return int(batch["input_ids"].numel())


class EpochLengthGroupedSampler(Sampler[int]):
    """Length-grouped order that depends only on ``seed`` and the epoch.

    transformers' own LengthGroupedSampler draws from the global RNG, so a run resumed
    mid-training would see a different order than an uninterrupted one. Here the order
    of epoch ``e`` is a pure function of ``(seed, e)``: resumed runs and every rank of a
    multi-process run agree on it (the Trainer calls :meth:`set_epoch`).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))
