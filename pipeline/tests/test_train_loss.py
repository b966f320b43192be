"""Label-position loss: same loss and gradients as the model's full-logits loss, bounded memory."""

from __future__ import annotations

import pytest
import torch

from persona_pipeline.training.collate import DynamicPaddingCollator, PackedCollator
from persona_pipeline.training.loss import label_position_loss, linear_cross_entropy_sum, supports_label_loss
from persona_pipeline.training.tokenized import IGNORE_INDEX


def _features(n: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    feats = []
    for _ in range(n):
        length = int(torch.randint(6, 40, (1,), generator=g))
        prompt = int(torch.randint(2, length - 2, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return feats


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter for the gradient check
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model


def _loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("collator", ["padded", "packed"])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_same_loss_and_gradients_as_the_full_logits_loss(lora_model, collator, chunk):
    vocab = lora_model.config.vocab_size
    coll = DynamicPaddingCollator(0) if collator == "padded" else PackedCollator()
    batch = coll(_features(6, vocab))
    assert supports_label_loss(lora_model)

    ref_loss, ref_grads = _loss_and_grads(lora_model, lambda: lora_model(**batch).loss)
    loss, grads = _loss_and_grads(lora_model, lambda: label_position_loss(lora_model, batch, chunk_size=chunk)[0])
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    for n, g in ref_grads.items():
        assert torch.allclose(grads[n], g, rtol=1e-4, atol=1e-7), (n, (grads[n] - g).abs().max().item())
    assert any(g.abs().max() > 0 for g in ref_grads.values())


def test_num_items_in_batch_normalises_like_transformers(lora_model):
    batch = DynamicPaddingCollator(0)(_features(4, lora_model.config.vocab_size, seed=1))
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        ref = lora_model(**batch, num_items_in_batch=torch.tensor(3 * n)).loss
        ours, outputs = label_position_loss(lora_model, batch, num_items_in_batch=torch.tensor(3 * n))
    assert abs(ours.item() - ref.item()) < 1e-6
    assert outputs.logits.numel() == 0  # the head computed no logits at all


def test_fused_cross_entropy_gradients_including_a_trainable_head():
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    assert torch.autograd.gradcheck(lambda a, b: linear_cross_entropy_sum(a, b, t, chunk_size=5), (h, w))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy_sum(h, w, t, chunk_size=0)


def test_memory_does_not_grow_with_tokens_times_vocab():
    """The autograd graph keeps (tokens x hidden) gradients, not (tokens x vocab) logits."""
    torch.manual_seed(0)
    n, hidden, vocab = 2048, 32, 8192
    h = torch.randn(n, hidden, requires_grad=True)
    w = torch.randn(vocab, hidden)
    t = torch.randint(0, vocab, (n,))
    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        linear_cross_entropy_sum(h, w, t, chunk_size=256).backward()
    assert max(saved) <= n * hidden  # the full-logits path saves n * vocab = 256x more
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        saved.clear()
        torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="sum").backward()
    assert max(saved) >= n * vocab  # the check above can fail


def test_trainer_losses_match_with_gradient_accumulation(tiny_model_dir, tmp_path):
    """PersonaTrainer with the label-position loss logs the same losses as with the model's loss."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from persona_pipeline.training.callbacks import PersonaTrainer
    from persona_pipeline.training.collate import TokenizedDataset

    feats = _features(16, 200, seed=3)
    logs = {}
    for chunk in (0, 16):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "v_proj"]))
        args = TrainingArguments(output_dir=str(tmp_path / str(chunk)), per_device_train_batch_size=4,
                                 per_device_eval_batch_size=4, gradient_accumulation_steps=2, max_steps=2,
                                 learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none",
                                 use_cpu=True, dataloader_pin_memory=False, remove_unused_columns=False,
                                 label_names=["labels"], seed=0)
        trainer = PersonaTrainer(model=model, args=args, train_dataset=TokenizedDataset(feats),
                                 eval_dataset=TokenizedDataset(feats[:8]), data_collator=DynamicPaddingCollator(0),
                                 train_lengths=[len(f["input_ids"]) for f in feats], loss_chunk_size=chunk)
        assert trainer.loss_chunk_size == chunk
        trainer.train()
        logs[chunk] = [h["loss"] for h in trainer.state.log_history if "loss" in h] + [trainer.evaluate()["eval_loss"]]
    assert len(logs[0]) == 3
    assert logs[16] == pytest.approx(logs[0], abs=1e-5)


def test_right_padding_needs_no_attention_mask(lora_model):
    from persona_pipeline.training.collate import without_redundant_mask

    batch = DynamicPaddingCollator(0)(_features(5, lora_model.config.vocab_size, seed=4))
    assert "attention_mask" not in without_redundant_mask(batch)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        masked = lora_model(**batch).logits
        unmasked = lora_model(**without_redundant_mask(batch)).logits
    assert torch.allclose(masked[real], unmasked[real], atol=1e-5)  # every real position: same logits
    left = dict(batch, attention_mask=batch["attention_mask"].flip(1))  # left padding: the mask matters
    assert without_redundant_mask(left) is left
