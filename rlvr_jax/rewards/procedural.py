"""Binary rewards for reasoning-gym tasks, scored in the timeout process pool.

reasoning-gym scorers return partial credit (countdown gives 0.05 for a wrong expression
that uses the right numbers; the default scorer gives ``len(gold) / len(answer)`` when the
gold answer is a substring). Partial credit is not a correct answer, so the reward is
``1.0 if score >= 1.0 else 0.0``. Some scorers evaluate the answer with SymPy's
``parse_expr`` (which calls ``eval``), so scoring runs in pool workers, never in the trainer,
and answers to the tasks below must first have the shape of an answer: countdown answers may
hold only digits, spaces, ``+-*/`` and parentheses (no code reaches ``eval``); the numeric
tasks need a single number (gsm_symbolic's scorer would otherwise accept the first number of
``"288 or 300"``). Other reasoning-gym tasks are scored by their own scorer unguarded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from rlvr_jax.rewards.extraction import extract_answer
from rlvr_jax.rewards.pooled import PooledScorer
from rlvr_jax.rewards.report import ScoreReport

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


def binary_procedural_score(answer: str, entry: dict[str, Any]) -> float:
    """1.0 if reasoning-gym gives ``answer`` full credit on ``entry``, else 0.0 (in a worker)."""
    task_name = entry["metadata"]["source_dataset"]
    shape = ANSWER_SHAPES.get(task_name)
    if shape is not None and not shape.fullmatch(answer.strip()):
        return 0.0
    score = _scorer(task_name)(answer, entry)
    return 1.0 if score >= 1.0 else 0.0


class ProceduralVerifier:
    """Batched binary scoring of reasoning-gym examples with a hard per-item timeout."""

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        extract: Callable[[str], str | None] = extract_answer,
    ):
        self._extract = extract
        self._scorer = PooledScorer(
            binary_procedural_score,
            num_workers=num_workers,
            timeout_s=timeout_s,
            preload=("reasoning_gym", "rlvr_jax.rewards.procedural"),
        )

    def score(self, completions: Sequence[str], entries: Sequence[dict]) -> ScoreReport:
        """Rewards ``[N]`` float32 in {0, 1} for completions against reasoning-gym entries."""
        if len(completions) != len(entries):
            raise ValueError(f"{len(completions)} completions but {len(entries)} entries")
        answers = [self._extract(completion) for completion in completions]
        return self._scorer.score(answers, list(entries))

    def close(self) -> None:
        """Stop the worker processes (they restart on the next ``score``)."""
        self._scorer.close()
