"""Procedural tasks from ``reasoning-gym``: random-access examples that need no files.

Example ``i`` of ``ProceduralSource(name, seed, size)`` is generated deterministically from
``(seed, i)`` by reasoning-gym, so any host can produce any example with no I/O. Each example
keeps the reasoning-gym entry (its reference answer and metadata) for scoring.
"""

from __future__ import annotations

from typing import Any

PROCEDURAL_TASKS = ("countdown", "basic_arithmetic", "chain_sum", "gsm_symbolic")


class ProceduralSource:
    """Random-access reasoning-gym examples ``{'id', 'question', 'answer', 'entry'}``.

    Args:
      name: a reasoning-gym data set name (e.g. ``"countdown"``).
      seed: generation seed; the same seed gives the same examples.
      size: number of distinct examples.
      **config: the data set's own configuration (difficulty ranges and so on).
    """

    def __init__(self, name: str, seed: int = 0, size: int = 10_000, **config: Any):
        import reasoning_gym

        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        try:
            self._dataset = reasoning_gym.create_dataset(name, seed=seed, size=size, **config)
        except ValueError as error:
            raise ValueError(f"unknown reasoning-gym task {name!r}: {error}") from error
        self.name = name
        self.seed = seed

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        entry = self._dataset[index]
        return {
            "id": f"{self.name}/{self.seed}/{index}",
            "question": entry["question"],
            "answer": str(entry["answer"]),
            "entry": entry,
        }
