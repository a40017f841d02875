"""Policy-gradient loss: the objective, KL to a reference, entropy bonus, aggregation.

Per response token, with ratio ``rho = exp(logp - logp_old)`` and advantage ``A``, the default
objective (``objective="clipped"``) is::

    L_t = -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)
    dual clip (c > 1, only where A < 0):   L_t = min(L_t, -c A)
    L_t = w_t L_t + kl_coef * KL_t(logp, logp_ref) - entropy_coef * H_t

``w_t`` are the rollout-correction weights (``is_weights``, 1 when absent;
:mod:`rlvr_jax.rollout_correction`). The other objectives (GSPO, CISPO, GMPO, Clip-Cov, KL-Cov)
replace the first line and are defined in :mod:`rlvr_jax.policy_losses`; everything else here
(weights, KL and entropy terms, aggregation modes, global normalisers, metrics) is the same for
all of them.

KL estimators (``kind``), with ``d = logp_ref - logp`` on tokens sampled from the policy:
``k1 = -d``, ``k2 = d^2 / 2``, ``k3 = exp(d) - d - 1`` (non-negative, 0 iff equal).

Aggregation modes are named by formula. ``m`` is the response mask, ``i`` a sequence and ``t``
a token; sums and counts run over the **global** batch (see :func:`loss_normalizer`):

======================== ============================== ========================================
mode                     formula                        verl | TRL | Tunix
======================== ============================== ========================================
``token_mean``           sum_it m L / sum_it m          token-mean | dapo (bnpo*) | token-mean
``seq_mean_token_mean``  mean_i (sum_t m L / sum_t m)   seq-mean-token-mean | grpo |
                                                        sequence-mean-token-mean
``seq_mean_token_sum``   mean_i sum_t m L               seq-mean-token-sum | (none) |
                                                        seq-mean-token-sum
``seq_sum_over_max_len`` sum_it m L / (N_seq L_max)     seq-mean-token-sum-norm** | dr_grpo |
                                                        sequence-mean-token-scale***
======================== ============================== ========================================

(*TRL's ``bnpo`` normalises by the local batch's tokens, which equals ``token_mean`` only
without gradient accumulation.) The two ``seq_mean`` modes count sequences with at least one
valid token; ``seq_sum_over_max_len`` is a constant normaliser and counts every sequence, with
``L_max`` = ``max_len`` (default: the padded response length ``L``).

(**verl 0.9.1's ``agg_loss`` divides the token sum by the number of non-empty sequences (or
the global batch size it is given) and by the horizon, ``loss_scale_factor`` or else the
padded response length: this mode, except that a sequence without valid tokens is not counted.
verl releases before 0.9 divide by the horizon only, omitting ``N_seq``.
***Tunix counts non-empty sequences only, like verl 0.9.1.)

**Micro-batching.** Compute ``normalizer = loss_normalizer(full_mask, mode, max_len)`` once over
the global batch and pass it to :func:`policy_loss` on each micro-batch: the micro-batch losses,
their gradients and the additive metrics then sum exactly to the full-batch values. Additive
metrics are token sums divided by the global token count ``metrics_normalizer``;
``ratio_max``/``ratio_min`` combine by max/min. Clip-Cov and KL-Cov also need their token
selection made once over the global batch (``cov_selection``, from
:func:`rlvr_jax.policy_losses.covariance_selection`), as ``train_step`` does.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from rlvr_jax import policy_losses
from rlvr_jax.policy_losses import COVARIANCE_OBJECTIVES, Objective

Array = jax.Array
KLKind = Literal["k1", "k2", "k3"]
Aggregation = Literal[
    "token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_sum_over_max_len"
]

AGGREGATIONS: tuple[str, ...] = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_sum_over_max_len",
)
KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")
LOSS_INPUTS: tuple[str, ...] = ("logp_ref", "entropy", "normalizer", "metrics_normalizer",
                                "is_weights", "cov_selection", "cov_priority")
"""Keyword arguments of :func:`policy_loss` that are arrays; the others are its settings (the
``loss`` config section)."""


def kl_penalty(logp: Array, logp_ref: Array, kind: KLKind = "k3") -> Array:
    """Per-token estimate of ``KL(pi || pi_ref)`` on tokens sampled from ``pi``.

    With ``d = logp_ref - logp``: ``k1 = -d``, ``k2 = d^2 / 2``, ``k3 = exp(d) - d - 1``.
    ``k3`` is unbiased and non-negative; it is 0 exactly where the log-probs are equal.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")
    delta = logp_ref - logp
    if kind == "k1":
        return -delta
    if kind == "k2":
        return 0.5 * delta**2
    return jnp.expm1(delta) - delta


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"unknown loss aggregation {aggregation!r}; expected one of {AGGREGATIONS}"
        )


