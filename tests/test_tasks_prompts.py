"""Prompt formatting through real chat templates (a locally built one and SmolLM2's), and the
token selections of the question and the user message."""

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from rlvr_jax.tasks.prompts import (
    BOXED_INSTRUCTION,
    PromptFormat,
    encode_prompt,
    format_prompt,
    render_prompt,
)

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


# ------------------------------------------------------------------------------------------
# Where the question and the user message lie: spans and token selections
# ------------------------------------------------------------------------------------------


def test_spans_locate_question_and_user_message_in_a_chat_template():
    prompt_format = PromptFormat(instruction="Box it.", system_prompt="What is 2+2?")
    rendered = render_prompt("  What is 2+2?  \n", prompt_format, _tokenizer(TEMPLATE))
    (q_start, q_end), (u_start, u_end) = rendered.spans["question"], rendered.spans["user_message"]
    assert rendered.text[q_start:q_end] == "What is 2+2?"
    assert rendered.text[u_start:u_end] == "What is 2+2?\n\nBox it."
    # the user turn's copy, not the system prompt's; leading spaces stay outside the span
    assert rendered.text[:q_start] == "<|system|>\nWhat is 2+2?<|end|>\n<|user|>\n  "
    plain = render_prompt("Q?", prompt_format)
    assert plain.text[slice(*plain.spans["user_message"])] == "Q?\n\nBox it."


def test_a_template_that_rewrites_the_message_is_an_error():
    shouting = TEMPLATE.replace("m['content']", "m['content'] | upper")
    with pytest.raises(ValueError, match="changed the user message"):
        render_prompt("what is 2+2?", PromptFormat(), _tokenizer(shouting))


@pytest.fixture(scope="module")
def smollm2():
    from rlvr_jax import models

    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.mark.parametrize("system_prompt", [None, "Answer with a number."])
def test_smollm2_selected_tokens_decode_to_the_question_and_the_user_message(smollm2,
                                                                             system_prompt):
    question = "What is 17 * 23? Give the product."
    rendered = render_prompt(question, PromptFormat(system_prompt=system_prompt), smollm2)
    encoded = encode_prompt(rendered, smollm2)
    ids = np.asarray(encoded.ids)
    assert encoded.ids == smollm2(rendered.text, add_special_tokens=False)["input_ids"]
    assert smollm2.decode(ids) == rendered.text  # the full templated prompt
    question_tokens = encoded.selections["question"]
    user_tokens = encoded.selections["user_message"]
    assert smollm2.decode(ids[question_tokens]) == question
    assert smollm2.decode(ids[user_tokens]) == f"{question}\n\n{BOXED_INSTRUCTION}"
    first, last = np.nonzero(question_tokens)[0][[0, -1]]
    assert question_tokens[first:last + 1].all()  # one contiguous run
    assert smollm2.decode(ids[:first]).endswith("<|im_start|>user\n")
    assert smollm2.decode(ids[:first]).startswith("<|im_start|>system\n")  # template's default
    assert smollm2.decode(ids[last + 1:]).startswith(f"\n\n{BOXED_INSTRUCTION}<|im_end|>")


def test_a_tokenizer_without_offsets_gives_no_selections(tmp_path):
    import sentencepiece

    from rlvr_jax import models

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["What is 3 + 4? Please reason step by step."] * 50))
    prefix = str(tmp_path / "spm")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=prefix, vocab_size=300, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, minloglevel=2)
    tokenizer = models.load_tokenizer(prefix + ".model")  # SentencePiece-backed: no offsets
    tokenizer.chat_template = TEMPLATE
    rendered = render_prompt("What is 3 + 4?", PromptFormat(), tokenizer)
    encoded = encode_prompt(rendered, tokenizer)
    assert encoded.selections == {}
    assert encoded.ids == tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
