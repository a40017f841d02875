"""Sampling: strategies, the pure maths of drawing one token, and KV-cache generation.

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

``generate`` runs the models' prefill + decode protocol (``rlvr_jax.models.model``) in one
compiled ``lax.while_loop`` and applies ``sample_from_logits`` row by row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import models, sharding


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
      policy_logprob: ``log softmax(z)(token)``, the untruncated policy at temperature 1 (the
        trainer scores at the sampling temperature: ``sampling_logprob`` when untruncated).
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


def _sortable_int(x: jax.Array) -> jax.Array:
    """float32 -> int32 with the same order (IEEE-754 sign-magnitude to two's complement)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _from_sortable_int(key: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(jnp.where(key < 0, key ^ 0x7FFFFFFF, key), jnp.float32)


def _nucleus_threshold(scaled: jax.Array, top_p: float) -> jax.Array:
    """The largest logit ``v`` with ``Σ_{i: s_i >= v} softmax(s)_i >= top_p``.  # [...]

    That is the smallest logit of the nucleus. Found exactly by bisection over the float32
    values in their integer order (32 masked sums over the vocabulary), which on CPU is an
    order of magnitude cheaper than sorting the vocabulary.
    """
    probs = jax.nn.softmax(scaled, axis=-1)  # [..., V]
    keys = _sortable_int(scaled)  # [..., V]

    def bisect(_, bounds):
        low, high = bounds  # invariant: mass(low) >= top_p; the answer lies in [low, high]
        middle = (low >> 1) + (high >> 1) + ((low & 1) | (high & 1))  # ceil, no overflow
        enough = jnp.sum(jnp.where(keys >= middle[..., None], probs, 0.0), -1) >= top_p
        return jnp.where(enough, middle, low), jnp.where(enough, high, middle - 1)

    bounds = (jnp.min(keys, axis=-1), jnp.max(keys, axis=-1))
    return _from_sortable_int(jax.lax.fori_loop(0, 32, bisect, bounds)[0])


def _truncation_threshold(scaled: jax.Array, strategy: SamplingStrategy) -> jax.Array:
    """The smallest tempered logit that survives top-k, top-p and min-p.  # [...]

    With top-k, top-p works on the ``k`` largest logits (from ``lax.top_k``, sorted); without
    it, on the whole vocabulary by bisection (no sort).
    """
    vocab = scaled.shape[-1]
    threshold = jnp.full(scaled.shape[:-1], -jnp.inf, scaled.dtype)  # [...]
    k = strategy.top_k if 0 < strategy.top_k < vocab else 0
    if k:
        head = jax.lax.top_k(scaled, k)[0]  # [..., k], descending
        # A reduction, not head[..., -1]: XLA:CPU turns a sliced top_k into a full sort.
        threshold = jnp.min(head, axis=-1)
        if strategy.top_p < 1.0:
            probs = jax.nn.softmax(head, axis=-1)  # renormalised over the top-k head
            mass_before = jnp.cumsum(probs, axis=-1) - probs  # [..., k]
            kept = jnp.sum(mass_before < strategy.top_p, axis=-1)  # >= 1 since top_p > 0
            threshold = jnp.maximum(threshold, _take(head, kept - 1))
    elif strategy.top_p < 1.0:
        threshold = _nucleus_threshold(scaled, strategy.top_p)
    if strategy.min_p > 0.0:
        # q_i >= min_p · q_max  ⇔  z_i / T >= max_j z_j / T + log(min_p)
        floor = jnp.max(scaled, axis=-1) + jnp.log(strategy.min_p)
        threshold = jnp.maximum(threshold, floor)
    return threshold


def _inverse_cdf_sample(key: jax.Array, probs: jax.Array) -> jax.Array:
    """Index ``i`` with ``c_{i-1} <= u · c_{V-1} < c_i`` for ``c = cumsum(probs)``, ``u ~ U[0, 1)``.

    One uniform per row instead of the ``V`` Gumbel variates of ``jax.random.categorical``
    (the bulk of a CPU decode step at ``V ≈ 50k``). Zero-probability tokens are never drawn:
    their interval is empty, and the draw is kept strictly below the total mass.
    """
    cumulative = jnp.cumsum(probs, axis=-1)  # [..., V]
    total = cumulative[..., -1:]  # [..., 1]
    uniform = jax.random.uniform(key, total.shape, jnp.float32)
    draw = jnp.minimum(uniform * total, jnp.nextafter(total, jnp.zeros_like(total)))
    return jnp.sum(cumulative <= draw, axis=-1, dtype=jnp.int32)


def sample_from_logits(
    key: jax.Array, logits: jax.Array, strategy: SamplingStrategy
) -> TokenSample:
    """Draws one token per row of ``logits`` ``[..., V]`` under ``strategy``.

    All rows share ``key`` (use ``jax.vmap`` for per-row keys); rows get independent draws.
    The maths is in float32 whatever the logits' dtype. See the module docstring for the
    definition of each field. Sampling is by inverse CDF: exact up to float32 rounding of the
    cumulative sum.
    """
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be [..., V] with V >= 1, got shape {logits.shape}")
    logits = logits.astype(jnp.float32)
    policy_normaliser = jax.nn.logsumexp(logits, axis=-1)  # [...]
    zeros = jnp.zeros(logits.shape[:-1], jnp.float32)
    if strategy.is_greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        policy_logprob = _take(logits, token) - policy_normaliser
        return TokenSample(token, zeros, policy_logprob, zeros, zeros)

    scaled = logits / strategy.temperature  # [..., V]
    if strategy.truncates:
        kept = scaled >= _truncation_threshold(scaled, strategy)[..., None]  # [..., V]
        sampling_logits = jnp.where(kept, scaled, -jnp.inf)
        tempered_normaliser = jax.nn.logsumexp(scaled, axis=-1)
        cut = jnp.where(kept, 0.0, jnp.exp(scaled - tempered_normaliser[..., None]))
        truncated_mass = jnp.sum(cut, axis=-1)
    else:
        sampling_logits, truncated_mass = scaled, zeros
    sampling_normaliser = jax.nn.logsumexp(sampling_logits, axis=-1)  # [...]
    probs = jnp.exp(sampling_logits - sampling_normaliser[..., None])  # [..., V], 0 if cut
    # H(q) = -Σ q log q = log Z - Σ q s over the kept set (s finite there, q = 0 elsewhere).
    entropy = sampling_normaliser - jnp.sum(probs * scaled, axis=-1)
    token = _inverse_cdf_sample(key, probs)
    return TokenSample(
        token=token,
        sampling_logprob=_take(scaled, token) - sampling_normaliser,
        policy_logprob=_take(logits, token) - policy_normaliser,
        sampling_entropy=entropy,
        truncated_mass=truncated_mass,
    )


class Generation(NamedTuple):
    """G completions per prompt, each ``[B, G, L]`` with ``L = max_new_tokens``.

    Attributes:
      tokens: int32 completion tokens; ``pad_id`` after a row's first EOS.
      mask: bool, true up to and including the first EOS (the tokens the row generated).
      sampling_logprobs: log-prob of each token under the distribution it was drawn from.
      policy_logprobs: log-prob of each token under the untruncated policy at temperature 1.
      sampling_entropy: entropy of the actual sampling distribution at each step.
      truncated_mass: probability mass top-k / top-p / min-p cut at each step.
      lengths: ``[B, G]`` int32, the number of generated tokens (``mask.sum(-1)``).
    The float fields are 0 where ``mask`` is false.
    """

    tokens: jax.Array
    mask: jax.Array
    sampling_logprobs: jax.Array
    policy_logprobs: jax.Array
    sampling_entropy: jax.Array
    truncated_mass: jax.Array
    lengths: jax.Array


def round_up(n: int, multiple: int) -> int:
    """The bucket of ``n``: the smallest multiple of ``multiple`` that is ``>= n``."""
    return -(-n // multiple) * multiple


def _padded_eos_ids(eos_ids: tuple[int, ...], multiple: int = 8) -> jax.Array:
    """EOS ids padded with -1 (never a token) to a bucketed length, so they never recompile."""
    if any(i < 0 for i in eos_ids):
        raise ValueError(f"eos_ids must be non-negative token ids, got {eos_ids}")
    padded = -np.ones(round_up(max(len(eos_ids), 1), multiple), np.int32)
    padded[: len(eos_ids)] = eos_ids
    return jnp.asarray(padded)


def sample_keys(key: jax.Array, prompt_ids: jax.Array, num_samples: int) -> jax.Array:
    """``fold_in(fold_in(key, prompt_id), sample_id)`` for every prompt and sample: ``[B, G]``.

    A completion's randomness depends only on ``key``, its prompt's id and its sample index,
    so runs that differ in anything else (the estimator, the batch composition) see the same
    rollouts for the same prompt ids.
    """
    per_prompt = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, prompt_ids)  # [B]
    samples = jnp.arange(num_samples)
    return jax.vmap(lambda k: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, samples))(
        per_prompt
    )  # [B, G]


