"""Rotary position embeddings (RoPE) in the rotate-half layout of Hugging Face checkpoints.

For a head vector x ∈ R^d split into halves (x₁, x₂) and inverse frequencies
ω_i = θ^(-2i/d), i < d/2, the rotation at position p is

    rope(x, p) = x ⊙ [cos(pω), cos(pω)] + [-x₂, x₁] ⊙ [sin(pω), sin(pω)].

Llama 3.1 rescales ω ("llama3" rope type): with wavelength λ_i = 2π/ω_i, low-frequency
components (λ_i > L/low_freq_factor, L = original max position) are divided by `factor`,
high-frequency ones (λ_i < L/high_freq_factor) are kept, and the band in between is blended
with s = (L/λ_i - low_freq_factor) / (high_freq_factor - low_freq_factor):
ω_i ← (1 - s) ω_i / factor + s ω_i.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from rlvr_jax.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """The d/2 inverse frequencies ω_i (float64 NumPy, rope scaling applied).  # [Dh/2]"""
    d = config.head_dim
    omega = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    if config.rope_type == "llama3":
        factor = config.rope_factor
        original = config.rope_original_max_position
        low_wavelen = original / config.rope_low_freq_factor
        high_wavelen = original / config.rope_high_freq_factor
        wavelen = 2 * math.pi / omega
        smooth = (original / wavelen - config.rope_low_freq_factor) / (
            config.rope_high_freq_factor - config.rope_low_freq_factor
        )
        blended = (1 - smooth) * omega / factor + smooth * omega
        omega = np.where(wavelen > low_wavelen, omega / factor, omega)
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        omega = np.where(is_medium, blended, omega)
    elif config.rope_type == "linear":
        omega = omega / config.rope_factor
    return omega


def rope_cos_sin(config: ModelConfig, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin tables for integer positions [B, T]; each [B, T, Dh] in float32."""
    omega = jnp.asarray(inverse_frequencies(config), jnp.float32)  # [Dh/2]
    angles = positions.astype(jnp.float32)[..., None] * omega  # [B, T, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, Dh]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate x [B, T, N, Dh] by the tables cos, sin [B, T, Dh]; computed in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
