"""DAPO's reward shaping and group filtering: overlong penalty (in tokens) and mixed groups.

Both are pure functions. The rollout loop uses :func:`mixed_groups` for dynamic sampling
(over-sample prompts, keep groups with contrast until the batch is full) and adds
:func:`overlong_penalty` to the verifier's reward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def mixed_groups(rewards: Array) -> Array:
    """bool[B]: groups whose rewards are not all equal.

    For binary rewards this is DAPO's ``0 < k < G`` with ``k`` the number of correct
    responses; for float rewards it keeps every group with a non-zero reward spread, the
    groups on which a group-normalised advantage is non-zero.
    """
    if jnp.ndim(rewards) != 2:
        raise ValueError(f"mixed_groups: rewards must be [B, G], got shape {jnp.shape(rewards)}")
    rewards = jnp.asarray(rewards)
    return jnp.any(rewards != rewards[:, :1], axis=-1)


def overlong_penalty(lengths: Array, *, max_len: int, cache_len: int) -> Array:
    """DAPO's soft overlong punishment, with lengths counted in **tokens**.

    With budget ``L_max = max_len`` and buffer ``L_cache = cache_len``::

        R_len = 0                                  if len <= L_max - L_cache
        R_len = ((L_max - L_cache) - len) / L_cache if L_max - L_cache < len <= L_max
        R_len = -1                                 if len > L_max

    Args:
      lengths: integer response lengths in tokens, any shape.
      max_len: the token budget ``L_max``.
      cache_len: the buffer ``L_cache`` (``0 < cache_len <= max_len``).

    Returns:
      float32 penalties of the same shape, in ``[-1, 0]``.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(
            f"overlong_penalty needs 0 < cache_len <= max_len, got cache_len={cache_len}, "
            f"max_len={max_len}"
        )
    lengths = jnp.asarray(lengths, jnp.float32)
    soft_start = max_len - cache_len
    ramp = (soft_start - lengths) / cache_len
    return jnp.where(lengths <= soft_start, 0.0, jnp.where(lengths <= max_len, ramp, -1.0))
