"""model.prompt_format: stored plain prompts rendered through a tokenizer's chat template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from persona_pipeline.core.errors import ConfigError
from persona_pipeline.core.prompt_format import (
    chat_messages,
    format_prompt,
    render_completion,
    render_prompt,
)

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROMPT = format_prompt("Anis", "who runs an organic tea garden", "Why?", [("How is the harvest?", "Early this year.")])


def test_plain_is_the_stored_text(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert render_prompt(PROMPT, "plain", tok) == PROMPT
    assert render_completion(PROMPT, " An answer.", "plain", tok) == " An answer."
    # the tiny model's template writes "<Name>: answer": the space stays
    assert render_completion(PROMPT, " An answer.", "chat_template", tok) == " An answer."


def test_chat_messages_keep_every_turn():
    assert chat_messages(PROMPT) == [
        {"role": "system", "content": "You are Anis, who runs an organic tea garden."},
        {"role": "user", "content": "How is the harvest?"},
        {"role": "assistant", "content": "Early this year."},
        {"role": "user", "content": "Why?"},
    ]


def test_tiny_models_template_reproduces_the_plain_format(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert render_prompt(PROMPT, "chat_template", tok) == PROMPT


def test_chatml_rendering_and_no_double_bos(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = CHATML
    text = render_prompt(PROMPT, "chat_template", tok)
    assert text.startswith("<|im_start|>system\nYou are Anis, who runs an organic tea garden.<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n")
    assert render_completion(PROMPT, " An answer.", "chat_template", tok) == "An answer."
    # A template that writes BOS itself, with a tokenizer that adds BOS too (Llama 3): only one BOS.
    tok.chat_template = "{{ bos_token }}" + CHATML
    ids = tok(render_prompt(PROMPT, "chat_template", tok))["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_chat_template_needs_a_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        render_prompt(PROMPT, "chat_template", tok)
