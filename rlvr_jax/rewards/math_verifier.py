"""Math answer equivalence through ``math-verify``, isolated in a timeout process pool.

Scoring one completion against a gold answer:

1. ``extract_answer`` (in the calling process; linear time) finds the final answer string.
   No answer, or one longer than ``MAX_ANSWER_CHARS``, scores 0 without touching a parser.
2. In a worker process, gold and answer are each parsed by ``math_verify.parse`` as the
   content of a ``\\boxed{}`` (LaTeX first, then plain expressions), and compared with
   ``math_verify.verify`` (numeric, symbolic, set, interval, percent and unit handling).
   Both are called with their own ``signal``-based timeouts disabled
   (``parsing_timeout=None, timeout_seconds=None``): the hard timeout is the pool's, which
   SIGKILLs the worker. A gold answer that does not parse is compared as a string.
3. A timeout or crash scores 0 and is counted in the returned ``MathScores``.

Rewards are binary: 1.0 when ``verify`` says equivalent, else 0.0.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from rlvr_jax.rewards.extraction import extract_answer
from rlvr_jax.rewards.pooled import PooledScorer
from rlvr_jax.rewards.report import ScoreReport


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


def math_equivalent(answer: str, gold: str) -> float:
    """1.0 if ``answer`` is mathematically equivalent to ``gold`` by math-verify, else 0.0.

    Runs in a pool worker; it has no timeout of its own.
    """
    from math_verify import verify

    # math-verify warns that its own timeout is off; here that is by design (the pool's).
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold_parsed = _parse_boxed(gold)
    if not gold_parsed:
        return float(_strip_math_delimiters(answer) == _strip_math_delimiters(gold))
    answer_parsed = _parse_boxed(answer)
    if not answer_parsed:
        return 0.0
    return float(verify(list(gold_parsed), list(answer_parsed), timeout_seconds=None))


class MathVerifier:
    """Batched, parallel math scoring with a hard per-item timeout.

    Args:
      num_workers: verifier processes.
      timeout_s: hard wall-clock limit per item; a timeout scores 0.
      memory_limit_bytes: address-space limit of each worker.
    """

    def __init__(
        self, num_workers: int = 2, timeout_s: float = 5.0, memory_limit_bytes: int = 4 << 30
    ):
        self._scorer = PooledScorer(
            math_equivalent,
            num_workers=num_workers,
            timeout_s=timeout_s,
            memory_limit_bytes=memory_limit_bytes,
            preload=("math_verify", "rlvr_jax.rewards.math_verifier"),
        )

    def score(self, completions: Sequence[str], golds: Sequence[str]) -> ScoreReport:
        """Score each completion against its gold answer: rewards ``[N]`` float32 in {0, 1}."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        answers = [extract_answer(completion) for completion in completions]
        return self._scorer.score(answers, [str(gold) for gold in golds])

    def close(self) -> None:
        """Stop the worker processes (they restart on the next ``score``)."""
        self._scorer.close()
