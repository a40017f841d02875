"""Advantage estimators: pure functions from group rewards (and rollout log-prob statistics).

Every estimator here follows ``shared/docs/estimators.md``. Rewards have shape ``[B, G]``:
``B`` prompts, each with a group of ``G`` sampled responses. Token statistics have shape
``[B, G, L]`` with a response mask of the same shape; prompt statistics have shape ``[B, P]``.

Conventions (each an explicit keyword argument):

* ``std_ddof``: 1 (Bessel, as verl/TRL/Tunix) or 0 (population, as EasyDeL). Default 1.
* ``eps``: added to the group std. Default ``1e-6``.
* Degenerate groups (all rewards equal) give exactly 0 for GRPO, Dr. GRPO, RLOO and AsymGRPO;
  ProGRPO and LENS define their own behaviour there (see each docstring). No branch of any
  ``jnp.where`` is ever evaluated on values that produce NaN or inf.
* Log-prob statistics come from the rollout and are constants for the gradient
  (``jax.lax.stop_gradient`` is applied inside).
* Computation runs in float32 (at least); the result has the rewards' floating dtype
  (bfloat16 in, bfloat16 out) or float32 for integer/bool rewards.

``get(name)`` returns an estimator by its config name, and ``compute(name, rewards, stats,
**options)`` calls it with only the statistics it needs from a dict of rollout statistics
(``logp``, ``response_mask``, ``prompt_logp``, ``prompt_mask``, ``entropy``). The registry also
holds the exploration literature's baselines of :mod:`rlvr_jax.exploration_advantages`
(``grpo_passk``, ``psr``, ``nsr``, ``w_reinforce``, ``entropy_advantage``); the input checks and
group statistics every estimator shares are in :mod:`rlvr_jax.group_statistics`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp

from rlvr_jax import exploration_advantages as exploration
from rlvr_jax.group_statistics import (
    all_equal,
    as_f32,
    check_binary,
    check_prompt_stats,
    check_rewards,
    check_token_stats,
    group_normalise,
    masked_mean,
    out_dtype,
)

Array = jax.Array
Confidence = Literal["low_tokens", "all_tokens", "low_tokens_sum"]
AllWrongWeighting = Literal["loss", "per_response"]
ALL_WRONG_WEIGHTINGS: tuple[str, ...] = ("loss", "per_response")


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------


def grpo(rewards: Array, *, std_ddof: int = 1, eps: float = 1e-6) -> Array:
    """GRPO (DeepSeekMath): ``A_i = (r_i - mean(r)) / (std(r) + eps)`` per group.

    Args:
      rewards: ``[B, G]`` rewards (binary or float).
      std_ddof: 1 for the Bessel-corrected std (verl, TRL, Tunix), 0 for the population std.
        With binary rewards and ``std_ddof=0, eps=0``, ``A = +sqrt((1-p)/p)`` for correct and
        ``-sqrt(p/(1-p))`` for wrong responses, ``p`` the group accuracy.
      eps: added to the std.

    Returns:
      ``[B, G]`` advantages; exactly 0 on groups whose rewards are all equal.
    """
    check_rewards(rewards, "grpo")
    r = as_f32(rewards)
    return group_normalise(r, std_ddof, eps).astype(out_dtype(rewards))


def dr_grpo(rewards: Array) -> Array:
    """Dr. GRPO: ``A_i = r_i - mean(r)`` (no std division). ``[B, G] -> [B, G]``.

    Pair it with the constant-normaliser loss aggregation ``seq_sum_over_max_len``.
    """
    check_rewards(rewards, "dr_grpo")
    r = as_f32(rewards)
    centred = jnp.where(all_equal(r)[:, None], 0.0, r - jnp.mean(r, axis=-1, keepdims=True))
    return centred.astype(out_dtype(rewards))


def rloo(rewards: Array) -> Array:
    """RLOO: ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean(r))``.

    Requires ``G >= 2``. ``[B, G] -> [B, G]``.
    """
    check_rewards(rewards, "rloo")
    G = jnp.shape(rewards)[1]
    if G < 2:
        raise ValueError(f"rloo needs at least 2 responses per group (leave-one-out), got G={G}")
    r = as_f32(rewards)
    centred = jnp.where(all_equal(r)[:, None], 0.0, r - jnp.mean(r, axis=-1, keepdims=True))
    return (centred * (G / (G - 1))).astype(out_dtype(rewards))


def reinforce_pp_baseline(
    rewards: Array, *, response_mask: Array, std_ddof: int = 1, eps: float = 1e-6
) -> Array:
    """REINFORCE++-baseline: group-centred reward, whitened over the batch's valid tokens.

    ``a_i = r_i - mean(r)`` per group, broadcast to every token of response ``i``, then
    ``A = (a - mu) / (sigma + eps)`` where ``mu`` and ``sigma`` are the masked mean and std
    (with ``std_ddof``) over all valid tokens of the whole ``[B, G, L]`` batch. verl whitens with
    ``rsqrt(var + 1e-8)``; here ``eps`` is added to the std like every other estimator.

    Args:
      rewards: ``[B, G]``.
      response_mask: ``[B, G, L]``, 1 on valid response tokens.

    Returns:
      ``[B, G, L]`` advantages, 0 on padding.
    """
    check_rewards(rewards, "reinforce_pp_baseline")
    B, G = jnp.shape(rewards)
    if jnp.ndim(response_mask) != 3 or jnp.shape(response_mask)[:2] != (B, G):
        raise ValueError(
            f"reinforce_pp_baseline: response_mask must have shape [B, G, L] = [{B}, {G}, L], "
            f"got {jnp.shape(response_mask)}"
        )
    r = as_f32(rewards)
    mask = jnp.asarray(response_mask).astype(bool)  # [B, G, L]
    centred = jnp.where(all_equal(r)[:, None], 0.0, r - jnp.mean(r, axis=-1, keepdims=True))
    tokens = jnp.broadcast_to(centred[:, :, None], mask.shape)  # [B, G, L]
    count = jnp.sum(mask)
    mu = jnp.sum(jnp.where(mask, tokens, 0.0)) / jnp.maximum(count, 1)
    deviation = jnp.where(mask, tokens - mu, 0.0)
    variance = jnp.sum(deviation**2) / jnp.maximum(count - std_ddof, 1)
    std = jnp.where(variance > 0, jnp.sqrt(jnp.where(variance > 0, variance, 1.0)), 0.0)
    whitened = deviation / (std + eps)
    return jnp.where(mask, whitened, 0.0).astype(out_dtype(rewards))


# ----------------------------------------------------------------------------------------------
# AsymGRPO
# ----------------------------------------------------------------------------------------------


def asym_grpo(rewards: Array, *, beta_pos: float = 0.9, beta_neg: float = 0.4) -> Array:
    """AsymGRPO (Gu et al., 2026): decoupled modulation of positive and negative responses.

    With group accuracy ``p = k / G``::

        A_i = ((1 - p) / p) ** beta_pos        if r_i = 1
        A_i = -(p / (1 - p)) ** beta_neg       if r_i = 0

    ``beta_pos = beta_neg = 0.5`` equals GRPO with ``std_ddof=0, eps=0``; ``beta = 0`` gives
    +-1 on mixed groups. All-correct and all-wrong groups give 0 for every beta (the formula's
    value for beta > 0; for beta = 0 the project chooses 0 too, as a group without contrast
    carries no signal).

    Binary rewards only: outside ``jit`` a non-binary value raises ``ValueError``; inside
    ``jit`` values cannot be checked, and a response counts as correct when ``r_i > 0.5``.

    Returns:
      ``[B, G]`` advantages.
    """
    check_rewards(rewards, "asym_grpo")
    check_binary(rewards, "asym_grpo")
    correct = as_f32(rewards) > 0.5  # [B, G]
    G = correct.shape[-1]
    p = jnp.sum(correct, axis=-1, keepdims=True) / G  # [B, 1]
    mixed = (p > 0.0) & (p < 1.0)
    p_safe = jnp.where(mixed, p, 0.5)
    log_odds = jnp.log1p(-p_safe) - jnp.log(p_safe)  # log((1 - p) / p)
    positive = jnp.exp(beta_pos * log_odds)
    negative = -jnp.exp(-beta_neg * log_odds)
    advantage = jnp.where(correct, positive, negative)
    return jnp.where(mixed, advantage, 0.0).astype(out_dtype(rewards))


# ----------------------------------------------------------------------------------------------
# LENS
# ----------------------------------------------------------------------------------------------


def lens(
    rewards: Array,
    *,
    logp: Array,
    response_mask: Array,
    alpha: float = 0.25,
    std_ddof: int = 1,
    eps: float = 1e-6,
    dimp_uses_length_norm: bool = True,
    all_wrong_weighting: AllWrongWeighting = "loss",
) -> Array:
    """LENS (Feng et al., 2025): confidence-reweighted penalties that use all-wrong groups.

    With rollout statistics (constants for the gradient):

    1. ``pi_i = exp(mean_t logp_{i,t})``, the length-normalised probability (an empty response
       has ``pi = 1``, the exponential of an empty mean).
    2. ``D_imp = ((1/G) sum_i r_i / pi_i)^-1``; ``D = max(D_imp, 2 max_j pi_j)`` on mixed groups
       and ``D = 2 max_j pi_j`` on all-wrong groups. With ``dimp_uses_length_norm=False``,
       ``D_imp`` uses the raw sequence probability ``exp(sum_t logp)`` as the paper writes it
       (computed in log space, so it never overflows).
    3. ``r~_i = r_i - (1 - r_i) (1/G) pi_i / (D - pi_i)``: wrong responses land in ``[-1/G, 0]``.
    4. Mixed groups: GRPO-normalise ``r~`` (``std_ddof``, ``eps``). All-wrong groups:
       ``A = alpha (r~ - mean(r~))``. All-correct groups: 0.

    A group is all-wrong when every ``r_i <= 0`` and all-correct when every ``r_i >= 1``.
    Binary rewards only in meaning: a shaped reward (DAPO's overlong penalty) would mix the
    length penalty into ``r~`` and the group classes, so ``config.validate`` refuses
    ``rollout.overlong_buffer`` with this estimator.

    **How much an all-wrong group pushes** (``all_wrong_weighting``). The paper weights the
    all-wrong group's objective by ``alpha`` with each response counted once (GRPO's per-sequence
    average ``(1/G) sum_i (1/|o_i|) sum_t``). The loss multiplies the advantage of token ``t``
    of response ``i`` by its aggregation weight ``w_i`` (``losses.py``): ``1/N_tok`` under
    ``token_mean``, ``1/(N_seq |o_i|)`` under ``seq_mean_token_mean``, ``1/N_seq`` under
    ``seq_mean_token_sum``, ``1/(N_seq L_max)`` under ``seq_sum_over_max_len``.

    * ``"loss"`` (default; the spec's formula): ``A_i`` above, one value per response. Each
      response then weighs ``|o_i| w_i``: counted once under ``seq_mean_token_mean`` (the
      paper's reading exactly), in proportion to its length under the other three modes, where
      long responses dominate the group's push.
    * ``"per_response"``: on all-wrong groups the advantage becomes per token,
      ``A_{i,t} = A_i * n_bar / |o_i|`` with ``n_bar = N_tok / N_seq`` the mean length of the
      non-empty responses of the whole batch passed in (mixed groups keep ``A_i``; the result
      is ``[B, G, L]``, 0 on padding). Every response of the group then weighs the same,
      ``A_i n_bar w`` in total. Under ``token_mean`` this is exact: the group's loss term
      equals ``alpha (1/N_seq) sum_i (1/|o_i|) sum_t L_t(A~_i)`` with ``A~ = r~ - mean(r~)``,
      the paper's objective, because the clipped surrogate is positively homogeneous in the
      advantage. Under ``seq_mean_token_sum`` and ``seq_sum_over_max_len`` each response is
      likewise counted once, scaled by the constant ``n_bar`` resp. ``n_bar / L_max``
      (the mean factor by which those modes also scale the mixed groups' responses). Under
      ``seq_mean_token_mean`` it would divide by ``|o_i|`` twice: ``config.validate`` refuses
      that pair (``"loss"`` is already the paper's reading there).

    Args:
      rewards: ``[B, G]`` rewards in ``[0, 1]``.
      logp: ``[B, G, L]`` rollout log-probs of the sampled tokens.
      response_mask: ``[B, G, L]``, 1 on valid tokens.
      all_wrong_weighting: ``"loss"`` or ``"per_response"`` (above).

    Returns:
      ``[B, G]`` advantages, or ``[B, G, L]`` with ``all_wrong_weighting="per_response"``.
    """
    check_rewards(rewards, "lens")
    check_token_stats(rewards, logp, response_mask, "lens")
    if all_wrong_weighting not in ALL_WRONG_WEIGHTINGS:
        raise ValueError(
            f"lens: all_wrong_weighting={all_wrong_weighting!r}; expected one of "
            f"{ALL_WRONG_WEIGHTINGS}"
        )
    r = as_f32(rewards)  # [B, G]
    G = r.shape[-1]
    mask = jnp.asarray(response_mask).astype(bool)
    logp = jax.lax.stop_gradient(as_f32(logp))
    mean_logp = masked_mean(logp, mask)  # [B, G]
    pi = jnp.exp(mean_logp)  # [B, G]

    all_wrong = jnp.all(r <= 0.0, axis=-1, keepdims=True)  # [B, 1]
    all_correct = jnp.all(r >= 1.0, axis=-1, keepdims=True)
    mixed = ~all_wrong & ~all_correct

    log_prob_for_dimp = (
        mean_logp if dimp_uses_length_norm else jnp.sum(jnp.where(mask, logp, 0.0), axis=-1)
    )
    # log((1/G) sum_i r_i exp(-log_prob_i)) on mixed groups.
    weights = jnp.where(mixed, jnp.maximum(r, 0.0), 1.0)  # finite on every branch
    log_inverse_dimp = jax.nn.logsumexp(
        -log_prob_for_dimp, b=weights, axis=-1, keepdims=True
    ) - math.log(G)
    d_imp = jnp.exp(-jnp.where(mixed, log_inverse_dimp, 0.0))  # [B, 1]; mixed => some r > 0
    d_floor = 2.0 * jnp.max(pi, axis=-1, keepdims=True)  # [B, 1]
    difficulty = jnp.where(mixed, jnp.maximum(d_imp, d_floor), d_floor)

    gap = difficulty - pi  # >= pi >= 0 because D >= 2 max pi
    ratio = jnp.where(gap > 0.0, pi / jnp.where(gap > 0.0, gap, 1.0), 0.0)
    calibrated = r - (1.0 - r) * ratio / G  # [B, G]

    mixed_advantage = group_normalise(calibrated, std_ddof, eps)
    wrong_advantage = alpha * (calibrated - jnp.mean(calibrated, axis=-1, keepdims=True))
    advantage = jnp.where(mixed, mixed_advantage, jnp.where(all_wrong, wrong_advantage, 0.0))
    if all_wrong_weighting == "loss":
        return advantage.astype(out_dtype(rewards))
    lengths = jnp.sum(mask, axis=-1).astype(jnp.float32)  # [B, G]
    mean_length = jnp.sum(lengths) / jnp.maximum(jnp.sum(lengths > 0), 1)
    per_response = jnp.where(lengths > 0, mean_length / jnp.maximum(lengths, 1.0), 0.0)
    scaled = jnp.where(all_wrong, advantage * per_response, advantage)  # [B, G]
    return jnp.where(mask, scaled[..., None], 0.0).astype(out_dtype(rewards))  # [B, G, L]


# ----------------------------------------------------------------------------------------------
# ProGRPO (Advantage Re-weighting Mechanism)
# ----------------------------------------------------------------------------------------------


def answer_confidence(
    logp: Array, response_mask: Array, *, rho_low: float = 0.2, kind: Confidence = "low_tokens"
) -> Array:
    """ProGRPO's answer confidence ``c(o | q)`` per response.  ``[..., L] -> [...]``

    With ``n`` valid tokens and ``n_low = max(1, ceil(rho_low * n))``:

    * ``"low_tokens"``: ``exp(mean of the n_low smallest logp)`` (geometric-mean probability of
      the least likely tokens; the default reading).
    * ``"all_tokens"``: ``exp(mean_t logp)`` over every valid token.
    * ``"low_tokens_sum"``: ``exp(sum_t logp / n_low)`` with the sum over every valid token.

    An empty response has confidence 1 (the exponential of an empty sum).
    """
    if kind not in ("low_tokens", "all_tokens", "low_tokens_sum"):
        raise ValueError(
            f"unknown confidence {kind!r}; expected 'low_tokens', 'all_tokens' or 'low_tokens_sum'"
        )
    if not 0.0 < rho_low <= 1.0:
        raise ValueError(f"rho_low must be in (0, 1], got {rho_low}")
    mask = jnp.asarray(response_mask).astype(bool)
    logp = jax.lax.stop_gradient(as_f32(logp))
    count = jnp.sum(mask, axis=-1)  # [...]
    n_low = jnp.maximum(1, jnp.ceil(rho_low * count).astype(jnp.int32))  # [...]
    if kind == "all_tokens":
        return jnp.exp(masked_mean(logp, mask))
    if kind == "low_tokens_sum":
        total = jnp.sum(jnp.where(mask, logp, 0.0), axis=-1)
        return jnp.where(count > 0, jnp.exp(total / n_low), 1.0)
    ascending = jnp.sort(jnp.where(mask, logp, jnp.inf), axis=-1)  # padding sorts last
    rank = jnp.arange(logp.shape[-1])
    lowest = rank < n_low[..., None]  # n_low <= count whenever count > 0
    low_mean = jnp.sum(jnp.where(lowest & (count[..., None] > 0), ascending, 0.0), axis=-1)
    return jnp.where(count > 0, jnp.exp(low_mean / n_low), 1.0)


def prompt_confidence(prompt_logp: Array, prompt_mask: Array) -> Array:
    """ProGRPO's prompt confidence ``c(q) = exp(mean_t logp_q)`` = 1 / prompt perplexity.

    ``[B, P] -> [B]``, the mean over the tokens ``prompt_mask`` selects; an empty selection has
    confidence 1. Which prompt tokens count is the rollout's choice, ``advantage.prompt_tokens``
    (``tasks.prompts.PROMPT_TOKENS``): by default the question's tokens only, each scored given
    everything before it (system prompt and role header included), so the template's fixed
    tokens, identical in every prompt, do not dilute ``c(q)``.
    """
    mask = jnp.asarray(prompt_mask).astype(bool)
    return jnp.exp(masked_mean(jax.lax.stop_gradient(as_f32(prompt_logp)), mask))


def progrpo(
    rewards: Array,
    *,
    logp: Array,
    response_mask: Array,
    prompt_logp: Array,
    prompt_mask: Array,
    alpha: float = 1.0,
    rho_low: float = 0.2,
    confidence: Confidence = "low_tokens",
    arm_on_all_correct: bool = True,
    arm_only_on_correct: bool = False,
    std_ddof: int = 1,
    eps: float = 1e-6,
) -> Array:
    """ProGRPO (Li et al., 2026): GRPO plus the Advantage Re-weighting Mechanism (ARM).

    ::

        A~_i = A_i                                if k = 0 (no correct response)
        A~_i = A_i + alpha (c(q) - c(o_i | q))    otherwise

    ``A`` is :func:`grpo` (with ``std_ddof``, ``eps``), ``c(o | q)`` is
    :func:`answer_confidence` (``confidence``, ``rho_low``) and ``c(q)`` is
    :func:`prompt_confidence` over the prompt tokens ``prompt_mask`` selects. A response is
    correct when ``r_i > 0``.

    Shaped rewards (DAPO's overlong penalty, ``rollout.overlong_buffer > 0``) are accepted:
    ``r_i = v_i + overlong_coef * R_len(|o_i|)`` with the verifier's ``v_i`` in ``{0, 1}`` and
    ``R_len`` in ``[-1, 0]``. ``A`` is GRPO on the shaped ``r`` (as DAPO's baseline), and the
    correctness test stays ``r_i > 0`` on the shaped value: a wrong response never counts as
    correct, and a correct one counts unless its penalty cancels its reward,
    ``overlong_coef * |R_len| >= 1`` (with ``overlong_coef = 1`` only a response that fills the
    whole token budget). So ``k`` counts the correct responses whose shaped reward stays
    positive.

    Args:
      rewards: ``[B, G]``.
      logp, response_mask: ``[B, G, L]`` rollout log-probs of the response tokens and mask.
      prompt_logp, prompt_mask: ``[B, P]`` rollout log-probs of the prompt tokens and mask.
      alpha: ARM strength; no value is published, 1.0 is meant to be swept. ``alpha = 0``
        gives GRPO exactly.
      arm_on_all_correct: apply ARM to all-correct groups too (where ``A = 0``), as the
        formula is written. ``False`` leaves them at 0.
      arm_only_on_correct: apply the ARM term only to correct responses.

    Returns:
      ``[B, G]`` advantages.
    """
    check_rewards(rewards, "progrpo")
    check_token_stats(rewards, logp, response_mask, "progrpo")
    check_prompt_stats(rewards, prompt_logp, prompt_mask, "progrpo")
    r = as_f32(rewards)
    base = group_normalise(r, std_ddof, eps)  # [B, G]
    c_answer = answer_confidence(logp, response_mask, rho_low=rho_low, kind=confidence)
    c_prompt = prompt_confidence(prompt_logp, prompt_mask)[:, None]  # [B, 1]
    bonus = alpha * (c_prompt - c_answer)  # [B, G]

    correct = r > 0.0
    applies = jnp.any(correct, axis=-1, keepdims=True)  # k > 0
    if not arm_on_all_correct:
        applies &= ~jnp.all(correct, axis=-1, keepdims=True)
    if arm_only_on_correct:
        applies &= correct
    return (base + jnp.where(applies, bonus, 0.0)).astype(out_dtype(rewards))


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
    """An estimator and the rollout statistics it reads.

    Attributes:
      fn: the estimator.
      inputs: names of the keyword statistics it needs, from ``logp``, ``response_mask``,
        ``prompt_logp``, ``prompt_mask``, ``entropy`` (the rollout policy's full-vocabulary
        entropies ``[B, G, L]``).
      per_token: True when it always returns ``[B, G, L]`` instead of ``[B, G]`` (``lens``
        returns ``[B, G, L]`` only with ``all_wrong_weighting="per_response"``).
      binary_rewards: True when it reads rewards as binary outcomes, so a shaped reward
        (DAPO's overlong penalty) would be misread (``config.validate`` refuses the pair).
    """

    fn: Callable[..., Array]
    inputs: tuple[str, ...] = ()
    per_token: bool = False
    binary_rewards: bool = False


ESTIMATORS: Mapping[str, EstimatorSpec] = {
    "grpo": EstimatorSpec(grpo),
    "dr_grpo": EstimatorSpec(dr_grpo),
    "rloo": EstimatorSpec(rloo),
    "reinforce_pp_baseline": EstimatorSpec(
        reinforce_pp_baseline, ("response_mask",), per_token=True
    ),
    "asym_grpo": EstimatorSpec(asym_grpo, binary_rewards=True),
    "lens": EstimatorSpec(lens, ("logp", "response_mask"), binary_rewards=True),
    "progrpo": EstimatorSpec(progrpo, ("logp", "response_mask", "prompt_logp", "prompt_mask")),
    "grpo_passk": EstimatorSpec(exploration.grpo_passk),
    "psr": EstimatorSpec(exploration.psr, binary_rewards=True),
    "nsr": EstimatorSpec(exploration.nsr, binary_rewards=True),
    "w_reinforce": EstimatorSpec(exploration.w_reinforce, binary_rewards=True),
    "entropy_advantage": EstimatorSpec(
        exploration.entropy_advantage, ("entropy", "response_mask"), per_token=True
    ),
}


OPTION_RANGES: Mapping[str, tuple[Callable[[object], bool], str]] = {
    "std_ddof": (lambda v: v in (0, 1), "0 or 1"),
    "eps": (lambda v: v >= 0.0, ">= 0 (a negative eps can make the std denominator 0: "
            "infinite advantages)"),
    "alpha": (lambda v: v >= 0.0, ">= 0 (a negative strength reverses the method)"),
    "beta_pos": (lambda v: v >= 0.0, ">= 0"),
    "beta_neg": (lambda v: v >= 0.0, ">= 0"),
    "rho_low": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "confidence": (lambda v: v in typing.get_args(Confidence), str(typing.get_args(Confidence))),
    "all_wrong_weighting": (lambda v: v in ALL_WRONG_WEIGHTINGS, str(ALL_WRONG_WEIGHTINGS)),
}
"""Option name -> (whether a value is valid, the valid range), for every estimator that takes
the option; NaN fails every comparison."""


def check_options(options: Mapping[str, object]) -> None:
    """Raises ``ValueError`` naming the ``advantage.options.<key>`` whose value is out of range."""
    for key, value in options.items():
        if key in OPTION_RANGES and not OPTION_RANGES[key][0](value):
            raise ValueError(
                f"advantage.options.{key}={value!r} must be {OPTION_RANGES[key][1]}"
            )


def spec(name: str) -> EstimatorSpec:
    """The :class:`EstimatorSpec` registered under ``name``."""
    if name not in ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {name!r}; known estimators: {', '.join(ESTIMATORS)}"
        )
    return ESTIMATORS[name]


def get(name: str) -> Callable[..., Array]:
    """The estimator function registered under the config name ``name``."""
    return spec(name).fn


def compute(
    name: str, rewards: Array, stats: Mapping[str, Array] | None = None, **options
) -> Array:
    """Runs estimator ``name`` on ``rewards``, passing only the statistics it needs.

    Args:
      name: a key of :data:`ESTIMATORS`.
      rewards: ``[B, G]``.
      stats: rollout statistics by name (may hold more than the estimator needs).
      **options: the estimator's own keyword options (``std_ddof``, ``alpha``, ...).
    """
    entry = spec(name)
    stats = dict(stats or {})
    missing = [key for key in entry.inputs if key not in stats]
    if missing:
        raise ValueError(f"estimator {name!r} needs rollout statistics {missing}")
    return entry.fn(rewards, **{key: stats[key] for key in entry.inputs}, **options)
