"""Exploration metrics: unbiased pass@k, group statistics, entropy and Cov(logp, A).

All array functions accept NumPy and JAX arrays; :func:`pass_at_k` computes in float64 for
NumPy inputs and in float32 under ``jit`` for JAX inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _is_jax(*xs) -> bool:
    return any(isinstance(x, jax.Array) for x in xs)


def pass_at_k(n, c, k: int):
    """Unbiased pass@k (Chen et al., 2021) from ``n`` samples with ``c`` correct.

    ``pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)``, and 1
    when ``n - c < k``. ``n`` and ``c`` broadcast; ``k <= n`` is required.

    With NumPy (or Python) inputs the product is evaluated in float64; with JAX inputs the
    equivalent ``k``-factor product ``prod_{j < k} (n - c - j) / (n - j)`` runs in float32
    under ``jit`` (``n`` and ``c`` may be traced; ``k`` is static).
    Example: ``pass_at_k(16, 3, 4) = 0.6071428571``.
    """
    if _is_jax(n, c):
        # C(n - c, k) / C(n, k) = prod_{j < k} (n - c - j) / (n - j): k static factors; a factor
        # max(n - c - j, 0) = 0 appears exactly when n - c < k, giving pass@k = 1.
        n = jnp.asarray(n, jnp.float32)[..., None]
        c = jnp.asarray(c, jnp.float32)[..., None]
        j = jnp.arange(k, dtype=jnp.float32)
        ratio = jnp.prod(jnp.maximum(n - c - j, 0.0) / jnp.maximum(n - j, 1.0), axis=-1)
        return 1.0 - ratio

    n_arr, c_arr = np.broadcast_arrays(np.asarray(n, np.int64), np.asarray(c, np.int64))
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if np.any(k > n_arr) or k < 1:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    out = np.empty(n_arr.shape, np.float64)
    for index in np.ndindex(n_arr.shape):
        total, correct = int(n_arr[index]), int(c_arr[index])
        if total - correct < k:
            out[index] = 1.0
        else:
            i = np.arange(total - correct + 1, total + 1, dtype=np.float64)
            out[index] = 1.0 - np.prod(1.0 - k / i)
    return out if out.shape else float(out)


def pass_at_k_curve(rewards, ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean pass@k over prompts from binary rewards ``[B, n]``, for each ``k`` in ``ks``.

    ``ks`` defaults to ``1..n``. A response counts as correct when its reward is positive.
    """
    rewards = np.asarray(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"pass_at_k_curve: rewards must be [B, n], got shape {rewards.shape}")
    n = rewards.shape[1]
    correct = np.sum(rewards > 0, axis=1)
    ks = range(1, n + 1) if ks is None else ks
    return {int(k): float(np.mean(pass_at_k(n, correct, int(k)))) for k in ks}


def group_statistics(rewards) -> dict[str, Array]:
    """Fractions of all-correct, all-wrong and mixed groups, and the mean reward.

    ``rewards [B, G]``; a response is correct when its reward is positive. jit-able.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    correct = rewards > 0
    all_correct = jnp.all(correct, axis=-1)
    all_wrong = ~jnp.any(correct, axis=-1)
    return {
        "frac_all_correct": jnp.mean(all_correct),
        "frac_all_wrong": jnp.mean(all_wrong),
        "frac_mixed": jnp.mean(~all_correct & ~all_wrong),
        "reward_mean": jnp.mean(rewards),
    }


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of ``x`` over the positions where ``mask`` is set (0 for an empty mask)."""
    mask = jnp.asarray(mask).astype(bool)
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def logp_advantage_covariance(logp: Array, advantages: Array, mask: Array) -> Array:
    """``Cov(logp, A)`` over the valid response tokens of the batch.

    The first-order predictor of the entropy change under a policy-gradient step (a positive
    covariance predicts falling entropy). ``logp [B, G, L]``; ``advantages`` per sequence
    ``[B, G]`` (broadcast over tokens) or per token ``[B, G, L]``; ``mask [B, G, L]``::

        Cov = mean_t (logp_t - mean logp) (A_t - mean A)
    """
    logp = jnp.asarray(logp, jnp.float32)
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.ndim == logp.ndim - 1:
        advantages = advantages[..., None]
    advantages = jnp.broadcast_to(advantages, logp.shape)
    mean_logp = masked_mean(logp, mask)
    mean_adv = masked_mean(advantages, mask)
    return masked_mean((logp - mean_logp) * (advantages - mean_adv), mask)


def distinct_answer_counts(
    answers: Sequence[Sequence[str | None]], rewards
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct final answers and distinct **correct** answers of each group.

    Args:
      answers: ``B`` groups of ``G`` extracted final answers (``None`` where no answer was
        found; those are not counted as answers).
      rewards: ``[B, G]``; an answer is correct when its reward is positive.

    Returns:
      ``(distinct [B], distinct_correct [B])`` integer counts.
    """
    rewards = np.asarray(rewards)
    if rewards.shape[0] != len(answers) or any(len(g) != rewards.shape[1] for g in answers):
        raise ValueError(
            f"answer_diversity: answers must be {rewards.shape[0]} groups of "
            f"{rewards.shape[1] if rewards.ndim == 2 else '?'} strings to match rewards "
            f"{rewards.shape}"
        )
    distinct = [len({a for a in group if a is not None}) for group in answers]
    distinct_correct = [
        len({a for a, r in zip(group, row, strict=True) if a is not None and r > 0})
        for group, row in zip(answers, rewards, strict=True)
    ]
    return np.asarray(distinct, np.int64), np.asarray(distinct_correct, np.int64)


def answer_diversity(answers: Sequence[Sequence[str | None]], rewards) -> dict[str, float]:
    """Means over groups of :func:`distinct_answer_counts`: ``distinct_answers`` and
    ``distinct_correct_answers``."""
    distinct, distinct_correct = distinct_answer_counts(answers, rewards)
    return {
        "distinct_answers": float(np.mean(distinct)),
        "distinct_correct_answers": float(np.mean(distinct_correct)),
    }
