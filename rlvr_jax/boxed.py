"""The content of the last balanced ``\\boxed{...}`` of a text: how LaTeX solutions state
their final answer.

Shared by the data builders (the MATH reference answer is the last box of its worked solution)
and the answer extraction of the verifiers, which therefore need not import each other.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")


def _closing_braces(text: str, start: int) -> dict[int, int]:
    """Map each ``{`` at or after ``start`` to the index of its matching ``}`` (one pass)."""
    open_stack: list[int] = []
    closing: dict[int, int] = {}
    for brace in _BRACE.finditer(text, start):
        if brace.group() == "{":
            open_stack.append(brace.start())
        elif open_stack:
            closing[open_stack.pop()] = brace.start()
    return closing


def extract_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, or None.

    Matched with balanced braces, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. A
    truncated (unbalanced) last box falls back to the last balanced one. One pass over the
    braces after the first box, so the cost is linear even for adversarial nesting.
    """
    starts = [match.end() - 1 for match in _BOXED.finditer(text)]
    if not starts:
        return None
    closing = _closing_braces(text, starts[0])
    for open_index in reversed(starts):
        if open_index in closing:
            return text[open_index + 1 : closing[open_index]].strip()
    return None
