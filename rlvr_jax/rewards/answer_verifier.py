"""The verifier of final answers: extraction here, answer equivalence in a timeout pool.

An :class:`AnswerVerifier` is two functions: ``extract(completion) -> answer or None`` (cheap,
linear time, run in the calling process) and ``equivalent(answer, reference) -> float`` (a
parser or a third-party scorer that may hang, crash or ``eval``, run in the worker processes
of a :class:`~rlvr_jax.rewards.pool.TimeoutPool`). Only ``(answer, reference)`` pairs reach a
worker; a completion without an answer scores 0 with ``Status.NO_ANSWER`` and never does. A
timeout or crash scores 0 with its status. Math and reasoning-gym rewards are two
configurations of it (``math_verifier``, ``procedural_verifier``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rlvr_jax.rewards.extraction import extract_answer
from rlvr_jax.rewards.pool import TimeoutPool
from rlvr_jax.rewards.verification import Status, Verification


class AnswerVerifier:
    """Binary rewards from ``equivalent(extract(completion), reference)`` (see the module).

    Args:
      equivalent: ``(answer, reference) -> 1.0 or 0.0``; a module-level function (it is
        pickled to the workers).
      extract: the answer of a completion, or None when it states none.
      **pool_options: ``num_workers``, ``timeout_s``, ``memory_limit_bytes``, ``preload`` of
        the :class:`TimeoutPool` (started on the first item that needs it).
    """

    def __init__(
        self,
        equivalent: Callable[[str, Any], float],
        extract: Callable[[str], str | None] = extract_answer,
        **pool_options: Any,
    ):
        self._equivalent = equivalent
        self._extract = extract
        self._pool = TimeoutPool(**pool_options)

    def extract(self, completion: str) -> str | None:
        """The final answer of ``completion``, or None."""
        return self._extract(completion)

    def verify(self, completions: Sequence[str], references: Sequence[Any]) -> Verification:
        """Rewards ``[N]`` float32 in {0, 1} and statuses for ``completions[i]`` vs
        ``references[i]``."""
        if len(completions) != len(references):
            raise ValueError(f"{len(completions)} completions but {len(references)} references")
        answers = [self._extract(completion) for completion in completions]
        to_check = [i for i, answer in enumerate(answers) if answer is not None]
        statuses = [Status.NO_ANSWER] * len(answers)
        rewards = np.zeros(len(answers), np.float32)  # [N]
        if to_check:
            pairs = [(answers[i], references[i]) for i in to_check]
            outcomes = self._pool.map(self._equivalent, pairs)
            for index, outcome in zip(to_check, outcomes, strict=True):
                statuses[index] = outcome.status
                if outcome.status is Status.OK:
                    rewards[index] = outcome.value
        return Verification(rewards, tuple(statuses))

    def close(self) -> None:
        """Stops the worker processes (they start again on the next ``verify``)."""
        self._pool.close()
