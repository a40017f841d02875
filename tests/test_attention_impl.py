"""`ModelConfig.attention_impl`: `jax.nn.dot_product_attention` against the model's einsum path.

On a CPU `attention_impl="xla"` runs the same `_fused_attention` code as "cudnn" does on a GPU
(only the kernel differs), so these tests check the masking, GQA layout, scale and the zeroed
rows of left padding that both fused variants rely on. "cudnn" itself needs a GPU
(``benchmarks/gpu_suite.py`` uses it there).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import models

# GQA (4 query heads over 2 key/value heads), q/k/v biases, tied embedding.
CONFIG = models.ModelConfig(
    family="qwen2", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, mlp_dim=48, qkv_bias=True, tie_word_embeddings=True,
)
LENGTHS = (7, 3, 1, 5)  # real tokens per row of a left-padded [4, 7] batch


def _params(config):
    """Random parameters with non-trivial norms and biases (every parameter matters)."""
    params = models.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda x: (x.astype(jnp.float32) + 0.1 * rng.standard_normal(x.shape)).astype(x.dtype),
        params)


def _left_padded(total=7, lengths=LENGTHS):
    rng = np.random.default_rng(1)
    tokens = np.zeros((len(lengths), total), np.int32)
    mask = np.zeros((len(lengths), total), bool)
    for b, n in enumerate(lengths):
        tokens[b, total - n:] = rng.integers(1, 64, n)
        mask[b, total - n:] = True
    return jnp.asarray(tokens), jnp.asarray(mask)


def _loss_and_grad(config, params, tokens, mask, weights):
    """A loss reading every logit of every position, so every attention output matters."""
    def loss(params):
        logits = models.forward(config, params, tokens, attention_mask=mask)  # [B, T, V]
        return jnp.sum(jax.nn.log_softmax(logits) * weights), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, logits, grads


def _compare(config_a, config_b, params, rtol, atol):
    tokens, mask = _left_padded()
    weights = jnp.asarray(np.random.default_rng(2).standard_normal((4, 7, 64)), jnp.float32)
    run = jax.jit(_loss_and_grad, static_argnums=0)
    loss_a, logits_a, grads_a = run(config_a, params, tokens, mask, weights)
    loss_b, logits_b, grads_b = run(config_b, params, tokens, mask, weights)
    np.testing.assert_allclose(logits_b, logits_a, rtol=rtol, atol=atol)
    np.testing.assert_allclose(loss_b, loss_a, rtol=rtol)
    flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    assert len(flat_a) == len(flat_b)
    for a, b in zip(flat_a, flat_b, strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol * max(1.0, np.abs(a).max()))


def test_float32_logits_and_gradients_match_einsum_path_with_left_padding():
    params = _params(CONFIG)
    _compare(CONFIG, CONFIG.replace(attention_impl="xla"), params, 1e-5, 1e-5)


def test_bfloat16_logits_and_gradients_match_einsum_path_with_left_padding():
    config = CONFIG.replace(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    _compare(config, config.replace(attention_impl="xla"), _params(config), 2e-2, 2e-2)


def test_rows_without_a_visible_key_output_zero_like_the_einsum_path():
    # Row 2 has one real token at slot 6: slots 0-5 see no key. Both paths must give those
    # queries an attention output of exactly 0, which (pre-norm residual) leaves the hidden
    # state of a padded slot independent of every other token of the row.
    params = _params(CONFIG)
    tokens, mask = _left_padded()
    other = tokens.at[2, 6].set((tokens[2, 6] + 1) % 64)
    hidden = jax.jit(lambda config, tokens: models.hidden_states(
        config, params, tokens, attention_mask=jnp.concatenate([mask, mask]))[0],
        static_argnums=0)
    for impl in ("einsum", "xla"):
        config = CONFIG.replace(attention_impl=impl)
        both = hidden(config, jnp.concatenate([tokens, other]))  # [8, 7, D]
        np.testing.assert_array_equal(both[2, :6], both[6, :6])


def test_cached_prefill_and_decode_match_einsum_path():
    # Prefill (T > 1) runs through dot_product_attention over the cache's slots with the
    # causal offset in the mask; one-token decode steps run the einsum path in both configs.
    params = _params(CONFIG)
    tokens, mask = _left_padded()
    step_tokens = jnp.asarray([[5], [9], [13], [2]], jnp.int32)

    @functools.partial(jax.jit, static_argnums=0)
    def prefill_and_decode(config):
        cache = models.init_cache(config, 4, 9)
        prefill, cache = models.forward(config, params, tokens, attention_mask=mask, cache=cache)
        step1, cache = models.forward(config, params, step_tokens, cache=cache)
        step2, _ = models.forward(config, params, step_tokens + 1, cache=cache)
        return prefill, step1, step2

    results = {impl: prefill_and_decode(CONFIG.replace(attention_impl=impl))
               for impl in ("einsum", "xla")}
    for got, want in zip(results["xla"], results["einsum"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # And both equal the uncached forward pass over prompt + decoded tokens.
    full = jax.jit(models.forward, static_argnums=0)(
        CONFIG, params, jnp.concatenate([tokens, step_tokens], 1),
        attention_mask=jnp.concatenate([mask, jnp.ones((4, 1), bool)], 1))
    np.testing.assert_allclose(results["xla"][1][:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_bad_attention_impl_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        CONFIG.replace(attention_impl="flash")
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs dtype"):
        CONFIG.replace(attention_impl="cudnn")  # float32
    assert CONFIG.replace(attention_impl="cudnn", dtype=jnp.bfloat16).attention_impl == "cudnn"


def test_cudnn_path_passes_jax_shape_checks_when_traced(monkeypatch):
    # No GPU here: tracing alone (jax.eval_shape) runs the cuDNN wrapper's checks of layouts,
    # GQA head counts, dtypes and the mask-as-bias shape, for training (forward and gradient)
    # and for a cached prefill. Only its "is cuDNN installed" probe is replaced.
    fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    if not hasattr(fused, "check_cudnn_version"):
        pytest.skip("jax's cuDNN attention module no longer has check_cudnn_version to stub")
    monkeypatch.setattr(fused, "check_cudnn_version", lambda *args, **kwargs: 90800)
    config = CONFIG.replace(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, attention_impl="cudnn")
    params = jax.eval_shape(lambda: models.init_params(config, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((4, 7), jnp.int32)
    mask = jax.ShapeDtypeStruct((4, 7), bool)

    def loss(params, tokens, mask):
        return models.forward(config, params, tokens, attention_mask=mask).sum()

    assert jax.eval_shape(loss, params, tokens, mask).shape == ()
    grads = jax.eval_shape(jax.grad(loss), params, tokens, mask)
    assert jax.tree.structure(grads) == jax.tree.structure(params)

    def prefill(params, tokens, mask):
        cache = models.init_cache(config, 4, 11)
        return models.forward(config, params, tokens, attention_mask=mask, cache=cache)

    logits, cache = jax.eval_shape(prefill, params, tokens, mask)
    assert logits.shape == (4, 7, 64) and cache["k"].shape == (2, 4, 2, 11, 8)
