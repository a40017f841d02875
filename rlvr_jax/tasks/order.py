"""The deterministic example order: seeded shuffling and host sharding over any random-access
source (``len`` + ``[i]``).

Epoch ``e`` visits the permutation ``default_rng([seed, e]).permutation(N)``. For multi-host
runs the permutation is cut to a multiple of ``process_count`` (dropping at most
``process_count - 1`` examples per epoch) and host ``p`` takes positions ``p, p + P, ...``, so
every host sees the same number of examples, the hosts' shards are disjoint, and their union
is the whole epoch. Any epoch's order is computed directly, so a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np


class RandomAccessSource(Protocol):
    """Examples by index: what a task's split is."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def _default_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def epoch_order(
    num_examples: int, seed: int, epoch: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
    """Indices this host visits in ``epoch``: ``[num_examples // process_count]`` int64."""
    if num_examples < process_count:
        raise ValueError(f"{num_examples} examples cannot be shared by {process_count} hosts")
    permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)  # [N]
    usable = num_examples - num_examples % process_count
    return permutation[:usable][process_index::process_count]


def iterate_examples(
    source: RandomAccessSource,
    seed: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    start_epoch: int = 0,
) -> Iterator[dict[str, Any]]:
    """This host's examples, epoch after epoch (forever when ``num_epochs`` is None).

    ``process_index``/``process_count`` default to ``jax.process_index()``/``process_count()``.
    """
    process_index, process_count = _default_processes(process_index, process_count)
    epoch = start_epoch
    while num_epochs is None or epoch < start_epoch + num_epochs:
        for index in epoch_order(len(source), seed, epoch, process_index, process_count):
            yield source[int(index)]
        epoch += 1