def _last_logits(hidden: jax.Array, unembedding: jax.Array) -> jax.Array:
    """Float32 logits of the last position, ``[N, V]``, as ``models.forward`` computes them."""
    return jnp.einsum("nd,dv->nv", hidden[:, -1], unembedding, preferred_element_type=jnp.float32)


@functools.partial(
    jax.jit,
    static_argnames=("config", "strategy", "num_samples", "buffer_length", "unstack_layers"),
)
def _generate_bucketed(
    params: Any,
    prompt_tokens: jax.Array,  # [B, P] left-padded, P a bucket size
    prompt_mask: jax.Array,  # [B, P] bool
    key: jax.Array,
    prompt_ids: jax.Array,  # [B] int32
    max_new_tokens: jax.Array,  # [] int32, <= buffer_length
    eos_ids: jax.Array,  # [E] int32
    pad_id: jax.Array,  # [] int32
    *,
    config: models.ModelConfig,
    strategy: SamplingStrategy,
    num_samples: int,
    buffer_length: int,
    unstack_layers: bool,
) -> Generation:
    B, P = prompt_tokens.shape
    G, L = num_samples, buffer_length
    N = B * G  # decode rows, ordered b * G + g
    unembedding = models.unembedding(config, params).astype(config.dtype)  # [D, V]

    cache = models.init_cache(config, B, P + L)
    hidden, cache = models.hidden_states(
        config, params, prompt_tokens, attention_mask=prompt_mask, cache=cache
    )  # [B, P, D]
    logits = jnp.repeat(_last_logits(hidden, unembedding), G, axis=0)  # [N, V]
    cache = {
        "k": jnp.repeat(cache["k"], G, axis=1),  # [layers, N, K, P + L, Dh]
        "v": jnp.repeat(cache["v"], G, axis=1),
        "valid": jnp.repeat(cache["valid"], G, axis=0),  # [N, P + L]
        "index": cache["index"],
    }
    row_keys = sample_keys(key, prompt_ids, G).reshape(N)  # [N]
    sample_rows = jax.vmap(lambda k, z: sample_from_logits(k, z, strategy))

    def sample_step(step, logits, done, outputs):
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)  # [N]
        drawn = sample_rows(step_keys, logits)
        live = ~done  # [N]
        token = jnp.where(live, drawn.token, pad_id)
        columns = (token, live, *(jnp.where(live, x, 0.0) for x in drawn[1:]))
        outputs = tuple(buf.at[:, step].set(col) for buf, col in zip(outputs, columns, strict=True))
        done = done | jnp.any(token[:, None] == eos_ids[None, :], axis=-1)
        return drawn.token, done, outputs  # finished rows feed a real token, never pad_id

    float_buffer = jnp.zeros((N, L), jnp.float32)
    outputs = (jnp.full((N, L), pad_id, jnp.int32), jnp.zeros((N, L), bool), *[float_buffer] * 4)
    token, done, outputs = sample_step(0, logits, jnp.zeros((N,), bool), outputs)

    def keep_going(state):
        step, _, _, done, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    # Per-layer weights and cache, copied once here rather than sliced out of [L, ...] arrays
    # on every step.
    decode_params = params
    if unstack_layers:
        decode_params, cache = models.unstack_layers(params), models.unstack_cache(cache)

    def decode(state):
        step, token, cache, done, outputs = state
        hidden, cache = models.hidden_states(config, decode_params, token[:, None], cache=cache)
        token, done, outputs = sample_step(step, _last_logits(hidden, unembedding), done, outputs)
        return step + 1, token, cache, done, outputs

    state = (jnp.int32(1), token, cache, done, outputs)
    outputs = jax.lax.while_loop(keep_going, decode, state)[-1]
    tokens, mask, *floats = (x.reshape(B, G, L) for x in outputs)
    return Generation(tokens, mask, *floats, lengths=jnp.sum(mask, axis=-1, dtype=jnp.int32))


