"""What verifying a batch returns, and the interface every verifier presents.

A verifier checks ``N`` completions against ``N`` references and returns a
:class:`Verification`: binary rewards ``[N]`` and one :class:`Status` per item. Verification
never raises on model output: an item without an answer, one that runs out of time and one
that crashes its check all score 0, and their statuses say which, so they can be counted.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Status(enum.StrEnum):
    """How the verification of one item ended."""

    OK = "ok"  # checked; the reward says whether the answer is correct
    NO_ANSWER = "no_answer"  # the completion states no answer; it never reaches a worker
    TIMEOUT = "timeout"  # the check ran past its timeout and was stopped
    CRASH = "crash"  # the check raised, or the process running it died


@dataclasses.dataclass(frozen=True)
class Verification:
    """Rewards of one batch and how each item ended.

    ``statuses`` may be given as their string values (``"ok"``); they are stored as
    :class:`Status` members, and an unknown one raises ``ValueError``.
    """

    rewards: np.ndarray  # [N] float32 in {0, 1}
    statuses: tuple[Status, ...]

    def __post_init__(self) -> None:
        rewards = np.asarray(self.rewards, np.float32).reshape(-1)  # [N]
        statuses = tuple(Status(status) for status in self.statuses)
        if len(rewards) != len(statuses):
            raise ValueError(f"{len(rewards)} rewards but {len(statuses)} statuses")
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "statuses", statuses)

    @classmethod
    def empty(cls) -> Verification:
        """The verification of no items."""
        return cls(np.zeros(0, np.float32), ())

    def count(self, status: Status) -> int:
        """How many items ended with ``status``."""
        return self.statuses.count(status)

    @property
    def timeouts(self) -> int:
        return self.count(Status.TIMEOUT)

    @property
    def crashes(self) -> int:
        return self.count(Status.CRASH)

    @property
    def no_answer(self) -> int:
        return self.count(Status.NO_ANSWER)


class Verifier(Protocol):
    """Checks completions against references; what a task holds to produce its rewards."""

    def extract(self, completion: str) -> str | None:
        """The final answer (or code) of a completion, None when it states none."""
        ...

    def verify(self, completions: Sequence[str], references: Sequence[Any]) -> Verification:
        """Rewards ``[N]`` and statuses for ``completions[i]`` against ``references[i]``."""
        ...

    def close(self) -> None:
        """Stops any worker processes (they start again when needed)."""
        ...
