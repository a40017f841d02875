"""The per-token policy-gradient objectives :func:`rlvr_jax.losses.policy_loss` selects with
``objective``, and the token selection Clip-Cov and KL-Cov act on.

Each objective maps the log-ratio ``d = logp - logp_old`` (0 on padding), the advantage ``A``
broadcast to ``[..., L]`` and, where it needs them, the log-probs and the mask, to a per-token loss
``L_t`` (:class:`Surrogate`); ``policy_loss`` adds the KL and entropy terms, weights by the
rollout-correction weights and aggregates with the global normalisers, the same for every
objective. ``rho = exp(d)``; ``sg`` is ``stop_gradient``; ``eps_low`` / ``eps_high`` are
``clip_low`` / ``clip_high`` unless stated.

* ``clipped`` (verl ``vanilla``): ``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``, with
  an optional dual clip (PPO; DAPO's clip-higher is ``eps_high > eps_low``).
* ``gspo`` (verl ``gspo``; GSPO, Zheng et al., 2025, arXiv 2507.18071): the same with the
  sequence ratio ``s_i = exp(mean_t d_{i,t})`` in place of ``rho``, written per token as
  ``s_{i,t} = sg(s_i) exp(logp_t - sg(logp_t))`` (value ``s_i``, gradient through every token),
  its log clamped at 10 as verl does, and its own clip range ``gspo_clip_low`` /
  ``gspo_clip_high`` (the paper's 3e-4 / 4e-4: a sequence ratio stays close to 1).
* ``cispo`` (verl ``cispo``; CISPO, MiniMax-M1, 2025, arXiv 2506.13585):
  ``-sg(clip(rho, 1 - eps_low, 1 + eps_high)) A logp_t``: the clipped importance weight scales
  the REINFORCE term, so every token keeps its gradient. (The paper bounds the weight from above
  only; a ``clip_low`` close to 1 approximates that.)
* ``gmpo`` (verl ``geo_mean``; GMPO, Zhao et al., 2025, arXiv 2507.20673):
  ``-A_i exp(mean_t d~_{i,t})`` on every token of response ``i``, the geometric mean of the token
  ratios with each log-ratio clipped to ``[-eps_low, eps_high]`` on the side that binds for the
  sign of ``A`` (``d~ = min(d, eps_high)`` for ``A > 0``, ``max(d, -eps_low)`` for ``A < 0``);
  ``A_i`` is the mean of ``A`` over the response's tokens. ``seq_mean_token_mean`` gives verl's
  value (the mean over responses); the paper clips wider, ``eps = 0.4``.
* ``clip_cov`` (verl ``clip_cov``; Cui et al., 2025, "The Entropy Mechanism of Reinforcement
  Learning for Reasoning Language Models", arXiv 2505.22617): the clipped loss without dual clip,
  set to 0 (value and gradient) on the selected tokens.
* ``kl_cov`` (verl ``kl_cov``; Cui et al., 2025): the unclipped ``-rho A``, plus
  ``kl_cov_coef |d|`` on the selected tokens.

**Clip-Cov / KL-Cov selection** (:func:`covariance_selection`). Over the valid tokens of the
whole batch passed in, ``C_t = (A_t - mean A) (logp_t - mean logp)``, the centred product whose
batch sum predicts the entropy change of a policy-gradient step (``logp`` of the current policy,
a constant here). Clip-Cov picks ``max(1, floor(clip_cov_ratio N))`` tokens (``N`` valid tokens)
at random among those with ``clip_cov_lb < C_t < clip_cov_ub`` that the clipped loss does not
already clip; KL-Cov picks the ``max(1, floor(kl_cov_ratio N))`` tokens with the largest ``C_t``.
``train_step`` computes the selection once per update over the global mini-batch, so it does not
change with the micro-batch count (verl selects per micro-batch). Defaults are verl 0.9.1's
``PolicyLossConfig``: ratios ``2e-4``, band ``(1, 5)``, ``kl_cov_coef = 0.1``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Objective = Literal["clipped", "gspo", "cispo", "gmpo", "clip_cov", "kl_cov"]
OBJECTIVES: tuple[str, ...] = ("clipped", "gspo", "cispo", "gmpo", "clip_cov", "kl_cov")
COVARIANCE_OBJECTIVES: tuple[str, ...] = ("clip_cov", "kl_cov")
SELECTION_SETTINGS: tuple[str, ...] = ("objective", "clip_low", "clip_high", "clip_cov_ratio",
                                       "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio")
"""The ``loss`` settings :func:`covariance_selection` reads."""
GSPO_LOG_RATIO_MAX = 10.0  # verl's clamp of the log sequence ratio
sg = jax.lax.stop_gradient


class Surrogate(NamedTuple):
    """An objective's per-token loss and where its clip is active (``[..., L]`` each)."""

    loss: Array
    clipped_low: Array  # bool: the lower bound binds (A < 0 side for the PPO-style clips)
    clipped_high: Array  # bool: the upper bound binds
    dual_clipped: Array  # bool: the dual clip binds (objective "clipped" only)


