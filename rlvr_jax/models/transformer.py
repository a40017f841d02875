"""Flax Linen decoder-only transformer (Llama, Qwen2/2.5, Qwen3 families).

Pre-norm blocks: h ← h + Attn(RMSNorm(h)), h ← h + SwiGLU(RMSNorm(h)), then a final RMSNorm.
The layers are stacked with `nn.scan` (one compiled layer body, parameters carry a leading
`layers` axis) and optionally rematerialised. The same module code serves the training
forward pass (no cache) and cached prefill/decode, so sampler and trainer compute identical
functions. Parameters carry logical axis names (`vocab`, `embed`, `mlp`, `heads`, `kv_heads`,
`head_dim`, `layers`); activations are constrained with `batch`, `length`, `embed`, `heads`,
`kv_heads`, `mlp`. With no logical rules set these annotations are no-ops.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.rope import apply_rope, rope_cos_sin

# Replaces the attention logits of masked keys; finite so no softmax row is ever NaN.
_MASK_VALUE = -1e30

_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _init(names: tuple[str, ...], stddev: float = 0.02) -> Any:
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def _ones(names: tuple[str, ...]) -> Any:
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _zeros(names: tuple[str, ...]) -> Any:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) ⊙ scale, statistics in float32, over the last axis."""

    eps: float
    dtype: Any
    param_dtype: Any
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = self.param("scale", _ones((self.axis_name,)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


class Projection(nn.Module):
    """y = x · W (+ b): contracts the last `len(in_names)` axes of x with W's leading axes.

    The kernel is created in its full shape (e.g. [D, H, Dh]) with logical axis names, so
    sharding rules apply to it as-is (flax's DenseGeneral initialises a flattened kernel, which
    breaks logical constraints on multi-axis kernels while a mesh is active).
    """

    features: tuple[int, ...]
    names: tuple[str, ...]
    bias_names: tuple[str, ...] | None
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        contract = len(self.names) - len(self.features)
        shape = (*x.shape[x.ndim - contract:], *self.features)
        kernel = self.param("kernel", _init(self.names), shape, self.param_dtype)
        dims = ((tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract))), ((), ()))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), dims)
        if self.bias_names is not None:
            bias = self.param("bias", _zeros(self.bias_names), self.features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def _projection(
    config: ModelConfig, features: tuple[int, ...], names: tuple[str, ...],
    bias_names: tuple[str, ...] | None, name: str,
) -> Projection:
    return Projection(features, names, bias_names, config.dtype, config.param_dtype, name=name)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, optional q/k/v biases and q/k RMSNorm.

    Keys live in "slots": without a cache, slot t holds input token t; with a cache of length
    S, the T new keys are written at slots [index, index + T) and queries attend over all S
    slots. A query in slot q sees key slot s iff s ≤ q and key_valid[s], where key_valid marks
    real (non-padding) tokens.

    With a cache, `cache` holds every layer's keys and values, {k, v: [L, B, K, S, Dh]}, and
    this layer (number `layer_index`) writes its T new slots into it in place and attends over
    its own [B, K, S, Dh] slice; with `layer_index` None, `cache` is this layer's own
    {k, v: [B, K, S, Dh]}. Heads come before slots, the layout the attention contractions read,
    so no per-step transpose of the cache is needed.

    The attention itself is `_einsum_attention`, or `_fused_attention` when
    `config.attention_impl` is "xla" or "cudnn", for every call but a one-token decode step:
    a decode step's single query per row is memory-bound (it reads the cache once, which the
    einsum already does, in the cache's own layout), a fused kernel would need the cache in
    the [B, S, K, Dh] layout (a transposed copy on every step) and gains nothing from tiling
    one query row.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,  # [B, T, D]
        cos: jnp.ndarray,  # [B, T, Dh]
        sin: jnp.ndarray,  # [B, T, Dh]
        key_valid: jnp.ndarray,  # [B, S] bool
        cache_index: jnp.ndarray | None,  # [] int32 (None without a cache)
        cache: dict[str, jnp.ndarray] | None,  # k, v: [L, B, K, S, Dh] (None without)
        layer_index: jnp.ndarray | None,  # [] int32; None: cache k, v are [B, K, S, Dh]
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray] | None]:
        c = self.config
        H, K, Dh = c.num_heads, c.num_kv_heads, c.head_dim
        bias = ("heads", "head_dim") if c.qkv_bias else None
        kv_bias = ("kv_heads", "head_dim") if c.qkv_bias else None
        q = _projection(c, (H, Dh), ("embed", "heads", "head_dim"), bias, "q_proj")(x)
        k = _projection(c, (K, Dh), ("embed", "kv_heads", "head_dim"), kv_bias, "k_proj")(x)
        v = _projection(c, (K, Dh), ("embed", "kv_heads", "head_dim"), kv_bias, "v_proj")(x)
        if c.qk_norm:
            norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype,
                        axis_name="head_dim")
            q = RMSNorm(**norm, name="q_norm")(q)
            k = RMSNorm(**norm, name="k_norm")(k)
        q = apply_rope(q, cos, sin)  # [B, T, H, Dh]
        k = apply_rope(k, cos, sin)  # [B, T, K, Dh]
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", None))
        k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", None))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", None))

        T = x.shape[1]
        if cache is None:
            query_offset = jnp.int32(0)
            kv_layout = "bskd"  # k, v: [B, S = T, K, Dh]
        else:
            query_offset = cache_index
            cache = {
                "k": _write_slots(cache["k"], k, layer_index, cache_index),
                "v": _write_slots(cache["v"], v, layer_index, cache_index),
            }
            k = _layer_slice(cache["k"], layer_index).astype(c.dtype)  # [B, K, S, Dh]
            v = _layer_slice(cache["v"], layer_index).astype(c.dtype)  # [B, K, S, Dh]
            kv_layout = "bksd"
        S = key_valid.shape[1]
        query_slot = query_offset + jnp.arange(T)  # [T]
        causal = jnp.arange(S)[None, :] <= query_slot[:, None]  # [T, S]
        visible = causal[None, :, :] & key_valid[:, None, :]  # [B, T, S]
        if c.attention_impl == "einsum" or (cache is not None and T == 1):
            out = _einsum_attention(q, k, v, visible, kv_layout, c.dtype)  # [B, T, H, Dh]
        else:
            out = _fused_attention(q, k, v, visible, kv_layout, is_causal=cache is None,
                                   implementation=c.attention_impl)  # [B, T, H, Dh]
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", None))
        o_proj = _projection(c, (c.hidden_size,), ("heads", "head_dim", "embed"), None,
                             "o_proj")
        return o_proj(out), cache