def lower_generate(
    config: models.ModelConfig,
    params: Any,
    num_prompts: int,
    prompt_len: int,
    *,
    max_new_tokens: int,
    num_samples: int,
    strategy: SamplingStrategy,
    mesh_and_rules: tuple[jax.sharding.Mesh, sharding.LogicalRules],
    eos_ids: tuple[int, ...] | None = None,
    length_bucket: int = 64,
    unstack_layers: bool = True,
) -> jax.stages.Lowered:
    """:func:`generate`'s compiled core lowered for abstract inputs, nothing allocated (the
    ahead-of-time memory check, ``rlvr_jax.compile_check``).

    ``params`` are ``jax.ShapeDtypeStruct`` carrying their shardings; the prompts are
    ``[num_prompts, prompt_len]`` with ``prompt_len`` already a multiple of the prompt bucket,
    replicated like the host arrays :func:`generate` is given.
    """
    mesh, rules = mesh_and_rules
    whole = sharding.replicated(mesh)
    shape = lambda dims, dtype: jax.ShapeDtypeStruct(dims, dtype, sharding=whole)  # noqa: E731
    eos_ids = tuple(int(i) for i in (config.eos_token_ids if eos_ids is None else eos_ids))
    eos_shape = _padded_eos_ids(eos_ids).shape  # before the mesh is current: a host array
    key = jax.eval_shape(lambda: jax.random.key(0))
    with sharding.activate(mesh, rules):
        return _generate_bucketed.lower(
            params, shape((num_prompts, prompt_len), jnp.int32),
            shape((num_prompts, prompt_len), jnp.bool_), shape((), key.dtype),
            shape((num_prompts,), jnp.int32), shape((), jnp.int32),
            shape(eos_shape, jnp.int32), shape((), jnp.int32),
            config=config, strategy=strategy, num_samples=num_samples,
            buffer_length=round_up(max_new_tokens, length_bucket), unstack_layers=unstack_layers,
        )