def check_settings(
    *, objective: str, clip_low: float, clip_high: float, dual_clip: float | None,
    gspo_clip_low: float, gspo_clip_high: float, clip_cov_ratio: float, clip_cov_lb: float,
    clip_cov_ub: float, kl_cov_ratio: float, kl_cov_coef: float, kl_coef: float, kl_kind: str,
    entropy_coef: float, aggregation: str, max_len: int | None,
) -> None:
    """Raises ``ValueError`` naming the setting of :func:`policy_loss` that is out of range."""
    del entropy_coef  # any value is valid (negative: an entropy penalty)
    _check_aggregation(aggregation)
    if not kl_coef >= 0.0:  # a negative weight would reward moving away from the reference
        raise ValueError(f"loss.kl_coef must be >= 0, got {kl_coef}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"loss.max_len must be >= 1 (or None: the response length), got {max_len}")
    if kl_kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kl_kind!r}; expected one of {KL_KINDS}")
    for name, value in (("clip_low", clip_low), ("clip_high", clip_high)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"loss.{name} must be in [0, 1), got {value}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"loss.dual_clip must be > 1, got {dual_clip}")
    policy_losses.check_objective_settings(
        objective=objective, dual_clip=dual_clip, gspo_clip_low=gspo_clip_low,
        gspo_clip_high=gspo_clip_high, clip_cov_ratio=clip_cov_ratio, clip_cov_lb=clip_cov_lb,
        clip_cov_ub=clip_cov_ub, kl_cov_ratio=kl_cov_ratio, kl_cov_coef=kl_cov_coef)


def loss_normalizer(mask: Array, aggregation: Aggregation, max_len: int | None = None) -> Array:
    """The global denominator of ``aggregation`` for a batch with response ``mask [..., L]``.

    * ``token_mean``: number of valid tokens.
    * ``seq_mean_token_mean``, ``seq_mean_token_sum``: number of sequences with a valid token.
    * ``seq_sum_over_max_len``: number of sequences times ``max_len`` (default: ``L``).
    """
    _check_aggregation(aggregation)
    mask = jnp.asarray(mask).astype(jnp.float32)
    if aggregation == "token_mean":
        count = jnp.sum(mask)
    elif aggregation == "seq_sum_over_max_len":
        count = jnp.asarray(mask[..., 0].size * (max_len or mask.shape[-1]), jnp.float32)
    else:
        count = jnp.sum(jnp.any(mask > 0, axis=-1))
    return jnp.maximum(count, 1.0)


def _aggregate(token_loss: Array, mask: Array, aggregation: str, normalizer: Array) -> Array:
    """Sums ``token_loss [..., L]`` under ``aggregation`` and divides by ``normalizer``."""
    masked = jnp.where(mask > 0, token_loss, 0.0)
    if aggregation == "seq_mean_token_mean":
        per_sequence = jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
        return jnp.sum(per_sequence) / normalizer
    return jnp.sum(masked) / normalizer



def _check_shapes(logp: Array, logp_old: Array, advantages: Array, mask: Array,
                  **per_token: Array | None) -> None:
    for name, value in (("logp_old", logp_old), ("mask", mask), *per_token.items()):
        if value is not None and jnp.shape(value) != logp.shape:
            raise ValueError(
                f"policy_loss: {name} has shape {jnp.shape(value)}, but logp has {logp.shape}; "
                "every per-token input is [..., L] like logp (and mask)"
            )
    if jnp.shape(advantages) not in (logp.shape[:-1], logp.shape):
        raise ValueError(
            f"policy_loss: advantages must have shape {logp.shape[:-1]} (per sequence) or "
            f"{logp.shape} (per token), got {jnp.shape(advantages)}"
        )


def policy_loss(
    logp: Array,
    logp_old: Array,
    advantages: Array,
    mask: Array,
    *,
    objective: Objective = "clipped",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    gspo_clip_low: float = 3e-4,
    gspo_clip_high: float = 4e-4,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    kl_cov_ratio: float = 2e-4,
    kl_cov_coef: float = 0.1,
    logp_ref: Array | None = None,
    kl_coef: float = 0.0,
    kl_kind: KLKind = "k3",
    entropy: Array | None = None,
    entropy_coef: float = 0.0,
    aggregation: Aggregation = "token_mean",
    max_len: int | None = None,
    normalizer: Array | None = None,
    metrics_normalizer: Array | None = None,
    is_weights: Array | None = None,
    cov_selection: Array | None = None,
    cov_priority: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Policy-gradient loss over response tokens and its diagnostics.

    Args:
      logp: ``[..., L]`` log-probs of the sampled tokens under the policy being trained.
      logp_old: ``[..., L]`` log-probs under the rollout (old) policy; a constant.
      advantages: ``[...]`` per sequence (broadcast over tokens) or ``[..., L]`` per token.
      mask: ``[..., L]``, 1 on valid response tokens.
      objective: one of :data:`rlvr_jax.policy_losses.OBJECTIVES` (its module docstring):
        ``clipped`` (this module's formula), ``gspo``, ``cispo``, ``gmpo``, ``clip_cov``,
        ``kl_cov``.
      clip_low, clip_high: the ratio is clipped to ``[1 - clip_low, 1 + clip_high]``
        (``clip_high > clip_low`` is DAPO's clip-higher; DAPO uses 0.2 / 0.28); CISPO and
        Clip-Cov clip the same way, GMPO clips the log-ratio to ``[-clip_low, clip_high]``.
      dual_clip: ``c > 1`` caps the loss of negative-advantage tokens at ``-c A``; None: off.
        Objective ``clipped`` only.
      gspo_clip_low, gspo_clip_high: GSPO's clip range of the sequence ratio.
      clip_cov_ratio, clip_cov_lb, clip_cov_ub: Clip-Cov's fraction of tokens and band of ``C``.
      kl_cov_ratio, kl_cov_coef: KL-Cov's fraction of tokens and the weight of ``|d|``.
      logp_ref: ``[..., L]`` reference-policy log-probs; required when ``kl_coef > 0``.
      kl_coef, kl_kind: weight and estimator (:func:`kl_penalty`) of the per-token KL term.
      entropy: ``[..., L]`` full-vocabulary policy entropy; required when ``entropy_coef > 0``.
      entropy_coef: weight of the entropy bonus ``-entropy_coef * H_t``.
      aggregation: one of :data:`AGGREGATIONS` (see the module docstring).
      max_len: ``L_max`` of ``seq_sum_over_max_len``; default the padded length ``L``.
      normalizer: the global denominator from :func:`loss_normalizer`; default: this batch's.
      metrics_normalizer: the global valid-token count for the metrics; default: this batch's.
      is_weights: ``[..., L]`` rollout-correction weights ``w_t`` (constants) multiplying the
        objective's loss (GMPO: their geometric mean per response); None: 1.
      cov_selection: bool ``[..., L]``, Clip-Cov's / KL-Cov's tokens chosen over the global
        batch (:func:`rlvr_jax.policy_losses.covariance_selection`); default: chosen on this
        batch from ``logp`` and ``cov_priority``.
      cov_priority: ``[..., L]`` random floats ordering Clip-Cov's choice (and KL-Cov's ties)
        when ``cov_selection`` is not given; Clip-Cov needs one of the two.

    Returns:
      ``(loss, metrics)``: the scalar loss and a dict of scalars: ``pg_loss`` (the weighted
      objective alone), ``kl_ref``, ``entropy``, ``clip_frac_low`` / ``clip_frac_high`` (tokens
      where the objective's lower / upper clip binds), ``dual_clip_frac``, ``approx_kl`` (``k3``
      estimate of ``KL(old || new)``), ``ratio_mean``, ``ratio_max``, ``ratio_min`` of the token
      ratio (``-inf``/``+inf``, the identities of max/min, when no token is valid), and for
      Clip-Cov / KL-Cov ``cov_selected_frac`` (fraction of tokens selected).
    """
    check_settings(objective=objective, clip_low=clip_low, clip_high=clip_high,
                   dual_clip=dual_clip, gspo_clip_low=gspo_clip_low, gspo_clip_high=gspo_clip_high,
                   clip_cov_ratio=clip_cov_ratio, clip_cov_lb=clip_cov_lb, clip_cov_ub=clip_cov_ub,
                   kl_cov_ratio=kl_cov_ratio, kl_cov_coef=kl_cov_coef, kl_coef=kl_coef,
                   kl_kind=kl_kind, entropy_coef=entropy_coef, aggregation=aggregation,
                   max_len=max_len)
    logp = jnp.asarray(logp)
    _check_shapes(logp, logp_old, advantages, mask, is_weights=is_weights,
                  cov_selection=cov_selection, cov_priority=cov_priority)
    if kl_coef and logp_ref is None:
        raise ValueError("policy_loss: kl_coef > 0 needs logp_ref")
    if entropy_coef and entropy is None:
        raise ValueError("policy_loss: entropy_coef > 0 needs entropy")

    mask = jnp.asarray(mask).astype(jnp.float32)
    valid = mask > 0
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.ndim == logp.ndim - 1:
        advantages = advantages[..., None]
    advantages = jax.lax.stop_gradient(jnp.broadcast_to(advantages, logp.shape))
    logp = jnp.where(valid, logp.astype(jnp.float32), 0.0)  # padding never overflows exp
    logp_old = jax.lax.stop_gradient(jnp.where(valid, jnp.asarray(logp_old, jnp.float32), 0.0))
    log_ratio = logp - logp_old
    ratio = jnp.exp(log_ratio)
    if objective in COVARIANCE_OBJECTIVES and cov_selection is None:
        cov_selection = policy_losses.covariance_selection(
            logp, logp_old, advantages, mask, objective=objective, clip_low=clip_low,
            clip_high=clip_high, clip_cov_ratio=clip_cov_ratio, clip_cov_lb=clip_cov_lb,
            clip_cov_ub=clip_cov_ub, kl_cov_ratio=kl_cov_ratio, priority=cov_priority)
    surrogate = policy_losses.surrogate(
        objective, logp, log_ratio, advantages, mask, cov_selection, clip_low=clip_low,
        clip_high=clip_high, dual_clip=dual_clip, gspo_clip_low=gspo_clip_low,
        gspo_clip_high=gspo_clip_high, kl_cov_coef=kl_cov_coef)
    pg = surrogate.loss
    if is_weights is not None:
        weights = jax.lax.stop_gradient(jnp.asarray(is_weights, jnp.float32))
        if objective == "gmpo":
            weights = policy_losses.sequence_weights(weights, mask)
        pg = pg * weights
    token_loss = pg

    if normalizer is None:
        normalizer = loss_normalizer(mask, aggregation, max_len)
    if metrics_normalizer is None:
        metrics_normalizer = loss_normalizer(mask, "token_mean")

    def token_metric(x: Array) -> Array:
        return jnp.sum(jnp.where(valid, x, 0.0)) / metrics_normalizer

    kl_ref = jnp.zeros_like(logp)
    if logp_ref is not None:
        logp_ref = jax.lax.stop_gradient(jnp.asarray(logp_ref, jnp.float32))
        kl_ref = kl_penalty(logp, logp_ref, kl_kind)
        token_loss = token_loss + kl_coef * kl_ref
    if entropy is not None:
        entropy = jnp.asarray(entropy, jnp.float32)
        token_loss = token_loss - entropy_coef * entropy

    loss = _aggregate(token_loss, mask, aggregation, normalizer)
    stop = jax.lax.stop_gradient
    metrics = {
        "pg_loss": stop(_aggregate(pg, mask, aggregation, normalizer)),
        "kl_ref": stop(token_metric(kl_ref)),
        "entropy": stop(token_metric(entropy if entropy is not None else jnp.zeros_like(logp))),
        "clip_frac_low": stop(token_metric(surrogate.clipped_low)),
        "clip_frac_high": stop(token_metric(surrogate.clipped_high)),
        "dual_clip_frac": stop(token_metric(surrogate.dual_clipped)),
        "approx_kl": stop(token_metric(jnp.expm1(log_ratio) - log_ratio)),
        "ratio_mean": stop(token_metric(ratio)),
        "ratio_max": stop(jnp.max(jnp.where(valid, ratio, -jnp.inf), initial=-jnp.inf)),
        "ratio_min": stop(jnp.min(jnp.where(valid, ratio, jnp.inf), initial=jnp.inf)),
    }
    if objective in COVARIANCE_OBJECTIVES:
        metrics["cov_selected_frac"] = stop(token_metric(cov_selection))
    return loss, metrics
