"""Pure functions over the decoder: init, logical axes, hidden states, logits, KV cache.

Parameters are a plain nested dict (unboxed arrays):

    {"embed": {"embedding": [V, D]},
     "layers": {"input_norm": {"scale": [L, D]},
                "self_attn": {"q_proj": {"kernel": [L, D, H, Dh], "bias": [L, H, Dh]?},
                              "k_proj": {"kernel": [L, D, K, Dh], "bias": [L, K, Dh]?},
                              "v_proj": {...same as k_proj...},
                              "o_proj": {"kernel": [L, H, Dh, D]},
                              "q_norm": {"scale": [L, Dh]}?, "k_norm": {"scale": [L, Dh]}?},
                "post_attention_norm": {"scale": [L, D]},
                "mlp": {"gate_proj": {"kernel": [L, D, F]}, "up_proj": {"kernel": [L, D, F]},
                        "down_proj": {"kernel": [L, F, D]}}},
     "final_norm": {"scale": [D]},
     "lm_head": [D, V]?}                                   (absent when embeddings are tied)

KV-cache protocol (static shapes, works inside `jax.jit` and `lax.while_loop`)
------------------------------------------------------------------------------
A cache is the dict {"k", "v": [L, B, K, S, Dh], "valid": [B, S] bool, "index": [] int32}.
Slot s of row b holds a real token iff valid[b, s]; `index` is the next slot to write and is
shared by the batch (left padding keeps rows aligned). Keys and values are stored heads
before slots, the layout attention reads, and a call writes only its T new slots of each
layer (in place when the cache is loop state, e.g. in a `lax.while_loop` decode): a decode
step reads the weights and the cache but never rewrites the cache.

1. `cache = init_cache(config, B, S)`: all slots empty, index 0.
2. Prefill: `logits, cache = forward(config, params, prompt, attention_mask=prompt_mask,
   cache=cache)` with the left-padded prompt [B, P] and its mask (1 = real token). Slots
   [0, P) are written; padding slots are marked invalid and never attended to; index = P.
3. Decode: `logits, cache = forward(config, params, next_token[:, None], cache=cache)` writes
   one slot per call; the mask defaults to ones. Repeat while index < S.

Positions: by default a token's position is the number of real tokens before it in its row,
i.e. `sum(cache.valid, 1) + cumsum(mask, 1) - 1`, clipped at 0. Without a cache this is
`cumsum(mask) - 1`, so a left-padded prompt gets positions 0, 1, ... from its first real token,
in the cached and uncached paths alike. Pass `positions` explicitly only to override this.
Writing past slot S - 1 is an error when `index` is concrete; under `jit` the caller must size
S ≥ P + number of decode steps.

Decode loops: `unstack_layers(params)` and `unstack_cache(cache)` give the same parameters and
cache as per-layer trees (`layers_i`) and tuples of L [B, K, S, Dh] arrays; the layers then run
one by one instead of in a `lax.scan`, and no step copies a layer's weights or cache slice out
of the stacked [L, ...] arrays. Every function here accepts both forms.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.transformer import Decoder

Params = dict[str, Any]
Cache = dict[str, jnp.ndarray]


def _module(config: ModelConfig, unstacked: bool = False) -> Decoder:
    return Decoder(config, unstacked=unstacked)


def unstack_layers(params: Params) -> Params:
    """The same parameters with the stacked `layers` tree split into `layers_0 ... layers_{L-1}`.

    Every function of this module accepts either form and computes the same values. The
    unstacked form applies the layers one by one instead of in a `lax.scan`; decode loops use
    it so that no step copies a layer's weights out of the stacked arrays (a copy of the layer
    weights is made once, when this is called).
    """
    if "layers" not in params:
        raise ValueError("params are already unstacked (no stacked 'layers' tree)")
    stacked = params["layers"]
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    per_layer = {
        f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)
    }
    return {**{k: v for k, v in params.items() if k != "layers"}, **per_layer}


def _is_unstacked(params: Params) -> bool:
    return "layers" not in params and "layers_0" in params


def unstack_cache(cache: Cache) -> Cache:
    """The same cache with k and v as tuples of L per-layer [B, K, S, Dh] arrays.

    Every function of this module accepts either form and returns the form it was given;
    with unstacked parameters a per-layer cache is used as it is (no copy per call).
    """
    return {**cache, **_split_kv(cache)}


def _split_kv(kv: Cache) -> Cache:
    return {name: tuple(kv[name]) for name in ("k", "v")}  # [L, ...] -> L x [...]


def _stack_kv(kv: Cache) -> Cache:
    return {name: jnp.stack(kv[name]) for name in ("k", "v")}  # L x [...] -> [L, ...]


def _abstract_boxed_params(config: ModelConfig) -> Any:
    tokens = jnp.zeros((1, 1), jnp.int32)
    init = lambda key: _module(config).init(  # noqa: E731
        key, tokens, tokens, jnp.ones((1, 1), bool), None, None
    )
    return jax.eval_shape(init, jax.random.key(0))["params"]


def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random parameters (normal(0.02) kernels, unit norm scales, zero biases), unboxed.

    Runs as one compiled computation. `key` (any JAX PRNG key) seeds an "rbg" key for the
    parameter draws: XLA compiles threefry's per-parameter bit generation slowly (about a
    second per parameter on CPU), RngBitGenerator quickly, and it shards well on TPU.
    """
    return _jitted_init(config)(key)


