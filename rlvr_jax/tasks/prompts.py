"""Prompt formatting, in one place: chat template, system prompt and answer-format instruction.

A prompt is the user message ``question + "\\n\\n" + instruction`` (the instruction says how to
state the final answer, so the verifier can find it), preceded by an optional system message,
rendered by the tokenizer's own chat template with the generation prompt appended. Base models
without a chat template use ``tokenizer=None``: the plain text
``[system + "\\n\\n"] + user message + "\\n"``.

:func:`render_prompt` also says where the question and the user message lie in the prompt
text, :func:`encode_prompt` turns those character spans into token masks and
:func:`prompt_token_mask` lays them out for a left-padded batch, so a statistic over prompt
tokens (ProGRPO's prompt confidence) can count only the tokens that differ from prompt to
prompt (:data:`PROMPT_TOKENS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Complete the Python function above. Reply with the complete function, including its "
    "signature, in one ```python code block."
)


PROMPT_TOKENS: tuple[str, ...] = ("question", "user_message", "templated_prompt")
"""Which prompt tokens a prompt statistic counts (config key ``advantage.prompt_tokens``):

* ``"question"``: the task's question only (stripped of surrounding whitespace);
* ``"user_message"``: the user turn's content, the question and the answer-format instruction,
  without the chat template's role markers;
* ``"templated_prompt"``: every token of the chat-formatted prompt (system prompt, role headers,
  instruction and the assistant header included).

A token that straddles the edge of the question or the user message counts, so the selected
tokens cover every character of it.
"""


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How a task's question becomes a prompt.

    Attributes:
      instruction: appended to the question; states the answer format the verifier expects.
      system_prompt: the system message, or None for none.
    """

    instruction: str = BOXED_INSTRUCTION
    system_prompt: str | None = None


def task_prompt_format(
    instruction: str | None, system_prompt: str | None, default_instruction: str
) -> PromptFormat:
    """A task's prompt format from its options: ``instruction`` (None: the task's
    ``default_instruction``; ``""``: none) and ``system_prompt``."""
    instruction = default_instruction if instruction is None else instruction
    return PromptFormat(instruction=instruction, system_prompt=system_prompt)


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    """A prompt's text and where its parts lie in it.

    Attributes:
      text: the prompt string.
      spans: character spans ``[start, end)`` of ``"question"`` and ``"user_message"`` in
        ``text`` (see :data:`PROMPT_TOKENS`).
    """

    text: str
    spans: dict[str, tuple[int, int]]


def render_prompt(
    question: str, prompt_format: PromptFormat, tokenizer: Any = None
) -> RenderedPrompt:
    """The prompt for ``question`` (see the module docstring) and the spans of its parts.

    The user message is found as the last occurrence of its text (whitespace-stripped, as some
    templates trim it) in the rendered prompt: after any system message, before the assistant
    header.

    Args:
      question: the task's question text.
      prompt_format: instruction and system prompt.
      tokenizer: a ``transformers`` tokenizer with a ``chat_template``, or None for plain text.

    Raises:
      ValueError: the tokenizer has no chat template (pass ``tokenizer=None`` for plain text),
        or its template changed the user message so that it cannot be found in the prompt.
    """
    user = question.rstrip()
    if prompt_format.instruction:
        user = f"{user}\n\n{prompt_format.instruction}"
    if tokenizer is None:
        system = f"{prompt_format.system_prompt}\n\n" if prompt_format.system_prompt else ""
        text = f"{system}{user}\n"
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no chat_template; pass tokenizer=None "
                "for a plain-text prompt or set tokenizer.chat_template"
            )
        messages = []
        if prompt_format.system_prompt:
            messages.append({"role": "system", "content": prompt_format.system_prompt})
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    user_text = user.strip()  # starts with the stripped question
    start = text.rfind(user_text)
    if start < 0:
        raise ValueError(
            f"the chat template of {type(tokenizer).__name__} changed the user message, so it "
            f"cannot be found in the prompt: {user_text[:80]!r} is not in {text[-300:]!r}"
        )
    return RenderedPrompt(text, {
        "question": (start, start + len(question.strip())),
        "user_message": (start, start + len(user_text)),
    })


def format_prompt(question: str, prompt_format: PromptFormat, tokenizer: Any = None) -> str:
    """The prompt string for ``question``: :func:`render_prompt`'s text."""
    return render_prompt(question, prompt_format, tokenizer).text


@dataclasses.dataclass(frozen=True)
class EncodedPrompt:
    """A prompt's token ids and, per span name, which tokens lie on that span.

    Attributes:
      ids: the token ids (no special tokens added beyond the chat template's).
      selections: ``"question"`` and ``"user_message"`` -> bool ``[len(ids)]``; empty when the
        tokenizer gives no character offsets (``transformers``' fast tokenizers do;
        SentencePiece-backed ones do not).
    """

    ids: list[int]
    selections: dict[str, np.ndarray]


def encode_prompt(rendered: RenderedPrompt, tokenizer: Any) -> EncodedPrompt:
    """Tokenises ``rendered.text`` and marks the tokens that overlap each span."""
    encoding = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    if "offset_mapping" not in encoding:
        return EncodedPrompt(ids, {})
    offsets = np.asarray(encoding["offset_mapping"], np.int64).reshape(len(ids), 2)  # [P, 2]
    begin, end = offsets[:, 0], offsets[:, 1]
    return EncodedPrompt(ids, {
        name: (begin < stop) & (end > start) & (end > begin)
        for name, (start, stop) in rendered.spans.items()
    })


def prompt_token_mask(
    prompt_ids: list[list[int]], selections: list[dict[str, np.ndarray]], selection: str,
    length: int,
) -> np.ndarray:
    """bool ``[B, length]``: the tokens of ``B`` prompts (:attr:`EncodedPrompt.ids` and
    ``.selections``), left-padded to ``length``, that ``selection`` (one of
    :data:`PROMPT_TOKENS`, the config key ``advantage.prompt_tokens``) counts."""
    if selection not in PROMPT_TOKENS:
        raise ValueError(f"advantage.prompt_tokens={selection!r}; expected one of {PROMPT_TOKENS}")
    mask = np.zeros((len(prompt_ids), length), bool)
    for row, (ids, spans) in enumerate(zip(prompt_ids, selections, strict=True)):
        if selection == "templated_prompt":
            chosen = np.ones(len(ids), bool)
        elif selection in spans:
            chosen = spans[selection]
        else:
            raise ValueError(
                f"advantage.prompt_tokens={selection!r} needs the tokenizer's character offsets "
                "to find it in the chat-formatted prompt, and this tokenizer gives none "
                "(transformers' fast tokenizers do); use advantage.prompt_tokens="
                "'templated_prompt' or a tokenizer.json tokenizer"
            )
        mask[row, length - len(ids):] = chosen
    return mask
