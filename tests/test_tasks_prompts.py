"""Prompt formatting through a real (locally built) tokenizer's chat template."""

import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from rlvr_jax.tasks.prompts import BOXED_INSTRUCTION, PromptFormat, format_prompt

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _tokenizer(chat_template: str | None):
    vocab = {"[UNK]": 0, "what": 1, "is": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_chat_template_with_system_prompt_and_instruction():
    prompt_format = PromptFormat(instruction="Box it.", system_prompt="You are careful.")
    prompt = format_prompt("What is 2+2?  \n", prompt_format, _tokenizer(TEMPLATE))
    expected = (
        "<|system|>\nYou are careful.<|end|>\n"
        "<|user|>\nWhat is 2+2?\n\nBox it.<|end|>\n"
        "<|assistant|>\n"
    )
    assert prompt == expected


def test_chat_template_without_system_prompt_uses_default_instruction():
    prompt = format_prompt("Q?", PromptFormat(), _tokenizer(TEMPLATE))
    assert prompt == f"<|user|>\nQ?\n\n{BOXED_INSTRUCTION}<|end|>\n<|assistant|>\n"


def test_plain_text_without_tokenizer():
    prompt_format = PromptFormat(instruction="Box it.", system_prompt="Sys.")
    assert format_prompt("Q?", prompt_format) == "Sys.\n\nQ?\n\nBox it.\n"
    assert format_prompt("Q?", PromptFormat(instruction="")) == "Q?\n"


def test_tokenizer_without_chat_template_is_an_error():
    with pytest.raises(ValueError, match="has no chat_template"):
        format_prompt("Q?", PromptFormat(), _tokenizer(None))
