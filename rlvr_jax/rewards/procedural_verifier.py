"""Binary rewards for reasoning-gym tasks: one configuration of ``AnswerVerifier``.

reasoning-gym scorers return partial credit (countdown gives 0.05 for a wrong expression
that uses the right numbers; the default scorer gives ``len(gold) / len(answer)`` when the
gold answer is a substring). Partial credit is not a correct answer, so the reward is
``1.0 if score >= 1.0 else 0.0``. Some scorers evaluate the answer with SymPy's
``parse_expr`` (which calls ``eval``), so they run in pool workers, never in the trainer,
and answers to the tasks below must first have the shape of an answer: countdown answers may
hold only digits, spaces, ``+-*/`` and parentheses (no code reaches ``eval``); the numeric
tasks need a single number (gsm_symbolic's scorer would otherwise accept the first number of
``"288 or 300"``). Other reasoning-gym tasks are scored by their own scorer unguarded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from rlvr_jax.rewards.answer_verifier import AnswerVerifier
from rlvr_jax.rewards.extraction import extract_answer

_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
ANSWER_SHAPES: dict[str, re.Pattern] = {
    "countdown": re.compile(r"[\d\s+\-*/()]+"),
    "basic_arithmetic": _NUMBER,
    "chain_sum": _NUMBER,
    "gsm_symbolic": _NUMBER,
}


@functools.lru_cache(maxsize=64)
def _scorer(task_name: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task_name)


def procedural_equivalent(answer: str, entry: dict[str, Any]) -> float:
    """1.0 if reasoning-gym gives ``answer`` full credit on ``entry``, else 0.0 (in a worker)."""
    task_name = entry["metadata"]["source_dataset"]
    shape = ANSWER_SHAPES.get(task_name)
    if shape is not None and not shape.fullmatch(answer.strip()):
        return 0.0
    score = _scorer(task_name)(answer, entry)
    return 1.0 if score >= 1.0 else 0.0


def procedural_verifier(
    extract: Callable[[str], str | None] = extract_answer, **pool_options: Any
) -> AnswerVerifier:
    """reasoning-gym rewards: ``extract``, then :func:`procedural_equivalent` against the
    example's reasoning-gym entry in a timeout pool (``pool_options``: see ``AnswerVerifier``)."""
    return AnswerVerifier(
        procedural_equivalent, extract, preload=("reasoning_gym", __name__), **pool_options
    )
