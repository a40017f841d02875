"""The result of scoring a batch: binary rewards plus how each item ended."""

from __future__ import annotations

import dataclasses

import numpy as np

from rlvr_jax.rewards.pool import CRASH, TIMEOUT

NO_ANSWER = "no_answer"


@dataclasses.dataclass(frozen=True)
class ScoreReport:
    """Rewards of one ``score`` call and how each item ended.

    ``statuses[i]`` is ``"ok"``, ``"no_answer"``, ``"timeout"`` or ``"crash"``.
    """

    rewards: np.ndarray  # [N] float32 in {0, 1}
    statuses: tuple[str, ...]

    @property
    def timeouts(self) -> int:
        return self.statuses.count(TIMEOUT)

    @property
    def crashes(self) -> int:
        return self.statuses.count(CRASH)

    @property
    def no_answer(self) -> int:
        return self.statuses.count(NO_ANSWER)
