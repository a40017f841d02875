"""KV-cache decoding vs full forward passes, the functional interface, dtype and remat."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import models

CONFIGS = {
    "llama": models.ModelConfig(
        family="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, mlp_dim=48, rope_type="llama3", rope_factor=8.0,
        rope_original_max_position=16, tie_word_embeddings=True,
    ),
    "qwen3": models.ModelConfig(
        family="qwen3", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
        num_kv_heads=1, head_dim=16, mlp_dim=48, qk_norm=True,
    ),
    "qwen2": models.ModelConfig(
        family="qwen2", vocab_size=64, hidden_size=32, num_layers=3, num_heads=2,
        num_kv_heads=2, head_dim=16, mlp_dim=48, qkv_bias=True,
    ),
}


def _random_params(config, seed=0):
    """Random parameters with non-trivial norms and biases, so every parameter matters."""
    params = models.init_params(config, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape, np.float32), params)


def _left_padded_batch(rng, lengths, total):
    tokens = np.zeros((len(lengths), total), np.int32)
    mask = np.zeros((len(lengths), total), np.int32)
    for b, n in enumerate(lengths):
        tokens[b, total - n:] = rng.integers(1, 64, n)
        mask[b, total - n:] = 1
    return tokens, mask


# One compiled function per (config, shape): eager Flax calls re-trace the layer scan.
forward_jit = jax.jit(models.forward, static_argnums=0)


def _reference_logits(config, params, rows):
    """Logits of each token sequence on its own, positions from 0, no attention mask.

    Rows are right-padded into one batch: causal attention makes a position's logits
    independent of the tokens after it, so the padding never influences the compared entries.
    """
    width = max(len(r) for r in rows)
    batch = np.zeros((len(rows), width), np.int32)
    for b, row in enumerate(rows):
        batch[b, :len(row)] = row
    logits = np.asarray(forward_jit(config, params, jnp.asarray(batch)))
    return [logits[b, :len(row)] for b, row in enumerate(rows)]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_left_padding_equals_unpadded_sequences(family):
    config = CONFIGS[family]
    params = _random_params(config)
    rng = np.random.default_rng(0)
    lengths = [7, 3, 5]
    tokens, mask = _left_padded_batch(rng, lengths, 7)
    logits = np.asarray(forward_jit(config, params, jnp.asarray(tokens),
                                    attention_mask=jnp.asarray(mask)))
    refs = _reference_logits(config, params, [tokens[b, 7 - n:] for b, n in enumerate(lengths)])
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(logits[b, 7 - n:], refs[b], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_cached_decoding_equals_full_forward_every_step(family):
    config = CONFIGS[family]
    params = _random_params(config, seed=3)
    rng = np.random.default_rng(1)
    lengths, prompt_len, steps = [4, 1, 3], 4, 5
    prompt, prompt_mask = _left_padded_batch(rng, lengths, prompt_len)
    continuation = rng.integers(1, 64, (3, steps)).astype(np.int32)
    full = np.concatenate([prompt, continuation], axis=1)
    full_mask = np.concatenate([prompt_mask, np.ones_like(continuation)], axis=1)

    forward = functools.partial(forward_jit, config)
    cache = models.init_cache(config, 3, prompt_len + steps)
    logits, cache = forward(params, jnp.asarray(prompt), attention_mask=jnp.asarray(prompt_mask),
                            cache=cache)
    step_logits = [np.asarray(logits[:, -1])]
    for t in range(steps - 1):
        logits, cache = forward(params, jnp.asarray(continuation[:, t:t + 1]), cache=cache)
        step_logits.append(np.asarray(logits[:, 0]))
    assert int(cache["index"]) == prompt_len + steps - 1

    refs = _reference_logits(config, params,
                             [full[b, prompt_len - n:] for b, n in enumerate(lengths)])
    for b, n in enumerate(lengths):
        ref = refs[b]  # [n + steps, V]
        for t, got in enumerate(step_logits):
            np.testing.assert_allclose(got[b], ref[n - 1 + t], atol=1e-5, rtol=1e-5)
    # The uncached padded forward agrees too (same module code, same masking).
    padded = np.asarray(forward(params, jnp.asarray(full), attention_mask=jnp.asarray(full_mask)))
    for t, got in enumerate(step_logits):
        np.testing.assert_allclose(got, padded[:, prompt_len - 1 + t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_unstacked_layers_and_cache_compute_the_same_function(family):
    """Per-layer parameters and caches (the decode-loop form) against the scanned layers."""
    config = CONFIGS[family]
    params = _random_params(config, seed=7)
    unstacked = models.unstack_layers(params)
    assert "layers" not in unstacked
    assert sorted(k for k in unstacked if k.startswith("layers_")) == [
        f"layers_{i}" for i in range(config.num_layers)]
    for i in range(config.num_layers):  # layer i holds slice i of every stacked parameter
        jax.tree.map(lambda s, u, i=i: np.testing.assert_array_equal(s[i], u),
                     params["layers"], unstacked[f"layers_{i}"])
    rng = np.random.default_rng(4)
    prompt, prompt_mask = _left_padded_batch(rng, [4, 2], 4)
    nxt = jnp.asarray(rng.integers(1, 64, (2, 1)).astype(np.int32))

    tokens, mask = jnp.asarray(prompt), jnp.asarray(prompt_mask)
    np.testing.assert_allclose(forward_jit(config, unstacked, tokens, attention_mask=mask),
                               forward_jit(config, params, tokens, attention_mask=mask),
                               atol=1e-6, rtol=1e-6)

    def prefill_then_decode(p, per_layer_cache):
        cache = models.init_cache(config, 2, 6)
        if per_layer_cache:
            cache = models.unstack_cache(cache)
        _, cache = forward_jit(config, p, tokens, attention_mask=mask, cache=cache)
        logits, cache = forward_jit(config, p, nxt, cache=cache)
        assert isinstance(cache["k"], tuple) == per_layer_cache  # the form it was given
        k, v = (jnp.stack(cache[n]) if per_layer_cache else cache[n] for n in ("k", "v"))
        return np.asarray(logits), np.asarray(k), np.asarray(v)

    reference = prefill_then_decode(params, False)
    for p, per_layer_cache in [(params, True), (unstacked, False), (unstacked, True)]:
        for got, want in zip(prefill_then_decode(p, per_layer_cache), reference, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="already unstacked"):
        models.unstack_layers(unstacked)


def test_decode_inside_while_loop_matches_python_loop():
    config = CONFIGS["qwen3"]
    params = _random_params(config, seed=5)
    prompt, mask = _left_padded_batch(np.random.default_rng(2), [3, 2], 3)
    steps = 4

    @jax.jit
    def greedy(params, prompt, mask):
        cache = models.init_cache(config, 2, 3 + steps)
        logits, cache = models.forward(config, params, prompt, attention_mask=mask, cache=cache)
        out = jnp.zeros((2, steps), jnp.int32)

        def body(state):
            i, token, cache, out = state
            out = out.at[:, i].set(token)
            logits, cache = models.forward(config, params, token[:, None], cache=cache)
            return i + 1, jnp.argmax(logits[:, 0], -1).astype(jnp.int32), cache, out

        first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
        _, _, _, out = jax.lax.while_loop(lambda s: s[0] < steps, body, (0, first, cache, out))
        return out

    got = np.asarray(greedy(params, jnp.asarray(prompt), jnp.asarray(mask)))
    # Reference: re-run the whole growing sequence (right-padded buffer) at every step.
    for b, n in enumerate([3, 2]):
        buffer = np.zeros((1, 3 + steps), np.int32)
        buffer[0, :n] = prompt[b, 3 - n:]
        for t in range(steps):
            logits = forward_jit(config, params, jnp.asarray(buffer))
            buffer[0, n + t] = int(np.argmax(logits[0, n + t - 1]))
        assert got[b].tolist() == buffer[0, n:n + steps].tolist()


def test_hidden_states_and_unembedding_compose_to_logits():
    for config in (CONFIGS["llama"], CONFIGS["qwen3"]):  # tied and untied embeddings
        params = _random_params(config)
        tokens = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
        hidden, cache = jax.jit(models.hidden_states, static_argnums=0)(config, params, tokens)
        assert cache is None and hidden.shape == (2, 5, config.hidden_size)
        w = models.unembedding(config, params)
        assert w.shape == (config.hidden_size, config.vocab_size)
        np.testing.assert_allclose(np.asarray(hidden @ w),
                                   np.asarray(forward_jit(config, params, tokens)),
                                   atol=1e-5)


def test_logical_axes_match_param_structure_and_ranks():
    for config in CONFIGS.values():
        params = models.init_params(config, jax.random.key(0))
        axes = models.param_logical_axes(config)
        is_names = lambda x: isinstance(x, tuple)  # noqa: E731
        assert jax.tree.structure(params) == jax.tree.structure(axes, is_leaf=is_names)
        for p, names in zip(jax.tree.leaves(params), jax.tree.leaves(axes, is_leaf=is_names),
                            strict=True):
            assert len(names) == p.ndim
        assert axes["layers"]["self_attn"]["k_proj"]["kernel"] == (
            "layers", "embed", "kv_heads", "head_dim")
        assert axes["embed"]["embedding"] == ("vocab", "embed")


def test_config_is_a_jit_static_argument_and_validates():
    config = CONFIGS["llama"]
    assert hash(config) == hash(config.replace())
    assert config.replace(dtype="float32") == config
    params = _random_params(config)
    fn = jax.jit(models.forward, static_argnums=0)
    assert fn(config, params, jnp.zeros((1, 3), jnp.int32)).shape == (1, 3, 64)
    with pytest.raises(ValueError, match="num_kv_heads"):
        config.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="family"):
        config.replace(family="gpt2")
    with pytest.raises(ValueError, match="remat_policy"):
        config.replace(remat_policy="sometimes")


def test_preset_parameter_counts():
    # Published sizes: Qwen2.5-0.5B 0.49B, -7B 7.62B, Llama-3.1-8B 8.03B, Qwen3-4B 4.02B.
    expected = {"qwen2.5-0.5b": 0.494, "qwen2.5-7b": 7.616, "llama-3.1-8b-instruct": 8.030,
                "qwen3-4b": 4.022, "smollm2-135m-instruct": 0.1348}
    for name, billions in expected.items():
        assert abs(models.PRESETS[name].num_params / 1e9 - billions) < 0.002, name
    with pytest.raises(KeyError, match="known presets"):
        models.get_preset("gpt-5")


def test_remat_gives_the_same_gradients():
    config = CONFIGS["qwen2"]
    params = _random_params(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 6)), jnp.int32)

    def loss(params, config):
        return jnp.mean(jax.nn.log_softmax(models.forward(config, params, tokens))[..., 0])

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    ref = grad(params, config)
    for policy in ("full", "dots_saveable"):
        got = grad(params, config.replace(remat_policy=policy))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, ref)


def test_bfloat16_compute_keeps_float32_logits_and_cache_dtype():
    config = CONFIGS["llama"].replace(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = models.init_params(config, jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    cache = models.init_cache(config, 1, 4)
    assert cache["k"].dtype == jnp.bfloat16
    logits, _ = forward_jit(config, params, jnp.ones((1, 2), jnp.int32), cache=cache)
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_bad_inputs_raise_clear_errors():
    config = CONFIGS["llama"]
    params = _random_params(config)
    with pytest.raises(ValueError, match=r"tokens must be \[B, T\]"):
        models.forward(config, params, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask shape"):
        models.forward(config, params, jnp.zeros((1, 3), jnp.int32),
                       attention_mask=jnp.ones((1, 4)))
    cache = models.init_cache(config, 1, 2)
    with pytest.raises(ValueError, match="KV cache overflow"):
        models.forward(config, params, jnp.zeros((1, 3), jnp.int32), cache=cache)


def test_cache_layout_holds_layer_values_heads_before_slots():
    """cache["v"][0] is layer 0's value projection, re-derived in NumPy, at [b, kv_head, slot]."""
    config = CONFIGS["qwen2"]
    params = _random_params(config, seed=7)
    tokens, mask = _left_padded_batch(np.random.default_rng(3), [4, 2], 4)
    cache = models.init_cache(config, 2, 6)
    L, K, Dh = config.num_layers, config.num_kv_heads, config.head_dim
    assert cache["k"].shape == cache["v"].shape == (L, 2, K, 6, Dh)
    _, cache = forward_jit(config, params, jnp.asarray(tokens), attention_mask=jnp.asarray(mask),
                           cache=cache)

    layer = jax.tree.map(lambda x: np.asarray(x[0]), params["layers"])
    x = np.asarray(params["embed"]["embedding"])[tokens]  # [B, T, D]
    normed = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + config.norm_eps)
    normed = normed * layer["input_norm"]["scale"]
    v_proj = layer["self_attn"]["v_proj"]
    values = np.einsum("btd,dkh->bkth", normed, v_proj["kernel"]) + v_proj["bias"][:, None]
    got = np.asarray(cache["v"][0])  # [B, K, S, Dh]
    for b, n in enumerate([4, 2]):
        real = slice(4 - n, 4)
        np.testing.assert_allclose(got[b, :, real], values[b, :, real], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(got[:, :, 4:], 0.0)  # slots not yet written
    assert np.asarray(cache["valid"]).tolist() == [[True] * 4 + [False] * 2,
                                                   [False, False, True, True, False, False]]
