"""Input checks and group statistics shared by the advantage estimators.

The estimators (:mod:`rlvr_jax.advantages`, :mod:`rlvr_jax.exploration_advantages`) take rewards
``[B, G]`` (``B`` prompts, a group of ``G`` responses each) and rollout statistics ``[B, G, L]`` or
``[B, P]``; the checks here name the estimator and the shape that is wrong. The statistics run in
float32 (at least) and never evaluate a ``jnp.where`` branch on values that give NaN or inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def check_rewards(rewards: Array, name: str) -> None:
    """Raises naming estimator ``name`` unless ``rewards`` is ``[B, G]``."""
    if jnp.ndim(rewards) != 2:
        raise ValueError(
            f"{name}: rewards must have shape [B, G] (prompts x group), got shape "
            f"{jnp.shape(rewards)}"
        )


def check_token_stats(
    rewards: Array, logp: Array, mask: Array, name: str, stat: str = "logp"
) -> None:
    """Raises unless the token statistic ``stat`` (``logp``) and ``mask`` are ``[B, G, L]``
    for rewards ``[B, G]``."""
    B, G = jnp.shape(rewards)
    if jnp.ndim(logp) != 3 or jnp.shape(logp)[:2] != (B, G):
        raise ValueError(
            f"{name}: {stat} must have shape [B, G, L] = [{B}, {G}, L] to match rewards, got "
            f"{jnp.shape(logp)}"
        )
    if jnp.shape(mask) != jnp.shape(logp):
        raise ValueError(
            f"{name}: response_mask shape {jnp.shape(mask)} does not match {stat} shape "
            f"{jnp.shape(logp)}"
        )


def check_prompt_stats(rewards: Array, prompt_logp: Array, prompt_mask: Array, name: str):
    """Raises unless ``prompt_logp`` and ``prompt_mask`` are ``[B, P]`` for rewards ``[B, G]``."""
    B = jnp.shape(rewards)[0]
    if jnp.ndim(prompt_logp) != 2 or jnp.shape(prompt_logp)[0] != B:
        raise ValueError(
            f"{name}: prompt_logp must have shape [B, P] = [{B}, P], got {jnp.shape(prompt_logp)}"
        )
    if jnp.shape(prompt_mask) != jnp.shape(prompt_logp):
        raise ValueError(
            f"{name}: prompt_mask shape {jnp.shape(prompt_mask)} does not match prompt_logp "
            f"shape {jnp.shape(prompt_logp)}"
        )


def check_binary(rewards: Array, name: str) -> None:
    """Raises on non-binary rewards when their values are known (outside ``jit``)."""
    try:
        values = np.asarray(rewards, dtype=np.float32)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return  # traced under jit: values are unknown here
    bad = values[(values != 0.0) & (values != 1.0)]
    if bad.size:
        raise ValueError(
            f"{name} requires binary rewards in {{0, 1}}; got non-binary values such as "
            f"{bad[:5].tolist()}. Binarise the verifier's score first."
        )


def out_dtype(rewards: Array) -> jnp.dtype:
    """The rewards' floating dtype (bfloat16 in, bfloat16 out), float32 for integer/bool."""
    dtype = jnp.asarray(rewards).dtype
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def as_f32(x: Array) -> Array:
    """``x`` in float32, or in its own dtype when that is wider."""
    return jnp.asarray(x).astype(jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))


def all_equal(r: Array) -> Array:
    """bool[B]: the group has no contrast (every reward equals the first)."""
    return jnp.all(r == r[:, :1], axis=-1)


def group_normalise(r: Array, std_ddof: int, eps: float) -> Array:
    """``(r - mean) / (std + eps)`` per group, exactly 0 on all-equal groups.  # [B, G]"""
    G = r.shape[-1]
    centred = r - jnp.mean(r, axis=-1, keepdims=True)
    variance = jnp.sum(centred**2, axis=-1, keepdims=True) / jnp.maximum(G - std_ddof, 1)
    degenerate = all_equal(r)[:, None]
    denominator = jnp.sqrt(jnp.where(degenerate, 1.0, variance)) + eps  # sqrt'(0) is inf
    return jnp.where(degenerate, 0.0, centred / denominator)


def masked_mean(x: Array, mask: Array, axis: int = -1) -> Array:
    """Mean of ``x`` over ``mask``; 0 where the mask is empty."""
    total = jnp.sum(jnp.where(mask, x, 0.0), axis=axis)
    count = jnp.sum(mask, axis=axis)
    return total / jnp.maximum(count, 1)
