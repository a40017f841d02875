"""Advantage estimators the exploration literature compares against: pass@k, signed REINFORCE
(NSR / PSR / W-REINFORCE) and the entropy-shaped advantage.

Same contract as :mod:`rlvr_jax.advantages` (whose registry lists these too): rewards ``[B, G]``,
rollout statistics as keyword arguments (constants for the gradient), every convention a keyword
argument with its default written here, float32 computation and the rewards' floating dtype out.

Unlike the group-centred estimators, NSR / PSR / W-REINFORCE have no baseline, so an all-correct
or all-wrong group is *not* zero: pushing down every response of an all-wrong group is what NSR
is about.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlvr_jax.group_statistics import (
    as_f32,
    check_binary,
    check_rewards,
    check_token_stats,
    group_normalise,
    out_dtype,
)

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Pass@k (verl's grpo_passk)
# ----------------------------------------------------------------------------------------------


def grpo_passk(
    rewards: Array, *, std_ddof: int = 1, eps: float = 1e-6, normalise_by_std: bool = True
) -> Array:
    """The pass@k advantage verl calls ``grpo_passk`` (Tang et al., 2025, arXiv 2503.19595).

    Only the best response of a group is credited, with the margin by which it beats the rest::

        A_i = (r_(1) - r_(2)) / (std(r) + eps)    for i = argmax_j r_j (the first one on ties)
        A_i = 0                                   otherwise

    ``r_(1) >= r_(2)`` are the group's two largest rewards. This is the leave-one-out estimator
    ``max_j r_j - max_{j != i} r_j`` of the gradient of the group's best reward, i.e. of pass@k
    with ``k = G`` for binary rewards **(reading)**: verl 0.9.1 implements this ``k = G`` case
    and so does this function. With binary rewards only a group with exactly one correct
    response has a non-zero advantage, ``1 / (std + eps)`` on that response; groups whose two
    best rewards tie (every all-equal group included) give 0.

    Args:
      rewards: ``[B, G]`` rewards (binary or float), ``G >= 2``.
      std_ddof: ddof of the group std (1: Bessel, as verl's ``torch.std``).
      eps: added to the std.
      normalise_by_std: divide by ``std + eps`` (verl's ``norm_adv_by_std_in_grpo``).

    Returns:
      ``[B, G]`` advantages.
    """
    check_rewards(rewards, "grpo_passk")
    G = jnp.shape(rewards)[1]
    if G < 2:
        raise ValueError(f"grpo_passk needs at least 2 responses per group, got G={G}")
    r = as_f32(rewards)  # [B, G]
    top, index = jax.lax.top_k(r, 2)  # [B, 2] each; equal values keep the lower index first
    margin = top[:, :1] - top[:, 1:]  # [B, 1], >= 0
    if normalise_by_std:
        centred = r - jnp.mean(r, axis=-1, keepdims=True)
        variance = jnp.sum(centred**2, axis=-1, keepdims=True) / max(G - std_ddof, 1)
        positive = variance > 0.0
        std = jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1.0)), 0.0)
        margin = margin / (std + eps)  # a zero variance has a zero margin
    best = jax.nn.one_hot(index[:, 0], G, dtype=r.dtype)  # [B, G]
    return (best * margin).astype(out_dtype(rewards))


# ----------------------------------------------------------------------------------------------
# Signed REINFORCE: PSR, NSR, W-REINFORCE
# ----------------------------------------------------------------------------------------------


def _signed_reinforce(rewards: Array, positive: float, negative: float, name: str) -> Array:
    """``+positive`` for correct and ``-negative`` for wrong responses.  ``[B, G] -> [B, G]``"""
    check_rewards(rewards, name)
    check_binary(rewards, name)
    correct = as_f32(rewards) > 0.5
    return jnp.where(correct, positive, -negative if negative else 0.0).astype(out_dtype(rewards))


def psr(rewards: Array) -> Array:
    """Positive sample reinforcement (Zhu et al., 2025, "The Surprising Effectiveness of Negative
    Reinforcement in LLM Reasoning"): train on the correct responses only.

    ``A_i = 1`` if ``r_i = 1`` and ``0`` if ``r_i = 0`` (the paper's rewards ``{-1, +1}`` with the
    negative samples dropped; no baseline, so all-correct groups get 1 everywhere). Binary rewards
    only: a non-binary value raises outside ``jit``; inside, ``r_i > 0.5`` counts as correct.
    ``[B, G] -> [B, G]``.
    """
    return _signed_reinforce(rewards, 1.0, 0.0, "psr")


def nsr(rewards: Array) -> Array:
    """Negative sample reinforcement (Zhu et al., 2025): train on the wrong responses only.

    ``A_i = 0`` if ``r_i = 1`` and ``-1`` if ``r_i = 0``. No baseline: every response of an
    all-wrong group is pushed down (the paper's point: NSR keeps the probability mass the policy
    takes off wrong answers spread over the alternatives it already holds). Binary rewards only,
    as :func:`psr`. ``[B, G] -> [B, G]``.
    """
    return _signed_reinforce(rewards, 0.0, 1.0, "nsr")


def w_reinforce(rewards: Array, *, positive_weight: float = 0.1) -> Array:
    """Weighted REINFORCE (Zhu et al., 2025): ``lambda * PSR + NSR`` with ``lambda = 0.1``.

    ``A_i = lambda`` if ``r_i = 1`` and ``-1`` if ``r_i = 0``; ``positive_weight = 1`` is plain
    REINFORCE on ``{-1, +1}`` rewards, ``0`` is :func:`nsr`. Binary rewards only, as :func:`psr`.
    ``[B, G] -> [B, G]``.
    """
    if positive_weight < 0:
        raise ValueError(f"w_reinforce: positive_weight must be >= 0, got {positive_weight}")
    return _signed_reinforce(rewards, positive_weight, 1.0, "w_reinforce")


# ----------------------------------------------------------------------------------------------
# Entropy-shaped advantage
# ----------------------------------------------------------------------------------------------


def entropy_advantage(
    rewards: Array,
    *,
    entropy: Array,
    response_mask: Array,
    alpha: float = 0.4,
    kappa: float = 2.0,
    std_ddof: int = 1,
    eps: float = 1e-6,
) -> Array:
    """GRPO plus a clipped entropy bonus per token (Cheng et al., 2025, "Reasoning with
    Exploration: An Entropy Perspective")::

        A_{i,t} = A_i + min(alpha * H_{i,t}, |A_i| / kappa)

    ``A`` is :func:`rlvr_jax.advantages.grpo` (``std_ddof``, ``eps``) and ``H_{i,t}`` the
    full-vocabulary entropy of the rollout policy at response token ``t``, at the sampling
    temperature, a constant for the gradient (the paper's ``H^detach``). The clip at
    ``|A| / kappa`` keeps the bonus from flipping the sign of a negative advantage (``kappa > 1``)
    and makes it vanish where ``A = 0``: all-equal groups stay exactly 0. Defaults
    ``alpha = 0.4``, ``kappa = 2`` **(reading)**: the values this project reads from the paper's
    GRPO runs; sweep them.

    Args:
      rewards: ``[B, G]``.
      entropy: ``[B, G, L]`` rollout-policy entropies of the response positions (>= 0).
      response_mask: ``[B, G, L]``, 1 on valid response tokens.
      alpha: scale of the entropy term (>= 0).
      kappa: the bonus is at most ``|A| / kappa`` (> 0).

    Returns:
      ``[B, G, L]`` advantages, 0 on padding.
    """
    check_rewards(rewards, "entropy_advantage")
    check_token_stats(rewards, entropy, response_mask, "entropy_advantage", stat="entropy")
    if alpha < 0 or kappa <= 0:
        raise ValueError(
            f"entropy_advantage: alpha must be >= 0 and kappa > 0, got alpha={alpha}, "
            f"kappa={kappa}"
        )
    base = group_normalise(as_f32(rewards), std_ddof, eps)[..., None]  # [B, G, 1]
    entropy = jax.lax.stop_gradient(as_f32(entropy))  # [B, G, L]
    shaped = base + jnp.minimum(alpha * entropy, jnp.abs(base) / kappa)  # [B, G, L]
    mask = jnp.asarray(response_mask).astype(bool)
    return jnp.where(mask, shaped, 0.0).astype(out_dtype(rewards))