def _einsum_attention(
    q: jnp.ndarray,  # [B, T, H, Dh]
    k: jnp.ndarray,  # [B, S, K, Dh] ("bskd") or [B, K, S, Dh] ("bksd")
    v: jnp.ndarray,  # like k
    visible: jnp.ndarray,  # [B, T, S] bool: query t may attend to key slot s
    kv_layout: str,
    dtype: Any,
) -> jnp.ndarray:  # [B, T, H, Dh]
    """softmax(q·kᵀ / √Dh, masked to `visible`) · v, per query head and its key/value head.

    Scores and softmax in float32; masked logits are replaced by a finite `_MASK_VALUE`, and
    the probabilities of invisible keys are set to 0, so a query with no visible key (left
    padding) outputs 0.
    """
    B, T, H, Dh = q.shape
    K = k.shape[2] if kv_layout == "bskd" else k.shape[1]
    S = visible.shape[-1]
    G = H // K  # query heads per key/value head
    q = q.reshape(B, T, K, G, Dh)  # [B, T, K, G, Dh]
    logits = jnp.einsum(f"btkgd,{kv_layout}->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * (Dh**-0.5)  # [B, K, G, T, S]
    visible = visible[:, None, None]  # [B, 1, 1, T, S]
    probs = jax.nn.softmax(jnp.where(visible, logits, _MASK_VALUE), axis=-1)
    probs = jnp.where(visible, probs, 0.0).astype(dtype)
    if kv_layout == "bskd":
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v)  # [B, T, K, G, Dh]
    else:
        # (g, t) merged into one row axis: a plain batched matmul, which XLA:CPU runs on its
        # fast dot path (the 5-d form falls back to a slow one, ~3x at decode shapes).
        out = jnp.einsum("bkqs,bksd->bkqd", probs.reshape(B, K, G * T, S), v)
        out = out.reshape(B, K, G, T, Dh).transpose(0, 3, 1, 2, 4)  # [B, T, K, G, Dh]
    return out.reshape(B, T, H, Dh)


