"""Statistics of a study: bootstrap intervals over prompts and seeds, and intervals over seeds.

A study measures a per-(seed, prompt) quantity ``x[j, p]`` (a prompt's pass@k after training
with seed ``j``; the difference between two methods on the same seed and prompt). Its estimate
is the mean over seeds and prompts, ``theta = mean_{j, p} x[j, p]``. Both the prompts (a
sample of the task's held-out questions) and the seeds (a sample of training randomness) vary,
and every seed is evaluated on the same prompts, so the design is crossed.

:func:`bootstrap_interval` resamples seeds and prompts independently with replacement (the
same resampled prompts for every seed, which keeps the crossing) and takes the percentile
interval of the replicated means::

    theta*_r = sum_{j, p} W_seed[r, j] x[j, p] W_prompt[r, p] / (S P)

with ``W`` the multinomial counts of each seed and prompt in replicate ``r``. A paired
difference is the same computation on ``x_A[j, p] - x_B[j, p]``, so each replicate compares
the two methods on the same seeds and prompts. With one seed (the base model) it is the
bootstrap over prompts alone.

:func:`seed_interval` is the Student-t interval of a per-seed figure (``mean +- t_{0.975,
S-1} s / sqrt(S)``), used for curves over training steps, whose figures are not per prompt.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

REPLICATES = 10_000
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean and its 95% interval."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | list[float | None] | None]:
        """``{"mean", "ci95": [low, high]}``, undefined values as None (JSON has no NaN)."""
        value = lambda x: x if np.isfinite(x) else None  # noqa: E731
        return {"mean": value(self.mean), "ci95": [value(self.low), value(self.high)]}


def bootstrap_interval(values: np.ndarray, *, replicates: int = REPLICATES,
                       seed: int = 0) -> Estimate:
    """Mean of ``values [S seeds, P prompts]`` with its percentile bootstrap interval over
    seeds and prompts (see the module docstring); deterministic for a given ``seed``."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"bootstrap_interval needs [seeds, prompts] values, got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("bootstrap_interval: values must be finite")
    S, P = values.shape
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(S, np.full(S, 1 / S), size=replicates)  # [R, S]
    prompt_counts = rng.multinomial(P, np.full(P, 1 / P), size=replicates)  # [R, P]
    replicated = np.einsum("rs,sp,rp->r", seed_counts, values, prompt_counts) / (S * P)  # [R]
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(replicated, [tail, 100 - tail])
    return Estimate(float(values.mean()), float(low), float(high))


def seed_interval(per_seed: np.ndarray) -> Estimate:
    """Mean of ``per_seed [S]`` with its Student-t 95% interval; NaN entries (a figure a seed
    did not have) are left out. With one seed the interval is undefined (NaN bounds)."""
    per_seed = np.asarray(per_seed, np.float64)
    per_seed = per_seed[np.isfinite(per_seed)]
    if per_seed.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    mean = float(per_seed.mean())
    if per_seed.size == 1:
        return Estimate(mean, float("nan"), float("nan"))
    half = stats.t.ppf(0.5 + LEVEL / 2, per_seed.size - 1) * per_seed.std(ddof=1) / np.sqrt(
        per_seed.size)
    return Estimate(mean, mean - float(half), mean + float(half))
