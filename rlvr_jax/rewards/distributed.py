"""Verification split across processes: each host verifies a slice, every host gets all rewards.

In a multi-host job every process holds the same ``N`` completions after the generations are
gathered. Instead of each one running the verifier on all ``N`` items, process ``p`` of ``P``
verifies the contiguous slice :func:`process_slice` gives it, and the per-item rewards and
statuses are all-gathered, so every process ends with the same full :class:`Verification`.

Counters: the returned verification's ``timeouts`` / ``crashes`` / ``no_answer`` count all
``N`` items (they are derived from the gathered statuses); the task's running totals
``task.timeouts`` / ``task.crashes`` count only the items this process verified, so summed
over processes they count every item exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlvr_jax.rewards.verification import Status, Verification

STATUSES = tuple(Status)  # a status travels as its index in this tuple


class Verifiable(Protocol):
    """What this module needs of a task: ``verify(completions, examples)``."""

    def verify(self, completions: Sequence[str], examples: Sequence[dict]) -> Verification: ...


def process_slice(num_items: int, process_index: int, process_count: int) -> slice:
    """The contiguous items of process ``process_index`` when ``num_items`` are split evenly.

    With ``num_items = q * process_count + r`` the first ``r`` processes get ``q + 1`` items and
    the rest ``q``; the slices are disjoint, in process order, and cover ``range(num_items)``.
    """
    if process_count < 1:
        raise ValueError(f"process_count={process_count}; expected at least 1")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside [0, {process_count})")
    if num_items < 0:
        raise ValueError(f"num_items={num_items}; expected a non-negative count")
    base, extra = divmod(num_items, process_count)
    start = process_index * base + min(process_index, extra)
    return slice(start, start + base + int(process_index < extra))


def encode_statuses(statuses: Sequence[str]) -> np.ndarray:
    """Statuses as their indices in :data:`STATUSES`, ``[n]`` int32."""
    unknown = sorted(set(statuses) - set(STATUSES))
    if unknown:
        raise ValueError(
            f"unknown verification statuses {unknown}; expected one of {list(map(str, STATUSES))}"
        )
    return np.asarray([STATUSES.index(s) for s in statuses], np.int32).reshape(-1)


def verify_across_processes(
    task: Verifiable, completions: Sequence[str], examples: Sequence[dict]
) -> Verification:
    """``task.verify(completions, examples)``, with the verifier work split over processes.

    Every process must call this with the same ``N`` items (same order). With one process it
    is exactly ``task.verify``. Otherwise this process verifies its
    :func:`process_slice`, pads its rewards ``[n_p]`` and status codes ``[n_p]`` to
    ``ceil(N / P)``, and ``process_allgather`` stacks them to ``[P, ceil(N / P)]``; the
    unpadded rows, concatenated in process order, are the full verification of ``N`` items.
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    process_count = jax.process_count()
    if process_count == 1:
        return task.verify(completions, examples)

    num_items = len(completions)
    counts = np.asarray(
        multihost_utils.process_allgather(np.asarray([num_items], np.int32))
    ).reshape(process_count)  # [P]
    if np.any(counts != num_items):
        raise ValueError(f"processes hold different numbers of items to verify: {counts.tolist()}")
    if num_items == 0:
        return Verification.empty()

    slices = [process_slice(num_items, p, process_count) for p in range(process_count)]
    mine = slices[jax.process_index()]
    local = _verify_slice(task, list(completions[mine]), list(examples[mine]))
    width = -(-num_items // process_count)
    rewards = np.zeros(width, np.float32)  # [W]
    codes = np.zeros(width, np.int32)  # [W]
    rewards[: len(local.rewards)] = local.rewards
    codes[: len(local.statuses)] = encode_statuses(local.statuses)
    gathered = multihost_utils.process_allgather({"rewards": rewards, "codes": codes})
    all_rewards = np.asarray(gathered["rewards"]).reshape(process_count, width)  # [P, W]
    all_codes = np.asarray(gathered["codes"]).reshape(process_count, width)  # [P, W]
    sizes = [s.stop - s.start for s in slices]
    full_rewards = np.concatenate([all_rewards[p, :n] for p, n in enumerate(sizes)])  # [N]
    full_codes = np.concatenate([all_codes[p, :n] for p, n in enumerate(sizes)])  # [N]
    return Verification(
        rewards=full_rewards.astype(np.float32),
        statuses=tuple(STATUSES[int(code)] for code in full_codes),
    )


def _verify_slice(task: Verifiable, completions: list[str], examples: list[dict]) -> Verification:
    """This process's share; an empty share (``N < P``) never reaches the verifier."""
    if not completions:
        return Verification.empty()
    verification = task.verify(completions, examples)
    if len(verification.statuses) != len(completions):
        raise ValueError(
            f"task {getattr(task, 'name', task)!r} returned {len(verification.statuses)} "
            f"verdicts for {len(completions)} completions"
        )
    return verification
