"""Causal-LM loss with logits only where the loss needs them, computed in chunks.

The usual path projects every position of every row onto the vocabulary and keeps
those ``batch x seq x vocab`` logits (plus their softmax) alive until backward: for
SmolLM2 (vocab 49,152) a batch of 8 x 300 tokens holds ~0.5 GB of logits, twice over,
although about half of the positions are prompt or padding and carry no label.

Here the model is asked for the label positions only (transformers' ``logits_to_keep``
with a boolean mask, which gathers the final hidden states before the LM head), a
pre-hook on the LM head takes those hidden states and hands the head an empty input,
and the cross-entropy is computed ``chunk_size`` rows at a time by
:class:`_LinearCrossEntropy`, which works out the gradient of each chunk in its forward
pass (softmax minus one-hot, times the head weight) and keeps only that: memory holds
one chunk's logits instead of growing with vocab x sequence, and no logits are
recomputed. The loss is the same sum over label tokens that transformers' causal-LM
loss takes (same normalisation: ``num_items_in_batch`` when the Trainer passes it,
else the mean), so losses and gradients match the full-logits path to float rounding
(tests/test_train_loss.py). Because the forward goes through the (DDP / peft) model
as usual, it works under the Trainer, with LoRA and under torchrun.

Heads that are not a plain ``nn.Linear`` without bias (e.g. LoRA on ``lm_head``) and
models that transform logits after the head (Gemma-2 soft-capping) cannot use the fused
chunk; :func:`supports_label_loss` says so and the Trainer keeps the model's own loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from persona_pipeline.training.tokenized import IGNORE_INDEX


def output_head(model: nn.Module) -> nn.Module:
    """The LM head of a causal LM, through DDP / peft wrappers."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, nn.Module):  # DDP, accelerate wrappers
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings (LM head)")
    return head


def supports_label_loss(model: nn.Module) -> bool:
    """Whether :func:`label_position_loss` computes this model's loss exactly."""
    head = output_head(model)
    cfg = getattr(model, "config", None)
    softcap = getattr(cfg, "final_logit_softcapping", None) if cfg is not None else None
    return type(head) is nn.Linear and head.bias is None and softcap is None


def label_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose *next* token is a label (those are the positions the loss reads logits at)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), evaluated ``chunk`` rows at a time.

    The gradients are computed in the forward pass chunk by chunk and scaled by the
    incoming gradient in backward: no chunk's logits outlive its loop iteration.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        acc = torch.promote_types(hidden.dtype, torch.float32)  # bf16/fp16 logits upcast like transformers'
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s : s + chunk], targets[s : s + chunk]
            logits = (h @ weight.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                # d(sum CE)/d logits = softmax - one_hot, built in place of the logits.
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                probs = probs.to(hidden.dtype)
                if need_h:
                    grad_h[s : s + chunk] = probs @ weight
                if need_w:
                    grad_w += (probs.t() @ h).to(acc)
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk_size: int = 1024) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, ``chunk_size`` rows at a time."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size)


def label_position_loss(model: nn.Module, inputs: dict[str, Any], *, chunk_size: int = 1024,
                        num_items_in_batch: torch.Tensor | int | None = None) -> tuple[torch.Tensor, Any]:
    """The causal-LM loss of ``inputs`` (with ``labels``) from logits at label positions only.

    Normalised like transformers' loss: the sum over label tokens divided by
    ``num_items_in_batch`` when given (the Trainer's count over gradient accumulation), else
    the mean over this batch's label tokens. Returns ``(loss, model outputs)``; the outputs
    carry no logits.
    """
    labels = inputs["labels"]
    mask = label_mask(labels)
    targets = labels[:, 1:][mask[:, :-1]]
    head = output_head(model)
    captured: list[torch.Tensor] = []

    def take_hidden(module, args):
        captured.append(args[0])  # (label tokens, hidden): gathered by logits_to_keep
        return (args[0][:0],)  # the head itself computes nothing

    handle = head.register_forward_pre_hook(take_hidden)
    try:
        forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**forward_inputs, logits_to_keep=mask)
    finally:
        handle.remove()
    (hidden,) = captured
    hidden = hidden.reshape(-1, hidden.shape[-1])
    total = linear_cross_entropy_sum(hidden, head.weight, targets, chunk_size)
    if num_items_in_batch is not None:
        denom = num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
    else:
        denom = targets.numel()
    return total / denom, outputs