def generate(
    config: models.ModelConfig,
    params: Any,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    strategy: SamplingStrategy = SamplingStrategy(),
    eos_ids: tuple[int, ...] | None = None,
    prompt_ids: jax.Array | None = None,
    pad_id: int = 0,
    prompt_bucket: int = 64,
    length_bucket: int = 64,
    unstack_layers: bool = True,
    mesh_and_rules: tuple[jax.sharding.Mesh, sharding.LogicalRules] | None = None,
) -> Generation:
    """Samples ``num_samples`` completions for each left-padded prompt with a KV cache.

    ``prompt_tokens`` ``[B, P]`` are left-padded (``prompt_mask`` 1 on real tokens, every row
    at least one). The prompts are prefilled once, the cache is repeated G times, and a
    compiled ``lax.while_loop`` decodes until every row has emitted one of ``eos_ids``
    (default ``config.eos_token_ids``) or ``max_new_tokens`` tokens, whichever comes first.

    Shapes are bucketed: the prompt is left-padded further to a multiple of ``prompt_bucket``
    and the decode buffers hold a multiple of ``length_bucket`` steps (``max_new_tokens`` and
    the EOS ids, padded to a multiple of 8, are traced), so it compiles once per model config,
    strategy, batch size, G, prompt bucket and generation bucket. Random
    numbers for prompt ``b``, sample ``g`` and step ``t`` come from
    ``fold_in(sample_keys(key, prompt_ids, G)[b, g], t)``; ``prompt_ids`` default to
    ``arange(B)``. The parameters are the training parameters; pass sharded arrays to run on a
    mesh (the batch axis of the prompts sharded over data-parallel axes).

    With ``unstack_layers`` (default) the decode loop runs the layers one by one on per-layer
    copies of their weights and KV cache, made once per call (``models.unstack_layers``,
    ``models.unstack_cache``): a scan over stacked ``[L, ...]`` arrays would copy each layer's
    slices on every decode step. Pass ``False`` to save that copy's memory (one more set of
    layer weights while generating).

    ``mesh_and_rules``, the run's ``(mesh, logical rules)``, makes them active while the call
    traces (``sharding.activate``), so the model's activation constraints shard the decode
    rows, and with them the KV cache, over the batch mesh axes. Without it (or on one
    device) every device decodes, and holds the cache of, the whole batch.
    """
    if prompt_tokens.ndim != 2 or prompt_mask.shape != prompt_tokens.shape:
        raise ValueError(
            f"prompt_tokens and prompt_mask must both be [B, P]; got {prompt_tokens.shape} "
            f"and {prompt_mask.shape}"
        )
    if max_new_tokens < 1 or num_samples < 1:
        raise ValueError(
            f"max_new_tokens and num_samples must be >= 1, got {max_new_tokens}, {num_samples}"
        )
    if prompt_bucket < 1 or length_bucket < 1:
        raise ValueError(f"buckets must be >= 1, got {prompt_bucket}, {length_bucket}")
    prompt_mask = jnp.asarray(prompt_mask).astype(bool)
    if not isinstance(prompt_mask, jax.core.Tracer) and not bool(jnp.all(prompt_mask[:, -1])):
        raise ValueError("prompts must be left-padded with a real last token in every row")
    B, P = prompt_tokens.shape
    buffer_length = round_up(max_new_tokens, length_bucket)
    if P + buffer_length > config.max_position_embeddings:
        raise ValueError(
            f"prompt length {P} + {buffer_length} decode steps exceeds the model's "
            f"max_position_embeddings={config.max_position_embeddings}"
        )
    extra = round_up(P, prompt_bucket) - P
    prompt_tokens = jnp.pad(
        jnp.asarray(prompt_tokens, jnp.int32), ((0, 0), (extra, 0)), constant_values=pad_id
    )
    prompt_mask = jnp.pad(prompt_mask, ((0, 0), (extra, 0)))
    if prompt_ids is None:
        prompt_ids = jnp.arange(B, dtype=jnp.int32)
    elif jnp.shape(prompt_ids) != (B,):
        raise ValueError(f"prompt_ids must be [B={B}], got shape {jnp.shape(prompt_ids)}")
    eos_ids = tuple(int(i) for i in (config.eos_token_ids if eos_ids is None else eos_ids))
    active = contextlib.nullcontext() if mesh_and_rules is None else sharding.activate(
        *mesh_and_rules)
    with active:
        out = _generate_bucketed(
            params,
            prompt_tokens,
            prompt_mask,
            key,
            jnp.asarray(prompt_ids, jnp.int32),
            jnp.int32(max_new_tokens),
            _padded_eos_ids(eos_ids),
            jnp.int32(pad_id),
            config=config,
            strategy=strategy,
            num_samples=num_samples,
            buffer_length=buffer_length,
            unstack_layers=unstack_layers,
        )
    return Generation(*(x[..., :max_new_tokens] for x in out[:-1]), lengths=out.lengths)
