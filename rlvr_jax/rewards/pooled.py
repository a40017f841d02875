"""Scoring extracted answers in a lazily started timeout pool, shared by the verifiers.

A verifier extracts each completion's answer in the trainer process (cheap, linear-time) and
sends only ``(answer, reference)`` pairs to ``fn`` in worker processes. A completion without an
answer scores 0 with status ``"no_answer"`` and never reaches a worker; a timeout or crash
scores 0 with its status. The pool starts on the first call and restarts after ``close``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rlvr_jax.rewards.pool import OK, TimeoutPool
from rlvr_jax.rewards.report import NO_ANSWER, ScoreReport


class PooledScorer:
    """``fn(answer, reference) -> float`` over a batch, in a :class:`TimeoutPool`."""

    def __init__(self, fn: Callable[[str, Any], float], **pool_args: Any):
        self._fn = fn
        self._pool_args = pool_args
        self._pool: TimeoutPool | None = None

    def score(self, answers: Sequence[str | None], references: Sequence[Any]) -> ScoreReport:
        """Rewards ``[N]`` float32 and per-item statuses for ``answers[i]`` vs ``references[i]``."""
        to_score = [i for i, answer in enumerate(answers) if answer is not None]
        statuses = [NO_ANSWER] * len(answers)
        rewards = np.zeros(len(answers), np.float32)  # [N]
        if to_score:
            if self._pool is None:
                self._pool = TimeoutPool(**self._pool_args)
            outcomes = self._pool.map(self._fn, [(answers[i], references[i]) for i in to_score])
            for index, outcome in zip(to_score, outcomes, strict=True):
                statuses[index] = outcome.status
                if outcome.status == OK:
                    rewards[index] = outcome.value
        return ScoreReport(rewards, tuple(statuses))

    def close(self) -> None:
        """Stop the worker processes (they restart on the next ``score``)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