def _fused_attention(
    q: jnp.ndarray,  # [B, T, H, Dh]
    k: jnp.ndarray,  # [B, S, K, Dh] ("bskd") or [B, K, S, Dh] ("bksd")
    v: jnp.ndarray,  # like k
    visible: jnp.ndarray,  # [B, T, S] bool
    kv_layout: str,
    *,
    is_causal: bool,
    implementation: str,
) -> jnp.ndarray:  # [B, T, H, Dh]
    """The function of `_einsum_attention` through `jax.nn.dot_product_attention`.

    The boolean mask is `visible` itself (any padding pattern, left padding included;
    cuDNN adds it as a bias of a large negative number). `is_causal` (queries and keys in
    the same slots, T = S) also lets cuDNN skip the blocks above the diagonal; the mask already
    holds the causal part, so it changes no value. JAX's kernels give a query with no visible
    key a uniform average of the values; such rows are set to 0, as `_einsum_attention` does.

    cuDNN takes a mask (a bias) in training only with even T and S, so an odd length gets one
    more slot (in both implementations, which keeps the CPU tests on this code): a padded key
    is invisible to every query and a padded query's output is dropped, so nothing changes.
    """
    if kv_layout == "bksd":  # a cached prefill: the cache's heads-before-slots layout
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, S, K, Dh]
    T, S, Dh = q.shape[1], k.shape[1], q.shape[-1]
    pad_t, pad_s = T % 2, S % 2
    q = jnp.pad(q, ((0, 0), (0, pad_t), (0, 0), (0, 0)))  # [B, T', H, Dh]
    k = jnp.pad(k, ((0, 0), (0, pad_s), (0, 0), (0, 0)))  # [B, S', K, Dh]
    v = jnp.pad(v, ((0, 0), (0, pad_s), (0, 0), (0, 0)))
    mask = jnp.pad(visible, ((0, 0), (0, pad_t), (0, pad_s)))  # [B, T', S'], padding False
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask[:, None], scale=Dh**-0.5, is_causal=is_causal,
        implementation=implementation,
    )[:, :T]  # [B, T, H, Dh]
    any_visible = jnp.any(visible, axis=-1)  # [B, T]
    return jnp.where(any_visible[:, :, None, None], out, jnp.zeros((), out.dtype))


def _write_slots(
    buffer: jnp.ndarray,  # [L, B, K, S, Dh], or [B, K, S, Dh] when layer_index is None
    new: jnp.ndarray,  # [B, T, K, Dh]
    layer_index: jnp.ndarray | None,  # [] int32
    slot: jnp.ndarray,  # [] int32
) -> jnp.ndarray:
    """buffer with buffer[layer_index, :, :, slot:slot + T] = new (transposed to [B, K, T, Dh]).

    Only the T new slots are written: inside the layer scan and the decode loop the buffer is
    loop state, so XLA updates it in place rather than copying the cache.
    """
    update = jnp.swapaxes(new, 1, 2).astype(buffer.dtype)  # [B, K, T, Dh]
    zero = jnp.zeros((), jnp.int32)
    if layer_index is None:
        return jax.lax.dynamic_update_slice(buffer, update, (zero, zero, slot, zero))
    return jax.lax.dynamic_update_slice(
        buffer, update[None], (layer_index, zero, zero, slot, zero)
    )


def _layer_slice(buffer: jnp.ndarray, layer_index: jnp.ndarray | None) -> jnp.ndarray:
    """buffer[layer_index]: [L, B, K, S, Dh] -> [B, K, S, Dh] (buffer itself for None)."""
    if layer_index is None:
        return buffer
    return jax.lax.dynamic_index_in_dim(buffer, layer_index, axis=0, keepdims=False)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) ⊙ up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:  # [B, T, D] -> [B, T, D]
        c = self.config
        gate = _projection(c, (c.mlp_dim,), ("embed", "mlp"), None, "gate_proj")(x)
        up = _projection(c, (c.mlp_dim,), ("embed", "mlp"), None, "up_proj")(x)
        h = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return _projection(c, (c.hidden_size,), ("mlp", "embed"), None, "down_proj")(h)


