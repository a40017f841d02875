"""Token log-probabilities and full-vocabulary entropies, chunked over the sequence.

For hidden states ``h[b, t]`` and the unembedding ``W`` ``[D, V]`` the policy at position t is
``π_t = softmax(z_t)`` with logits ``z_t = h[b, t] W / τ`` (``τ = 1`` is the policy the sampler
reports as ``policy_logprob``). For a target token ``y_t`` this module returns

    log π_t(y_t) = z_t[y_t] - logsumexp(z_t),        H_t = logsumexp(z_t) - Σ_v π_t[v] z_t[v],

the entropy of the whole next-token distribution (not the sampled-token NLL). The logits are
computed ``chunk_size`` positions at a time inside ``lax.map``, and each chunk is wrapped in
``jax.checkpoint``, so neither the forward nor the backward pass ever holds more than one
``[B, chunk_size, V]`` block of logits: the backward recomputes a chunk's logits from its
hidden states, and the gradient of ``W`` is accumulated across chunks by the scan.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlvr_jax import models

DEFAULT_CHUNK_SIZE = 256


def _chunk_logprobs_and_entropy(
    hidden: jax.Array,  # [B, C, D]
    unembedding: jax.Array,  # [D, V]
    targets: jax.Array,  # [B, C]
    temperature: float,
) -> tuple[jax.Array, jax.Array]:
    logits = jnp.einsum("bcd,dv->bcv", hidden, unembedding, preferred_element_type=jnp.float32)
    logits = logits / temperature if temperature != 1.0 else logits  # [B, C, V]
    log_normaliser = jax.nn.logsumexp(logits, axis=-1)  # [B, C]
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logits - log_normaliser[..., None])  # [B, C, V]
    entropy = log_normaliser - jnp.sum(probs * logits, axis=-1)  # [B, C]
    return target_logits - log_normaliser, entropy


def chunked_logprobs_and_entropy(
    hidden: jax.Array,
    unembedding: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """``(log π_t(targets[b, t]), H_t)``, both ``[B, T]`` float32, for hidden ``[B, T, D]``.

    ``targets`` ``[B, T]`` are the tokens each position predicts (already shifted). The
    sequence is padded up to a multiple of ``chunk_size`` (any ``chunk_size >= 1`` works) and
    the padding is dropped from the outputs. Differentiable in ``hidden`` and ``unembedding``.
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, T, D], got shape {hidden.shape}")
    B, T, D = hidden.shape
    if unembedding.ndim != 2 or unembedding.shape[0] != D:
        raise ValueError(f"unembedding must be [D={D}, V], got shape {unembedding.shape}")
    if targets.shape != (B, T):
        raise ValueError(f"targets shape {targets.shape} != hidden's [B, T] = {(B, T)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk_size = min(chunk_size, T)
    num_chunks = -(-T // chunk_size)
    pad = num_chunks * chunk_size - T
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))  # [B, N·C, D]
    targets = jnp.pad(targets.astype(jnp.int32), ((0, 0), (0, pad)))  # [B, N·C]
    hidden = hidden.reshape(B, num_chunks, chunk_size, D).swapaxes(0, 1)  # [N, B, C, D]
    targets = targets.reshape(B, num_chunks, chunk_size).swapaxes(0, 1)  # [N, B, C]

    chunk_fn = jax.checkpoint(_chunk_logprobs_and_entropy, static_argnums=(3,))
    logprobs, entropy = jax.lax.map(
        lambda xs: chunk_fn(xs[0], unembedding, xs[1], temperature), (hidden, targets)
    )  # [N, B, C] each
    unchunk = lambda x: x.swapaxes(0, 1).reshape(B, num_chunks * chunk_size)[:, :T]  # noqa: E731
    return unchunk(logprobs), unchunk(entropy)


class TokenLogprobs(NamedTuple):
    """Per-token scores aligned with the input tokens ``[B, T]``.

    ``logprobs[b, t] = log π(tokens[b, t] | tokens[b, <t])`` and ``entropy[b, t]`` is the
    entropy of that same next-token distribution (the one computed at position ``t - 1``).
    ``mask[b, t]`` is true where both ``t`` and ``t - 1`` are real tokens, i.e. where a
    prediction exists; elsewhere (position 0, the first real token of a left-padded row,
    padding) both values are 0.
    """

    logprobs: jax.Array  # [B, T] float32
    entropy: jax.Array  # [B, T] float32
    mask: jax.Array  # [B, T] bool

    def split(self, prompt_length: int) -> tuple[TokenLogprobs, TokenLogprobs]:
        """``(prompt part [:, :P], response part [:, P:])`` for ``tokens = [prompt, response]``."""
        prompt = TokenLogprobs(*(x[:, :prompt_length] for x in self))
        response = TokenLogprobs(*(x[:, prompt_length:] for x in self))
        return prompt, response


def token_logprobs(
    config: models.ModelConfig,
    params: Any,
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> TokenLogprobs:
    """Scores every token of ``tokens`` ``[B, T]`` under the model, prompt and response alike.

    For an RL batch ``tokens = concat([prompt [B, P] left-padded, response [B, L]], 1)`` with
    ``attention_mask`` 1 on real tokens: ``.split(P)`` gives the prompt-token log-probs
    (ProGRPO's prompt confidence) and the response-token log-probs and entropies. Positions
    follow the models' convention (count of real tokens before), so the scores equal those of
    the KV-cache sampler for the same tokens. The ``[B, T, V]`` logits are never materialised.
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    B, T = tokens.shape
    if T < 2:
        raise ValueError(f"need at least 2 tokens per row to score one, got T={T}")
    mask = (
        jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
    )  # [B, T]
    hidden, _ = models.hidden_states(config, params, tokens, attention_mask=mask)  # [B, T, D]
    unembedding = models.unembedding(config, params).astype(config.dtype)  # [D, V]
    logprobs, entropy = chunked_logprobs_and_entropy(
        hidden[:, :-1], unembedding, tokens[:, 1:], chunk_size=chunk_size, temperature=temperature
    )  # [B, T - 1] each
    valid = mask[:, 1:] & mask[:, :-1]  # [B, T - 1]
    shift = lambda x: jnp.pad(jnp.where(valid, x, 0.0), ((0, 0), (1, 0)))  # noqa: E731
    return TokenLogprobs(shift(logprobs), shift(entropy), jnp.pad(valid, ((0, 0), (1, 0))))
