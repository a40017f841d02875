"""A toy train state and deterministic update shared by the sharding/checkpoint tests.

The state mirrors ``TrainState``: parameters with logical axes, AdamW state, a step counter
and a typed PRNG key that the update consumes (so exact resume must restore it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

VOCAB, EMBED, MLP, HEADS, HEAD_DIM = 16, 8, 12, 4, 2
BATCH = 8

PARAM_LOGICAL_AXES = {
    "embedding": ("vocab", "embed"),
    "mlp": {"up": ("embed", "mlp"), "down": ("mlp", "embed")},
    "attn": {"query": ("embed", "heads", "head_dim")},
    "norm": ("embed",),
}

OPTIMIZER = optax.adamw(learning_rate=1e-2, weight_decay=0.1)


def init_state(seed: int = 0) -> dict[str, Any]:
    """Parameters of several shapes, AdamW state, step 0 and a PRNG key."""
    k_emb, k_up, k_down, k_q, k_state = jax.random.split(jax.random.key(seed), 5)
    params = {
        "embedding": jax.random.normal(k_emb, (VOCAB, EMBED)),
        "mlp": {
            "up": jax.random.normal(k_up, (EMBED, MLP)) / np.sqrt(EMBED),
            "down": jax.random.normal(k_down, (MLP, EMBED)) / np.sqrt(MLP),
        },
        "attn": {"query": jax.random.normal(k_q, (EMBED, HEADS, HEAD_DIM))},
        "norm": jnp.ones((EMBED,)),
    }
    return {
        "params": params,
        "opt_state": OPTIMIZER.init(params),
        "step": jnp.zeros((), jnp.int32),
        "key": k_state,
    }


def make_batch(position: int) -> np.ndarray:
    """Token ids ``[BATCH, 4]`` for data position ``position`` (a pure function of it)."""
    return np.random.default_rng(position).integers(0, VOCAB, size=(BATCH, 4), dtype=np.int32)


def loss_fn(params: dict[str, Any], tokens: jax.Array, key: jax.Array) -> jax.Array:
    x = params["embedding"][tokens].mean(axis=1)  # [B, E]
    x = x + 0.01 * jax.random.normal(key, x.shape)
    h = jnp.tanh(x @ params["mlp"]["up"]) @ params["mlp"]["down"] * params["norm"]  # [B, E]
    q = jnp.einsum("be,ehd->bhd", x, params["attn"]["query"])  # [B, H, D]
    target = params["embedding"][tokens[:, 0]]  # [B, E]
    return jnp.mean((h - target) ** 2) + 0.01 * jnp.mean(q**2)


def update(state: dict[str, Any], tokens: jax.Array) -> tuple[dict[str, Any], jax.Array]:
    """One AdamW step; consumes the state's PRNG key."""
    key, noise_key = jax.random.split(state["key"])
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], tokens, noise_key)
    updates, opt_state = OPTIMIZER.update(grads, state["opt_state"], state["params"])
    new_state = {
        "params": optax.apply_updates(state["params"], updates),
        "opt_state": opt_state,
        "step": state["step"] + 1,
        "key": key,
    }
    return new_state, loss
