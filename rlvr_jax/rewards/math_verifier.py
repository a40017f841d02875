"""Math answer equivalence through ``math-verify``: one configuration of ``AnswerVerifier``.

Verifying one completion against a gold answer:

1. ``extract_answer`` (in the calling process; linear time) finds the final answer string.
   No answer, or one longer than ``MAX_ANSWER_CHARS``, scores 0 without touching a parser.
2. In a worker process (:func:`math_equivalent`), gold and answer are each parsed by
   ``math_verify.parse`` as the content of a ``\\boxed{}`` (LaTeX first, then plain
   expressions), and compared with ``math_verify.verify`` (numeric, symbolic, set, interval,
   percent and unit handling). Both are called with their own ``signal``-based timeouts disabled
   (``parsing_timeout=None, timeout_seconds=None``): the hard timeout is the pool's, which
   stops the worker. A gold answer that does not parse is compared as a string.
3. A timeout or crash scores 0 and is counted in the returned ``Verification``.

Rewards are binary: 1.0 when ``verify`` says equivalent, else 0.0.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from rlvr_jax.rewards.answer_verifier import AnswerVerifier
from rlvr_jax.rewards.extraction import extract_answer


def _strip_math_delimiters(answer: str) -> str:
    answer = answer.strip()
    while len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
        answer = answer[1:-1].strip()
    return answer


@functools.lru_cache(maxsize=4096)
def _parse_boxed(answer: str) -> tuple:
    """``math_verify.parse`` of ``\\boxed{answer}`` (no signal timeout: the pool enforces it)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return tuple(
        parse(
            "\\boxed{" + _strip_math_delimiters(answer) + "}",
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=None,
        )
    )


def math_equivalent(answer: str, gold: Any) -> float:
    """1.0 if ``answer`` is mathematically equivalent to ``gold`` by math-verify, else 0.0.

    Runs in a pool worker; it has no timeout of its own. ``gold`` is read as a string.
    """
    from math_verify import verify

    gold = str(gold)
    # math-verify warns that its own timeout is off; here that is by design (the pool's).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold_parsed = _parse_boxed(gold)
    if not gold_parsed:
        return float(_strip_math_delimiters(answer) == _strip_math_delimiters(gold))
    answer_parsed = _parse_boxed(answer)
    if not answer_parsed:
        return 0.0
    return float(verify(list(gold_parsed), list(answer_parsed), timeout_seconds=None))


def math_verifier(**pool_options: Any) -> AnswerVerifier:
    """Math rewards: :func:`extract_answer`, then :func:`math_equivalent` against the gold
    answer in a timeout pool (``pool_options``: see ``AnswerVerifier``)."""
    return AnswerVerifier(
        math_equivalent, extract_answer, preload=("math_verify", __name__), **pool_options
    )
