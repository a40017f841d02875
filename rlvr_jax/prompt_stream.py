"""Which examples a run samples: a resumable stream of one split, and a fixed set, each
without the examples that cannot be sampled (a prompt over ``rollout.max_prompt_len``, which
``rollout.Sampler.prompt_problem`` tells). One bad example never stops a run or its resume: it
is passed over with a warning and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from rlvr_jax.tasks.order import epoch_order

logger = logging.getLogger(__name__)


class PromptStream:
    """Examples of one task split in a seeded order, addressed by a global position.

    Position ``i`` is example ``epoch_order(n, seed, i // n)[i % n]``: the stream is endless
    (reshuffled each epoch), identical on every host, and resumes exactly from ``position``.
    ``take`` passes over the examples its ``reject`` finds unusable (a prompt over
    ``rollout.max_prompt_len``), warning once per example and counting them in ``skipped``.
    """

    def __init__(self, task: Any, split: str, seed: int, position: int = 0):
        self.source = task.source(split)
        self.split = split
        self.seed = seed
        self.position = position
        self.skipped = 0  # examples passed over by ``take`` in this process
        self._rejected: set[int] = set()  # indices into ``source``, each rejected once
        self._epoch: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_order(len(self.source), self.seed, epoch))
        return self._epoch[1]

    def take(
        self, n: int, reject: Callable[[dict[str, Any]], str | None] | None = None
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The next ``n`` examples that ``reject`` accepts and their global positions ``[n]``.

        ``reject(example)`` says why an example cannot be used, or None when it can (default:
        every example can); pass the same ``reject`` on every call, as its verdicts are
        remembered. Raises ``ValueError`` when two epochs' worth of positions in a row, hence
        every example, are rejected.
        """
        size = len(self.source)
        examples, positions = [], []
        in_a_row = 0
        while len(examples) < n:
            position = self.position
            self.position += 1
            index = int(self._order(position // size)[position % size])
            if index not in self._rejected:
                example = self.source[index]
                reason = reject(example) if reject is not None else None
                if reason is None:
                    examples.append(example)
                    positions.append(position)
                    in_a_row = 0
                    continue
                self._rejected.add(index)
                logger.warning("passing over example %r of split %r: %s", example.get("id"),
                               self.split, reason)
            self.skipped += 1
            in_a_row += 1
            if in_a_row >= 2 * size:
                raise ValueError(f"no example of split {self.split!r} can be used: all "
                                 f"{size} were passed over (see the warnings)")
        return examples, np.asarray(positions, np.int64)


def usable_examples(examples: list[dict[str, Any]], reject: Callable[[dict[str, Any]], str | None],
                    what: str) -> list[dict[str, Any]]:
    """``examples`` (``what``: e.g. "evaluation") without those ``reject`` finds unusable,
    each named in a warning; raises ``ValueError`` when none is left."""
    kept = []
    for example in examples:
        reason = reject(example)
        if reason is None:
            kept.append(example)
        else:
            logger.warning("leaving %s example %r out: %s", what, example.get("id"), reason)
    if not kept:
        raise ValueError(f"none of the {len(examples)} {what} examples can be used (see the "
                         "warnings)")
    return kept
