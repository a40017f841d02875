"""Sampling strategies and the pure maths of drawing one token from logits.

A strategy transforms the policy's next-token distribution ``p = softmax(z)`` (temperature 1,
untruncated) into the distribution the sampler actually draws from:

1. temperature: ``q ∝ softmax(z / T)``; ``T = 0`` is greedy (the ``T → 0`` limit, a point
   mass on ``argmax z``);
2. top-k: keep the ``k`` most probable tokens (``k = 0`` or ``-1``: keep all);
3. top-p (nucleus): on the top-k distribution renormalised, keep the smallest set of most
   probable tokens whose mass reaches ``top_p`` (``top_p = 1``: keep all);
4. min-p: keep tokens with ``q_i >= min_p · max_j q_j`` (``min_p = 0``: keep all);

and renormalises ``q`` over the kept set ``K``, the intersection of the three rules (the order
of Hugging Face's logits warpers). Each rule keeps a prefix of the tokens sorted by
probability, and it is applied as a logit threshold, so tokens tied with the last kept token
are kept too. ``truncated_mass = Σ_{i ∉ K} softmax(z / T)_i`` is the mass the truncation cut
(zero for greedy, whose limiting distribution has all its mass on the argmax).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingStrategy:
    """How to draw a token; frozen and hashable, so it can be a static argument of ``jax.jit``.

    Attributes:
      temperature: ``T >= 0``; ``0`` means greedy decoding (argmax, the other fields unused).
      top_k: keep the ``k`` most probable tokens; ``0`` or ``-1`` means no top-k truncation.
      top_p: nucleus mass in ``(0, 1]``; ``1`` means no top-p truncation.
      min_p: relative probability floor in ``[0, 1]``; ``0`` means no min-p truncation.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k must be an int >= -1 (0 or -1: no top-k), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def truncates(self) -> bool:
        """Whether any of top-k, top-p, min-p can cut tokens."""
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


def greedy() -> SamplingStrategy:
    """Argmax decoding."""
    return SamplingStrategy(temperature=0.0)


def temperature(t: float) -> SamplingStrategy:
    """Ancestral sampling from ``softmax(z / t)`` with no truncation."""
    return SamplingStrategy(temperature=t)


def top_k(k: int, t: float = 1.0) -> SamplingStrategy:
    """Sampling from the ``k`` most probable tokens at temperature ``t``."""
    return SamplingStrategy(temperature=t, top_k=k)


def top_p(p: float, t: float = 1.0) -> SamplingStrategy:
    """Nucleus sampling with mass ``p`` at temperature ``t``."""
    return SamplingStrategy(temperature=t, top_p=p)


def min_p(p: float, t: float = 1.0) -> SamplingStrategy:
    """Min-p sampling: keep tokens at least ``p`` times as probable as the mode."""
    return SamplingStrategy(temperature=t, min_p=p)


class TokenSample(NamedTuple):
    """One sampled token per row, with the statistics RL needs (all shaped ``logits[..., 0]``).

    Attributes:
      token: the sampled token id (int32).
      sampling_logprob: ``log q(token)`` under the actual (tempered, truncated, renormalised)
        sampling distribution; ``0`` for greedy.
      policy_logprob: ``log softmax(z)(token)``, the untruncated policy at temperature 1, the
        quantity the trainer scores.
      sampling_entropy: ``H(q) = -Σ_i q_i log q_i`` of the actual sampling distribution.
      truncated_mass: ``Σ_{i ∉ K} softmax(z / T)_i``, the mass cut by top-k / top-p / min-p.
    """

    token: jax.Array
    sampling_logprob: jax.Array
    policy_logprob: jax.Array
    sampling_entropy: jax.Array
    truncated_mass: jax.Array


def _take(values: jax.Array, index: jax.Array) -> jax.Array:
    """``values[..., index]`` for an index shaped ``values[..., 0]``."""
    return jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0]


def _truncation_threshold(scaled: jax.Array, strategy: SamplingStrategy) -> jax.Array:
    """The smallest tempered logit that survives top-k, top-p and min-p.  # [...]

    Top-k and top-p need the sorted logits; with top-k only the ``k`` largest are sorted.
    """
    vocab = scaled.shape[-1]
    threshold = jnp.full(scaled.shape[:-1], -jnp.inf, scaled.dtype)  # [...]
    k = strategy.top_k if 0 < strategy.top_k < vocab else 0
    if k or strategy.top_p < 1.0:
        # [..., k] or [..., V], descending
        head = jax.lax.top_k(scaled, k)[0] if k else -jnp.sort(-scaled, axis=-1)
        threshold = jnp.maximum(threshold, head[..., -1])
        if strategy.top_p < 1.0:
            probs = jax.nn.softmax(head, axis=-1)  # renormalised over the top-k head
            mass_before = jnp.cumsum(probs, axis=-1) - probs  # [..., k]
            kept = jnp.sum(mass_before < strategy.top_p, axis=-1)  # >= 1 since top_p > 0
            threshold = jnp.maximum(threshold, _take(head, kept - 1))
    if strategy.min_p > 0.0:
        # q_i >= min_p · q_max  ⇔  z_i / T >= max_j z_j / T + log(min_p)
        floor = jnp.max(scaled, axis=-1) + jnp.log(strategy.min_p)
        threshold = jnp.maximum(threshold, floor)
    return threshold


def sample_from_logits(
    key: jax.Array, logits: jax.Array, strategy: SamplingStrategy
) -> TokenSample:
    """Draws one token per row of ``logits`` ``[..., V]`` under ``strategy``.

    All rows share ``key`` (use ``jax.vmap`` for per-row keys). The maths is in float32
    whatever the logits' dtype. See the module docstring for the definition of each field.
    """
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be [..., V] with V >= 1, got shape {logits.shape}")
    logits = logits.astype(jnp.float32)
    policy_logprobs = jax.nn.log_softmax(logits, axis=-1)  # [..., V]
    batch_shape = logits.shape[:-1]
    if strategy.is_greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        zeros = jnp.zeros(batch_shape, jnp.float32)
        return TokenSample(token, zeros, _take(policy_logprobs, token), zeros, zeros)

    scaled = logits / strategy.temperature  # [..., V]
    if strategy.truncates:
        kept = scaled >= _truncation_threshold(scaled, strategy)[..., None]  # [..., V]
        sampling_logits = jnp.where(kept, scaled, -jnp.inf)
        tempered_logprobs = jax.nn.log_softmax(scaled, axis=-1)
        truncated_mass = jnp.sum(jnp.where(kept, 0.0, jnp.exp(tempered_logprobs)), axis=-1)
    else:
        sampling_logits = scaled
        truncated_mass = jnp.zeros(batch_shape, jnp.float32)
    sampling_logprobs = jax.nn.log_softmax(sampling_logits, axis=-1)  # -inf off the kept set
    sampling_probs = jnp.exp(sampling_logprobs)
    entropy = -jnp.sum(
        jnp.where(sampling_probs > 0.0, sampling_probs * sampling_logprobs, 0.0), axis=-1
    )
    token = jax.random.categorical(key, sampling_logits, axis=-1).astype(jnp.int32)
    return TokenSample(
        token=token,
        sampling_logprob=_take(sampling_logprobs, token),
        policy_logprob=_take(policy_logprobs, token),
        sampling_entropy=entropy,
        truncated_mass=truncated_mass,
    )