def check_objective_settings(
    *, objective: str, dual_clip: float | None, gspo_clip_low: float, gspo_clip_high: float,
    clip_cov_ratio: float, clip_cov_lb: float, clip_cov_ub: float, kl_cov_ratio: float,
    kl_cov_coef: float,
) -> None:
    """Raises ``ValueError`` naming the ``loss.<key>`` of an objective that is out of range."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown loss.objective {objective!r}; expected one of {OBJECTIVES}")
    if dual_clip is not None and objective != "clipped":
        raise ValueError(
            f"loss.dual_clip applies to loss.objective='clipped' only, not {objective!r}")
    for name, value in (("gspo_clip_low", gspo_clip_low), ("gspo_clip_high", gspo_clip_high)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"loss.{name} must be in [0, 1), got {value}")
    for name, value in (("clip_cov_ratio", clip_cov_ratio), ("kl_cov_ratio", kl_cov_ratio)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"loss.{name} must be in (0, 1], got {value}")
    if not clip_cov_lb < clip_cov_ub:
        raise ValueError(
            f"loss.clip_cov_lb={clip_cov_lb} must be below loss.clip_cov_ub={clip_cov_ub}")
    if kl_cov_coef < 0:
        raise ValueError(f"loss.kl_cov_coef must be >= 0, got {kl_cov_coef}")


def _none_like(x: Array) -> Array:
    return jnp.zeros(x.shape, bool)


def _ppo_clip(ratio: Array, advantages: Array, clip_low: float, clip_high: float) -> Surrogate:
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    return Surrogate(loss, (advantages < 0) & (ratio < 1.0 - clip_low),
                     (advantages > 0) & (ratio > 1.0 + clip_high), _none_like(loss))


def clipped(log_ratio: Array, advantages: Array, *, clip_low: float, clip_high: float,
            dual_clip: float | None) -> Surrogate:
    """PPO's clipped surrogate; ``dual_clip = c > 1`` caps the loss at ``-c A`` where
    ``A < 0``."""
    out = _ppo_clip(jnp.exp(log_ratio), advantages, clip_low, clip_high)
    if dual_clip is None:
        return out
    capped = jnp.minimum(out.loss, -dual_clip * advantages)
    negative = advantages < 0
    return out._replace(loss=jnp.where(negative, capped, out.loss),
                        dual_clipped=negative & (capped < out.loss))


def _sequence_mean(x: Array, mask: Array) -> Array:
    """``sum_t m x / max(sum_t m, 1)`` over the last axis.  ``[..., L] -> [..., 1]``"""
    total = jnp.sum(jnp.where(mask > 0, x, 0.0), axis=-1, keepdims=True)
    return total / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)


def gspo(logp: Array, log_ratio: Array, advantages: Array, mask: Array, *, clip_low: float,
         clip_high: float) -> Surrogate:
    """GSPO: the clipped surrogate on the sequence ratio, with a gradient through every token."""
    log_sequence_ratio = sg(_sequence_mean(log_ratio, mask))  # [..., 1]
    log_token_ratio = jnp.minimum(logp - sg(logp) + log_sequence_ratio, GSPO_LOG_RATIO_MAX)
    return _ppo_clip(jnp.exp(log_token_ratio), advantages, clip_low, clip_high)


def cispo(logp: Array, log_ratio: Array, advantages: Array, *, clip_low: float,
          clip_high: float) -> Surrogate:
    """CISPO: ``-sg(clip(rho)) A logp``."""
    ratio = jnp.exp(log_ratio)
    weight = sg(jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high))
    return Surrogate(-weight * advantages * logp, ratio < 1.0 - clip_low,
                     ratio > 1.0 + clip_high, _none_like(ratio))


def gmpo(log_ratio: Array, advantages: Array, mask: Array, *, clip_low: float,
         clip_high: float) -> Surrogate:
    """GMPO: the geometric mean of the sign-clipped token ratios, one loss per response."""
    sign = jnp.sign(advantages)
    bounded = jnp.clip(log_ratio, -clip_low, clip_high)
    log_ratio_clipped = sign * jnp.minimum(sign * log_ratio, sign * bounded)  # [..., L]
    ratio = jnp.exp(_sequence_mean(log_ratio_clipped, mask))  # [..., 1]
    loss = -_sequence_mean(advantages, mask) * ratio  # [..., 1]
    return Surrogate(jnp.broadcast_to(loss, log_ratio.shape),
                     (advantages < 0) & (log_ratio < -clip_low),
                     (advantages > 0) & (log_ratio > clip_high), _none_like(log_ratio))


def clip_cov(log_ratio: Array, advantages: Array, selection: Array, *, clip_low: float,
             clip_high: float) -> Surrogate:
    """Clip-Cov: the clipped surrogate with the ``selection`` tokens removed."""
    out = _ppo_clip(jnp.exp(log_ratio), advantages, clip_low, clip_high)
    return out._replace(loss=jnp.where(selection, 0.0, out.loss))


def kl_cov(log_ratio: Array, advantages: Array, selection: Array, *, coef: float) -> Surrogate:
    """KL-Cov: the unclipped ``-rho A`` plus ``coef |d|`` on the ``selection`` tokens."""
    loss = -jnp.exp(log_ratio) * advantages + jnp.where(selection, coef * jnp.abs(log_ratio), 0.0)
    none = _none_like(loss)
    return Surrogate(loss, none, none, none)


def surrogate(
    objective: str, logp: Array, log_ratio: Array, advantages: Array, mask: Array,
    selection: Array | None, *, clip_low: float, clip_high: float, dual_clip: float | None,
    gspo_clip_low: float, gspo_clip_high: float, kl_cov_coef: float,
) -> Surrogate:
    """The per-token loss of ``objective`` (all arrays ``[..., L]``; ``selection`` for Clip-Cov
    and KL-Cov)."""
    if objective == "clipped":
        return clipped(log_ratio, advantages, clip_low=clip_low, clip_high=clip_high,
                       dual_clip=dual_clip)
    if objective == "gspo":
        return gspo(logp, log_ratio, advantages, mask, clip_low=gspo_clip_low,
                    clip_high=gspo_clip_high)
    if objective == "cispo":
        return cispo(logp, log_ratio, advantages, clip_low=clip_low, clip_high=clip_high)
    if objective == "gmpo":
        return gmpo(log_ratio, advantages, mask, clip_low=clip_low, clip_high=clip_high)
    if objective == "clip_cov":
        return clip_cov(log_ratio, advantages, selection, clip_low=clip_low, clip_high=clip_high)
    if objective == "kl_cov":
        return kl_cov(log_ratio, advantages, selection, coef=kl_cov_coef)
    raise ValueError(f"unknown loss.objective {objective!r}; expected one of {OBJECTIVES}")


def covariance_selection(
    logp: Array,
    logp_old: Array,
    advantages: Array,
    mask: Array,
    *,
    objective: str,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    kl_cov_ratio: float = 2e-4,
    priority: Array | None = None,
) -> Array:
    """bool ``[..., L]``: the tokens Clip-Cov removes or KL-Cov penalises (module docstring).

    Args:
      logp: ``[..., L]`` current-policy log-probs (constants here).
      logp_old: ``[..., L]`` old log-probs (Clip-Cov skips tokens the clipped loss clips).
      advantages: ``[...]`` or ``[..., L]``.
      mask: ``[..., L]``, 1 on valid tokens.
      objective: ``"clip_cov"`` or ``"kl_cov"``.
      priority: ``[..., L]`` floats: Clip-Cov takes its band tokens in increasing priority
        (uniform random values make the choice random; required); KL-Cov breaks ties of ``C``
        by it (default: the flat token index).
    """
    if objective not in COVARIANCE_OBJECTIVES:
        raise ValueError(f"covariance_selection: objective {objective!r} selects no tokens")
    logp = sg(jnp.asarray(logp, jnp.float32))
    valid = jnp.asarray(mask) > 0
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.ndim == logp.ndim - 1:
        advantages = advantages[..., None]
    advantages = sg(jnp.broadcast_to(advantages, logp.shape))
    count = jnp.sum(valid)

    def centred(x: Array) -> Array:
        return x - jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(count, 1)

    covariance = centred(advantages) * centred(logp)  # [..., L]
    if objective == "kl_cov":
        eligible, key = valid, -covariance
        wanted = jnp.where(count > 0, jnp.maximum(jnp.floor(kl_cov_ratio * count), 1.0), 0.0)
        if priority is None:
            priority = jnp.arange(logp.size, dtype=jnp.float32).reshape(logp.shape)
    else:
        if priority is None:
            raise ValueError("clip_cov needs cov_priority (random floats, one per token) or a "
                             "precomputed cov_selection")
        log_ratio = jnp.where(valid, logp - jnp.asarray(logp_old, jnp.float32), 0.0)
        already_clipped = _ppo_clip(jnp.exp(log_ratio), advantages, clip_low, clip_high)
        already_clipped = already_clipped.clipped_low | already_clipped.clipped_high
        eligible = (valid & ~already_clipped & (covariance > clip_cov_lb)
                    & (covariance < clip_cov_ub))
        key = jnp.zeros_like(covariance)
        wanted = jnp.maximum(jnp.floor(clip_cov_ratio * count), 1.0)
    # Rank eligible tokens by (key, priority); ineligible ones sort last.
    primary = jnp.where(eligible, key, jnp.inf).ravel()
    order = jnp.lexsort((jnp.asarray(priority, jnp.float32).ravel(), primary))
    rank = jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.size, dtype=jnp.int32))
    return eligible & (rank.reshape(logp.shape) < wanted)


def sequence_weights(is_weights: Array, mask: Array) -> Array:
    """Per-token weights folded into one weight per response, their geometric mean over the
    valid tokens (how verl weights GMPO's sequence loss).  ``[..., L] -> [..., 1]``"""
    return jnp.exp(_sequence_mean(jnp.log(jnp.maximum(is_weights, 1e-10)), mask))
