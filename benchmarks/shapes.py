"""The model shapes the benchmarks run: the architecture presets and a two-layer ``tiny`` model
(for CPU smoke runs and tests), each with random weights, a dtype policy and an attention
implementation (``ModelConfig.attention_impl``)."""

from __future__ import annotations

import jax.numpy as jnp

from rlvr_jax import models

# A two-layer Qwen2-shaped model: GQA (4 query heads over 2 key/value heads), q/k/v biases.
TINY_CONFIG = models.ModelConfig(
    family="qwen2", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=16, mlp_dim=128, tie_word_embeddings=True, qkv_bias=True,
)
NAMES = (*sorted(models.PRESETS), "tiny")


def model_config(name: str, dtype: str, param_dtype: str | None = None,
                 attention_impl: str = "einsum") -> models.ModelConfig:
    """The preset ``name`` (or ``"tiny"``), compute in ``dtype``, parameters stored in
    ``param_dtype`` (default: ``dtype``)."""
    base = TINY_CONFIG if name == "tiny" else models.get_preset(name)
    return base.replace(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype or dtype),
                        attention_impl=attention_impl)
