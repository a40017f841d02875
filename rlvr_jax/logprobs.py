"""Token log-probabilities and full-vocabulary entropies, chunked over the sequence.

For hidden states ``h[b, t]`` and the unembedding ``W`` ``[D, V]`` the logits at position t are
``z_t = h[b, t] W`` and the policy at temperature ``T`` is ``π_t = softmax(z_t / T)``. For a
target token ``y_t`` this module returns

    log π_t(y_t) = z_t[y_t] / T - logsumexp(z_t / T),
    H_t = logsumexp(z_t / T) - Σ_v π_t[v] z_t[v] / T,

the entropy of the whole next-token distribution (not the sampled-token NLL). RL scores at the
sampling temperature (``rollout.sampling.temperature``): that tempered, untruncated policy is
the distribution the rollout's tokens were drawn from, so the importance ratio and the policy
gradient are those of the sampling distribution (as in verl and TRL). The logits are
computed ``chunk_size`` positions at a time inside ``lax.map``, and a custom VJP does the same
in the backward pass: it recomputes one chunk's logits from its hidden states, forms the
logit gradient in closed form, and accumulates the gradient of ``W`` over chunks in a
``lax.scan``. Neither pass holds more than one ``[B, chunk_size, V]`` block of logits (plus
its gradient); the forward saves only ``[B, T]`` statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rlvr_jax import models, sharding

DEFAULT_CHUNK_SIZE = 256


def _chunk_logits(hidden: jax.Array, unembedding: jax.Array, temperature: float) -> jax.Array:
    logits = jnp.einsum("bcd,dv->bcv", hidden, unembedding, preferred_element_type=jnp.float32)
    return logits / temperature if temperature != 1.0 else logits  # [B, C, V]


def _forward_chunks(hidden, unembedding, targets, temperature):
    """Per chunk: log-probs, entropies and log-normalisers, each ``[N, B, C]``."""

    def one_chunk(chunk):
        hidden_chunk, target_chunk = chunk  # [B, C, D], [B, C]
        logits = _chunk_logits(hidden_chunk, unembedding, temperature)  # [B, C, V]
        log_normaliser = jax.nn.logsumexp(logits, axis=-1)  # [B, C]
        target_logits = jnp.take_along_axis(logits, target_chunk[..., None], axis=-1)[..., 0]
        probs = jnp.exp(logits - log_normaliser[..., None])
        entropy = log_normaliser - jnp.sum(probs * logits, axis=-1)
        return target_logits - log_normaliser, entropy, log_normaliser

    return jax.lax.map(one_chunk, (hidden, targets))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked(hidden, unembedding, targets, temperature):
    """hidden ``[N, B, C, D]``, targets ``[N, B, C]`` -> (log-probs, entropies) ``[N, B, C]``."""
    logprobs, entropy, _ = _forward_chunks(hidden, unembedding, targets, temperature)
    return logprobs, entropy


def _chunked_forward(hidden, unembedding, targets, temperature):
    logprobs, entropy, log_normaliser = _forward_chunks(hidden, unembedding, targets, temperature)
    return (logprobs, entropy), (hidden, unembedding, targets, entropy, log_normaliser)


def _chunked_backward(temperature, residuals, cotangents):
    """Recomputes each chunk's logits ``z`` and back-propagates through them.

    With ``π = softmax(z)``, ``∂ log π(y) / ∂z = onehot(y) - π`` and
    ``∂H / ∂z = -π ⊙ (z - logsumexp(z) + H)``, so one ``[B, C, V]`` block is live per chunk.
    """
    hidden, unembedding, targets, entropy, log_normaliser = residuals
    logprob_grad, entropy_grad = cotangents  # [N, B, C] each

    def one_chunk(unembedding_grad, chunk):
        hidden_chunk, target_chunk, h, lse, g_logprob, g_entropy = chunk
        logits = _chunk_logits(hidden_chunk, unembedding, temperature)  # [B, C, V]
        probs = jnp.exp(logits - lse[..., None])
        is_target = jnp.arange(logits.shape[-1]) == target_chunk[..., None]  # [B, C, V]
        logits_grad = jnp.where(is_target, g_logprob[..., None], 0.0) - probs * (
            g_logprob[..., None] + g_entropy[..., None] * (logits - lse[..., None] + h[..., None])
        )
        logits_grad = logits_grad / temperature  # [B, C, V] float32
        hidden_grad = jnp.einsum(
            "bcv,dv->bcd", logits_grad.astype(unembedding.dtype), unembedding,
            preferred_element_type=jnp.float32,
        ).astype(hidden.dtype)  # fmt: skip
        unembedding_grad += jnp.einsum(
            "bcd,bcv->dv", hidden_chunk, logits_grad.astype(hidden.dtype),
            preferred_element_type=jnp.float32,
        )  # fmt: skip
        return unembedding_grad, hidden_grad

    chunks = (hidden, targets, entropy, log_normaliser, logprob_grad, entropy_grad)
    zeros = jnp.zeros(unembedding.shape, jnp.float32)
    unembedding_grad, hidden_grad = jax.lax.scan(one_chunk, zeros, chunks)
    return hidden_grad, unembedding_grad.astype(unembedding.dtype), None


_chunked.defvjp(_chunked_forward, _chunked_backward)


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

    logprobs, entropy = _chunked(hidden, unembedding, targets, float(temperature))  # [N, B, C]
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
    score_from: int = 1,
) -> TokenLogprobs:
    """Scores the tokens of ``tokens`` ``[B, T]`` from position ``score_from`` on (every token
    by default, prompt and response alike) under the model at ``temperature``.

    For an RL batch ``tokens = concat([prompt [B, P] left-padded, response [B, L]], 1)`` with
    ``attention_mask`` 1 on real tokens: ``.split(P)`` gives the prompt-token log-probs
    (ProGRPO's prompt confidence) and the response-token log-probs and entropies. Positions
    follow the models' convention (count of real tokens before), so at the sampling temperature
    the scores equal the KV-cache sampler's ``sampling_logprobs`` and ``sampling_entropy`` of
    an untruncated strategy. The ``[B, T, V]`` logits are never materialised.

    With ``score_from = s > 1`` the output layer runs only on the hidden states that predict
    tokens ``s .. T - 1`` (``score_from = P`` scores just the response: an RL update needs no
    prompt scores unless an estimator reads them); positions before ``s`` are returned as 0
    and masked.
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    B, T = tokens.shape
    if not 1 <= score_from < T:
        raise ValueError(f"score_from={score_from} must be in [1, T) for tokens of length T={T}")
    mask = (
        jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
    )  # [B, T]
    hidden, _ = models.hidden_states(config, params, tokens, attention_mask=mask)  # [B, T, D]
    unembedding = models.unembedding(config, params).astype(config.dtype)  # [D, V]
    logprobs, entropy = chunked_logprobs_and_entropy(
        hidden[:, score_from - 1:-1], unembedding, tokens[:, score_from:],
        chunk_size=chunk_size, temperature=temperature,
    )  # [B, T - s] each
    valid = mask[:, score_from:] & mask[:, score_from - 1:-1]  # [B, T - s]
    shift = lambda x: jnp.pad(jnp.where(valid, x, 0.0), ((0, 0), (score_from, 0)))  # noqa: E731
    return TokenLogprobs(shift(logprobs), shift(entropy),
                         jnp.pad(valid, ((0, 0), (score_from, 0))))


def make_logprob_fn(
    config: models.ModelConfig,
    mesh: Mesh,
    rules: sharding.LogicalRules,
    params_shardings: Any,
    *,
    chunk_size: int,
) -> Callable[..., TokenLogprobs]:
    """:func:`token_logprobs` jitted on a mesh: ``(params, tokens [N, T], attention_mask [N, T],
    *, temperature) -> TokenLogprobs [N, T]``, rows sharded over the batch mesh axes. Host
    (NumPy) inputs must be whole on every process; each contributes its rows
    (``sharding.place_batch``). ``temperature`` is static (one compilation per value).

    The rollout computes with it, at the sampling temperature, the current policy's log-probs
    (the old policy of the update), the frozen reference policy's (for the KL term) and the
    prompt log-probs ProGRPO's prompt confidence needs: the same code path and the same
    distribution as the train step's log-probs.
    """
    rows = sharding.batch_sharding(mesh, rules)

    def compute(params, tokens, attention_mask, temperature):
        return token_logprobs(config, params, tokens, attention_mask, chunk_size=chunk_size,
                              temperature=temperature)

    jitted = jax.jit(compute, in_shardings=(params_shardings, rows, rows), out_shardings=rows,
                     static_argnums=3)

    def run(params: Any, tokens: jax.Array, attention_mask: jax.Array, *,
            temperature: float) -> TokenLogprobs:
        if not isinstance(tokens, jax.Array):
            placed = sharding.place_batch({"t": tokens, "m": attention_mask}, mesh, rules)
            tokens, attention_mask = placed["t"], placed["m"]
        with sharding.activate(mesh, rules):
            return jitted(params, tokens, attention_mask, float(temperature))

    def lower(params: Any, tokens: Any, attention_mask: Any, *, temperature: float) -> Any:
        """The lowering for abstract inputs (``jax.ShapeDtypeStruct``): ``compile_check``."""
        with sharding.activate(mesh, rules):
            return jitted.lower(params, tokens, attention_mask, float(temperature))

    run.lower = lower
    return run
