"""Rollout correction: truncated importance-sampling weights between the trainer's and the
sampler's log-probs of the sampled tokens.

The completions are drawn from the sampler's distribution ``mu``; with
``rollout.old_logp_source="trainer"`` the loss's old log-probs are the trainer's ``pi_old`` of the
same tokens. Where the two differ (other kernels, a lower sampling precision, a stale sampler),
the policy gradient is off-policy by ``pi_old / mu``. As verl's decoupled rollout correction and
TRL's sampler importance-sampling correction, each token's policy-gradient loss is multiplied by
(``rollout.correction``, cap ``C = rollout.correction_cap``)::

    "token":     w_{i,t} = min(exp(logp_trainer_{i,t} - logp_sampler_{i,t}), C)
    "sequence":  w_{i,t} = min(exp(sum_t (logp_trainer_{i,t} - logp_sampler_{i,t})), C)

computed in log space with the log-ratio clamped to ``[-20, 20]`` (verl's safety bound), 0 on
padding, constants for the gradient (``losses.policy_loss(is_weights=...)``). Token-level weights
are biased with low variance; the sequence weight is the unbiased product, truncated. Defaults:
off; ``C = 2`` (verl's ``rollout_is_threshold``).

With ``rollout.old_logp_source="sampler"`` the ratio ``pi / mu`` of the loss already is the
correction (verl's bypass mode applies no weights there), so weights would count the mismatch
twice: :func:`check_settings` refuses the pair.

:func:`weight_statistics` gives the figures the rollout logs: the mean applied weight over valid
tokens, the largest raw (uncapped) weight and the fraction capped (of tokens, or of non-empty
sequences at the sequence level).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LEVELS: tuple[str, ...] = ("none", "token", "sequence")
LOG_RATIO_BOUND = 20.0


def check_settings(level: str, cap: float, old_logp_source: str) -> None:
    """Raises ``ValueError`` naming the ``rollout.correction*`` setting that cannot work."""
    if level not in LEVELS:
        raise ValueError(f"rollout.correction={level!r}; expected one of {LEVELS}")
    if cap < 1.0:
        raise ValueError(
            f"rollout.correction_cap must be >= 1 (a cap below 1 would down-weight tokens the "
            f"sampler and the trainer agree on), got {cap}")
    if level != "none" and old_logp_source != "trainer":
        raise ValueError(
            f"rollout.correction={level!r} weights the loss by trainer / sampler probabilities, "
            "but with rollout.old_logp_source='sampler' the loss's ratio already divides by the "
            "sampler's probability; the mismatch would count twice. Use "
            "rollout.old_logp_source='trainer' with the correction, or no correction.")


def _raw_log_weights(trainer_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array,
                     level: str) -> jax.Array:
    """Clamped log-weights ``[N, L]`` before the cap (0 on padding)."""
    valid = jnp.asarray(mask) > 0
    log_ratio = jnp.where(valid, jnp.asarray(trainer_logp, jnp.float32)
                          - jnp.asarray(sampler_logp, jnp.float32), 0.0)  # [N, L]
    if level == "sequence":
        log_ratio = jnp.broadcast_to(log_ratio.sum(-1, keepdims=True), log_ratio.shape)
    return jnp.where(valid, jnp.clip(log_ratio, -LOG_RATIO_BOUND, LOG_RATIO_BOUND), 0.0)


def importance_weights(trainer_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array,
                       *, level: str, cap: float) -> jax.Array:
    """The truncated weights ``w [N, L]`` (float32, 0 on padding) of ``level`` ("token" or
    "sequence"); inputs are ``[N, L]`` log-probs of the response tokens and their mask. Pure
    JAX: the train step computes them from the rollout policy's log-probs."""
    if level not in LEVELS[1:]:
        raise ValueError(f"importance_weights: level {level!r}; expected 'token' or 'sequence'")
    raw = jnp.exp(_raw_log_weights(trainer_logp, sampler_logp, mask, level))
    return jnp.where(jnp.asarray(mask) > 0, jnp.minimum(raw, cap), 0.0).astype(jnp.float32)


def weight_statistics(trainer_logp: np.ndarray, sampler_logp: np.ndarray, mask: np.ndarray,
                      *, level: str, cap: float) -> dict[str, float]:
    """``correction_weight_mean`` (applied weights, over valid tokens), ``correction_weight_max``
    (largest raw weight, before the cap) and ``correction_frac_capped`` (tokens, or non-empty
    sequences, whose raw weight exceeds the cap); zeros without valid tokens."""
    valid = np.asarray(mask) > 0
    if not valid.any():
        return {"correction_weight_mean": 0.0, "correction_weight_max": 0.0,
                "correction_frac_capped": 0.0}
    raw = np.exp(np.asarray(_raw_log_weights(trainer_logp, sampler_logp, mask, level)))
    if level == "sequence":  # every valid token of a row holds the row's weight
        capped = np.max(raw, axis=-1, where=valid, initial=0.0)[valid.any(-1)] > cap
    else:
        capped = raw[valid] > cap
    return {
        "correction_weight_mean": float(np.minimum(raw, cap)[valid].mean()),
        "correction_weight_max": float(raw[valid].max()),
        "correction_frac_capped": float(capped.mean()),
    }
