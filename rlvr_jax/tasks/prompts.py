"""Prompt formatting, in one place: chat template, system prompt and answer-format instruction.

A prompt is the user message ``question + "\\n\\n" + instruction`` (the instruction says how to
state the final answer, so the verifier can find it), preceded by an optional system message,
rendered by the tokenizer's own chat template with the generation prompt appended. Base models
without a chat template use ``tokenizer=None``: the plain text
``[system + "\\n\\n"] + user message + "\\n"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Complete the Python function above. Reply with the complete function, including its "
    "signature, in one ```python code block."
)


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


def format_prompt(question: str, prompt_format: PromptFormat, tokenizer: Any = None) -> str:
    """The prompt string for ``question`` (see the module docstring).

    Args:
      question: the task's question text.
      prompt_format: instruction and system prompt.
      tokenizer: a ``transformers`` tokenizer with a ``chat_template``, or None for plain text.

    Raises:
      ValueError: the tokenizer has no chat template (pass ``tokenizer=None`` for plain text).
    """
    user = question.rstrip()
    if prompt_format.instruction:
        user = f"{user}\n\n{prompt_format.instruction}"
    if tokenizer is None:
        system = f"{prompt_format.system_prompt}\n\n" if prompt_format.system_prompt else ""
        return f"{system}{user}\n"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat_template; pass tokenizer=None "
            "for a plain-text prompt or set tokenizer.chat_template"
        )
    messages = []
    if prompt_format.system_prompt:
        messages.append({"role": "system", "content": prompt_format.system_prompt})
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
