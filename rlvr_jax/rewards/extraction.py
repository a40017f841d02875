"""Final-answer extraction from a model completion.

The answer of a completion is, in order of precedence:

1. the content of the **last** ``\\boxed{...}`` (or ``\\fbox{...}``), matched with balanced
   braces so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}`` (``rlvr_jax.boxed``);
2. otherwise the text after the last ``#### `` marker (GSM8K style), up to the end of line;
3. otherwise the text after the last "The (final) answer is" (case-insensitive), up to the end
   of the sentence or line, with a trailing ``$`` / ``.`` stripped.

A completion with none of these has no answer (``None``) and is scored 0: a format-only
output never earns reward by accident. Every scan is linear in the completion length, so a
1 MB completion costs milliseconds; answers longer than ``max_chars`` are rejected as
``None`` (no real final answer is that long, and downstream parsers are super-linear).

:func:`extract_last_number` is the lenient alternative some tasks opt into
(``answer_format="last_number"``): the last integer or decimal anywhere in the completion, as
in the "flexible extract" of GSM8K evaluations. It lets very small models that do not follow a
format instruction earn reward, at the price of accepting a number said in passing.
"""

from __future__ import annotations

import re

from rlvr_jax.boxed import extract_boxed

MAX_ANSWER_CHARS = 1000

_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _clean_sentence(answer: str) -> str:
    """Cut a free-text answer at the end of its sentence and strip wrapping ``$`` and dots."""
    answer = answer.strip()
    sentence_end = re.search(r"\.(?:\s|$)", answer)
    if sentence_end is not None:
        answer = answer[: sentence_end.start()]
    return answer.strip().strip("$").strip().rstrip(".").strip()


def extract_answer(text: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """The final answer string of a completion (see the module docstring), or None."""
    answer = extract_boxed(text)
    if answer is None:
        hashes = list(_HASHES.finditer(text))
        if hashes:
            answer = hashes[-1].group(1).strip()
            if _THOUSANDS.fullmatch(answer):
                answer = answer.replace(",", "")
    if answer is None:
        stated = list(_ANSWER_IS.finditer(text))
        if stated:
            rest = text[stated[-1].end() :]
            answer = _clean_sentence(rest.split("\n", 1)[0])
    if not answer or len(answer) > max_chars:
        return None
    return answer


def extract_last_number(text: str) -> str | None:
    """The last number (``-?digits[.digits]``) in ``text``, or None if it holds no digit."""
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else None
