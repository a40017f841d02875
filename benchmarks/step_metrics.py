"""The step-time scalars of a training run's ``metrics.jsonl`` (no JAX: the GPU suite's driver
reads them too, without touching the accelerator)."""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

TIME_PREFIX = "time/"
KEPT = ("step", "train/tokens")


def read_steps(workdir: str) -> list[dict[str, float]]:
    """The ``time/*`` scalars, step number and token count of each logged training step."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    steps = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if f"{TIME_PREFIX}step_seconds" in row:
                steps.append({key: value for key, value in row.items()
                              if key.startswith(TIME_PREFIX) or key in KEPT})
    return steps


def summarize(steps: list[dict[str, float]]) -> dict[str, Any]:
    """The first step's scalars (it compiles) and the median of each over the later steps."""
    keys = sorted({key for step in steps for key in step if key.startswith(TIME_PREFIX)})
    later = steps[1:]
    return {
        "steps_logged": len(steps),
        "first_step": steps[0] if steps else None,
        "median_after_first": {key: statistics.median(step[key] for step in later)
                               for key in keys} if later else None,
    }