class DecoderLayer(nn.Module):
    """One pre-norm block; the scan body.

    The carry is (h [B, T, D], cache): the whole-model cache {k, v: [L, B, K, S, Dh]} (or None)
    travels through the layer scan as loop state, and layer `layer_index` (the scanned input)
    writes only its own new slots, so a decode step never rewrites the cache.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        carry: tuple[jnp.ndarray, dict[str, jnp.ndarray] | None],
        layer_index: jnp.ndarray | None,  # [] int32; None: the cache is this layer's own
        cos: jnp.ndarray,
        sin: jnp.ndarray,
        key_valid: jnp.ndarray,
        cache_index: jnp.ndarray | None,
    ) -> tuple[tuple[jnp.ndarray, dict[str, jnp.ndarray] | None], None]:
        c = self.config
        h, cache = carry  # h: [B, T, D]
        norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        attn_out, cache = Attention(c, name="self_attn")(
            RMSNorm(**norm, name="input_norm")(h), cos, sin, key_valid, cache_index, cache,
            layer_index,
        )
        h = h + attn_out
        h = h + MLP(c, name="mlp")(RMSNorm(**norm, name="post_attention_norm")(h))
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
        return (h, cache), None


class Decoder(nn.Module):
    """Token ids -> final-normed hidden states [B, T, D] (and the updated cache, if any).

    `cache` here is the per-layer part {k, v: [L, B, K, S, Dh]}; the caller (see `model.py`)
    handles slot bookkeeping and passes `key_valid` [B, S] and `cache_index`.

    With `unstacked`, the layers are L separate modules `layers_0 ... layers_{L-1}` applied in
    a Python loop (parameters without the leading `layers` axis, see
    `model.unstack_layers`), and `cache` is {k, v: tuples of L [B, K, S, Dh] arrays}: the same
    function, for decode loops, where slicing layer i's weights and cache out of stacked
    [L, ...] arrays would copy them on every step.
    """

    config: ModelConfig
    unstacked: bool = False

    def setup(self) -> None:
        c = self.config
        self.embed = nn.Embed(
            num_embeddings=c.vocab_size,
            features=c.hidden_size,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            embedding_init=_init(("vocab", "embed")),
            name="embed",
        )
        layer_cls = DecoderLayer
        if c.remat_policy != "none":
            layer_cls = nn.remat(
                DecoderLayer, policy=_REMAT_POLICIES[c.remat_policy], prevent_cse=False
            )
        if self.unstacked:
            self.layers = [layer_cls(c) for _ in range(c.num_layers)]  # layers_0, layers_1, ...
        else:
            self.layers = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                # Scanned: the layer index; broadcast: cos, sin, key_valid, cache_index.
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(c, name="layers")
        self.final_norm = RMSNorm(c.norm_eps, c.dtype, c.param_dtype, name="final_norm")
        if not c.tie_word_embeddings:
            self.lm_head = self.param(
                "lm_head", _init(("embed", "vocab")), (c.hidden_size, c.vocab_size),
                c.param_dtype,
            )

    def __call__(
        self,
        tokens: jnp.ndarray,  # [B, T] int32
        positions: jnp.ndarray,  # [B, T] int32
        key_valid: jnp.ndarray,  # [B, S] bool
        cache_index: jnp.ndarray | None,
        layers_cache: dict[str, jnp.ndarray] | None,
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray] | None]:
        h = self.embed(tokens)  # [B, T, D]
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
        cos, sin = rope_cos_sin(self.config, positions)
        if self.unstacked:
            new_cache = {"k": [], "v": []}
            for index, layer in enumerate(self.layers):
                layer_cache = None if layers_cache is None else {
                    "k": layers_cache["k"][index], "v": layers_cache["v"][index]}
                (h, layer_cache), _ = layer(
                    (h, layer_cache), None, cos, sin, key_valid, cache_index
                )
                if layer_cache is not None:
                    new_cache["k"].append(layer_cache["k"])
                    new_cache["v"].append(layer_cache["v"])
            if layers_cache is not None:
                layers_cache = {"k": tuple(new_cache["k"]), "v": tuple(new_cache["v"])}
        else:
            layer_indices = jnp.arange(self.config.num_layers, dtype=jnp.int32)  # [L]
            (h, layers_cache), _ = self.layers(
                (h, layers_cache), layer_indices, cos, sin, key_valid, cache_index
            )
        return self.final_norm(h), layers_cache
