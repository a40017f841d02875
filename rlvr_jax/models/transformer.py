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
        layer_cache: dict[str, jnp.ndarray] | None,  # k, v: [B, S, K, Dh]
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
        if layer_cache is None:
            query_offset = jnp.int32(0)
            new_cache = None
        else:
            query_offset = cache_index
            start = (0, cache_index, 0, 0)
            new_cache = {
                "k": jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(
                    layer_cache["k"].dtype), start),
                "v": jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(
                    layer_cache["v"].dtype), start),
            }
            k = new_cache["k"].astype(c.dtype)
            v = new_cache["v"].astype(c.dtype)
        S = k.shape[1]

        B = x.shape[0]
        q = q.reshape(B, T, K, H // K, Dh)  # [B, T, K, G, Dh]
        logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
        logits = logits * (Dh**-0.5)  # [B, K, G, T, S]
        query_slot = query_offset + jnp.arange(T)  # [T]
        causal = jnp.arange(S)[None, :] <= query_slot[:, None]  # [T, S]
        visible = causal[None, :, :] & key_valid[:, None, :]  # [B, T, S]
        visible = visible[:, None, None]  # [B, 1, 1, T, S]
        probs = jax.nn.softmax(jnp.where(visible, logits, _MASK_VALUE), axis=-1)
        # A query with no visible key (left padding) attends to nothing: output 0, the same in
        # the cached and uncached paths.
        probs = jnp.where(visible, probs, 0.0).astype(c.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, H, Dh)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", None))
        o_proj = _projection(c, (c.hidden_size,), ("heads", "head_dim", "embed"), None,
                             "o_proj")
        return o_proj(out), new_cache


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
    """One pre-norm block; the scan body. Returns (h, layer_cache)."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        h: jnp.ndarray,  # [B, T, D]
        layer_cache: dict[str, jnp.ndarray] | None,
        cos: jnp.ndarray,
        sin: jnp.ndarray,
        key_valid: jnp.ndarray,
        cache_index: jnp.ndarray | None,
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray] | None]:
        c = self.config
        norm = dict(eps=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        attn_out, layer_cache = Attention(c, name="self_attn")(
            RMSNorm(**norm, name="input_norm")(h), cos, sin, key_valid, cache_index, layer_cache
        )
        h = h + attn_out
        h = h + MLP(c, name="mlp")(RMSNorm(**norm, name="post_attention_norm")(h))
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
        return h, layer_cache


class Decoder(nn.Module):
    """Token ids -> final-normed hidden states [B, T, D] (and the updated cache, if any).

    `cache` here is the per-layer part {k, v: [L, B, S, K, Dh]}; the caller (see `model.py`)
    handles slot bookkeeping and passes `key_valid` [B, S] and `cache_index`.
    """

    config: ModelConfig

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
        self.layers = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True},
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
        h, layers_cache = self.layers(h, layers_cache, cos, sin, key_valid, cache_index)
        return self.final_norm(h), layers_cache