@functools.cache
def _jitted_init(config: ModelConfig) -> Any:
    def init(key: jax.Array) -> Params:
        key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
        tokens = jnp.zeros((1, 1), jnp.int32)
        variables = _module(config).init(key, tokens, tokens, jnp.ones((1, 1), bool), None,
                                         None)
        return nn.meta.unbox(variables["params"])

    return jax.jit(init)


def param_logical_axes(config: ModelConfig) -> Params:
    """Pytree matching `init_params` whose leaves are tuples of logical axis names.

    Tuples are pytree nodes, so map over it with `is_leaf=lambda x: isinstance(x, tuple)`.
    Stacked layer parameters start with the "layers" axis.
    """
    boxed = _abstract_boxed_params(config)
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731

    def names(leaf: Any) -> tuple[str | None, ...]:
        if not is_box(leaf):
            raise TypeError(f"parameter without logical axis names: {leaf}")
        return tuple(leaf.names)

    return jax.tree.map(names, boxed, is_leaf=is_box)


def init_cache(
    config: ModelConfig, batch_size: int, max_len: int, dtype: Any = None
) -> Cache:
    """An empty KV cache of `max_len` slots (see the module docstring for the protocol)."""
    shape = (config.num_layers, batch_size, config.num_kv_heads, max_len, config.head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "valid": jnp.zeros((batch_size, max_len), bool),
        "index": jnp.zeros((), jnp.int32),
    }


def _check_inputs(config: ModelConfig, tokens: jnp.ndarray, mask: jnp.ndarray | None) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers, got {tokens.dtype}")
    if mask is not None and mask.shape != tokens.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != tokens shape {tokens.shape}")


def hidden_states(
    config: ModelConfig,
    params: Params,
    tokens: jnp.ndarray,
    *,
    positions: jnp.ndarray | None = None,
    attention_mask: jnp.ndarray | None = None,
    cache: Cache | None = None,
) -> tuple[jnp.ndarray, Cache | None]:
    """Final-normed hidden states [B, T, D] in `config.dtype`, and the new cache (or None).

    tokens [B, T] int; attention_mask [B, T] (1 real, 0 left padding; default all ones);
    positions [B, T] (default: see the module docstring).
    """
    _check_inputs(config, tokens, attention_mask)
    B, T = tokens.shape
    mask = (jnp.ones((B, T), bool) if attention_mask is None
            else attention_mask.astype(bool))  # [B, T]
    unstacked = _is_unstacked(params)
    if cache is None:
        past = jnp.zeros((B, 1), jnp.int32)
        key_valid, cache_index, layers_cache = mask, None, None
    else:
        S = cache["valid"].shape[1]
        if cache["valid"].shape[0] != B:
            raise ValueError(f"cache batch {cache['valid'].shape[0]} != tokens batch {B}")
        index = cache["index"]
        if not isinstance(index, jax.core.Tracer) and int(index) + T > S:
            raise ValueError(f"KV cache overflow: index {int(index)} + {T} tokens > {S} slots")
        past = jnp.sum(cache["valid"], axis=1, keepdims=True, dtype=jnp.int32)  # [B, 1]
        key_valid = jax.lax.dynamic_update_slice(cache["valid"], mask, (0, index))  # [B, S]
        cache_index, layers_cache = index, {"k": cache["k"], "v": cache["v"]}
        per_layer_cache = isinstance(cache["k"], (tuple, list))
        if unstacked != per_layer_cache:
            layers_cache = (_split_kv if unstacked else _stack_kv)(layers_cache)
    if positions is None:
        positions = jnp.maximum(past + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)
    hidden, layers_cache = _module(config, unstacked).apply(
        {"params": params}, tokens.astype(jnp.int32), positions.astype(jnp.int32), key_valid,
        cache_index, layers_cache,
    )
    if cache is None:
        return hidden, None
    if unstacked != per_layer_cache:
        layers_cache = (_split_kv if per_layer_cache else _stack_kv)(layers_cache)
    new_cache = {**layers_cache, "valid": key_valid, "index": cache["index"] + T}
    return hidden, new_cache


def unembedding(config: ModelConfig, params: Params) -> jnp.ndarray:
    """The [D, V] output matrix: `logits = hidden @ unembedding(config, params)`."""
    if config.tie_word_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]


def forward(
    config: ModelConfig,
    params: Params,
    tokens: jnp.ndarray,
    *,
    positions: jnp.ndarray | None = None,
    attention_mask: jnp.ndarray | None = None,
    cache: Cache | None = None,
) -> jnp.ndarray | tuple[jnp.ndarray, Cache]:
    """Float32 logits [B, T, V]; `(logits, new_cache)` when a cache is passed."""
    hidden, new_cache = hidden_states(
        config, params, tokens, positions=positions, attention_mask=attention_mask, cache=cache
    )
    w = unembedding(config, params).astype(config.dtype)  # [D, V]
    logits = jnp.einsum("btd,dv->btv", hidden, w, preferred_element_type=jnp.float32)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits if cache is None else (logits, new_cache)
