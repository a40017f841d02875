"""Chunked log-probs and entropies against the naive full-logits computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import models
from rlvr_jax.logprobs import TokenLogprobs, chunked_logprobs_and_entropy, token_logprobs

B, T, D, V = 2, 12, 8, 37


def numpy_logprobs_and_entropy(hidden, unembedding, targets, temperature=1.0):
    """Float64 re-derivation over the full [B, T, V] logits."""
    logits = np.asarray(hidden, np.float64) @ np.asarray(unembedding, np.float64) / temperature
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    chosen = np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1)[..., 0]
    entropy = -(np.exp(log_probs) * log_probs).sum(-1)
    return chosen, entropy


def naive_jax(hidden, unembedding, targets, temperature=1.0):
    log_probs = jax.nn.log_softmax(hidden @ unembedding / temperature, axis=-1)  # [B, T, V]
    chosen = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return chosen, -jnp.sum(jnp.exp(log_probs) * log_probs, -1)


def random_inputs(seed=0, b=B, t=T, d=D, v=V):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k1, (b, t, d))
    unembedding = jax.random.normal(k2, (d, v)) * 0.7
    targets = jax.random.randint(k3, (b, t), 0, v)
    return hidden, unembedding, targets


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 5, 12, 100])
def test_chunked_values_match_numpy(chunk_size):
    hidden, unembedding, targets = random_inputs()
    logprobs, entropy = chunked_logprobs_and_entropy(
        hidden, unembedding, targets, chunk_size=chunk_size
    )
    expected_logprobs, expected_entropy = numpy_logprobs_and_entropy(hidden, unembedding, targets)
    assert logprobs.shape == entropy.shape == (B, T)
    np.testing.assert_allclose(logprobs, expected_logprobs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, expected_entropy, rtol=1e-5, atol=1e-5)


def test_temperature_divides_the_logits():
    hidden, unembedding, targets = random_inputs(1)
    logprobs, entropy = chunked_logprobs_and_entropy(
        hidden, unembedding, targets, chunk_size=5, temperature=0.6
    )
    expected = numpy_logprobs_and_entropy(hidden, unembedding, targets, temperature=0.6)
    np.testing.assert_allclose(logprobs, expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, expected[1], rtol=1e-5, atol=1e-5)


def test_uniform_logits_have_entropy_log_v():
    hidden = jnp.zeros((1, 3, D))
    logprobs, entropy = chunked_logprobs_and_entropy(
        hidden, jnp.ones((D, V)), jnp.zeros((1, 3), jnp.int32), chunk_size=2
    )
    np.testing.assert_allclose(entropy, np.full((1, 3), np.log(V)), rtol=1e-6)
    np.testing.assert_allclose(logprobs, np.full((1, 3), -np.log(V)), rtol=1e-6)


@pytest.mark.parametrize("chunk_size, temperature", [(4, 1.0), (5, 0.7)])
def test_chunked_gradients_match_naive(chunk_size, temperature):
    hidden, unembedding, targets = random_inputs(2)
    weights = jax.random.normal(jax.random.key(3), (2, B, T))  # arbitrary cotangents

    def objective(fn):
        def f(h, w):
            logprobs, entropy = fn(h, w)
            return jnp.sum(weights[0] * logprobs) + jnp.sum(weights[1] * entropy)

        return jax.grad(f, argnums=(0, 1))(hidden, unembedding)

    chunked = objective(
        lambda h, w: chunked_logprobs_and_entropy(
            h, w, targets, chunk_size=chunk_size, temperature=temperature
        )
    )
    naive = objective(lambda h, w: naive_jax(h, w, targets, temperature))
    for got, want in zip(chunked, naive, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _temp_bytes(fn, *args):
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_full_logits_never_materialised_forward_or_backward():
    b, t, d, v, chunk = 2, 1024, 16, 4096, 32
    hidden, unembedding, targets = random_inputs(4, b, t, d, v)
    full_logits_bytes = b * t * v * 4

    def loss(fn):
        return lambda h, w: sum(jnp.sum(x) for x in fn(h, w))

    chunked = lambda h, w: chunked_logprobs_and_entropy(h, w, targets, chunk_size=chunk)  # noqa: E731
    naive = lambda h, w: naive_jax(h, w, targets)  # noqa: E731
    assert _temp_bytes(naive, hidden, unembedding) >= full_logits_bytes
    assert _temp_bytes(chunked, hidden, unembedding) < full_logits_bytes / 4
    grad_chunked = jax.grad(loss(chunked), argnums=(0, 1))
    grad_naive = jax.grad(loss(naive), argnums=(0, 1))
    assert _temp_bytes(grad_naive, hidden, unembedding) >= full_logits_bytes
    assert _temp_bytes(grad_chunked, hidden, unembedding) < full_logits_bytes / 4


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((B, T), (D, V), (B, T)), "hidden"),
        (((B, T, D), (D + 1, V), (B, T)), "unembedding"),
        (((B, T, D), (D, V), (B, T + 1)), "targets"),
    ],
)
def test_bad_shapes_are_named(shapes, message):
    hidden, unembedding, targets = (jnp.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        chunked_logprobs_and_entropy(hidden, unembedding, targets.astype(jnp.int32))


def test_bad_chunk_size_is_named():
    hidden, unembedding, targets = random_inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs_and_entropy(hidden, unembedding, targets, chunk_size=0)


TINY = models.ModelConfig(
    family="qwen2",
    vocab_size=61,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=48,
    qkv_bias=True,
    tie_word_embeddings=False,
)


@pytest.fixture(scope="module")
def tiny_params():
    return jax.jit(models.init_params, static_argnums=0)(TINY, jax.random.key(0))


def test_token_logprobs_match_full_forward_on_left_padded_batch(tiny_params):
    params = tiny_params
    tokens = jax.random.randint(jax.random.key(1), (3, 10), 0, TINY.vocab_size)
    mask = jnp.arange(10)[None, :] >= jnp.array([[0], [3], [7]])  # left padding 0, 3, 7
    score = jax.jit(lambda p, x, m: token_logprobs(TINY, p, x, m, chunk_size=4))
    out = score(params, tokens, mask)

    forward = jax.jit(lambda p, x, m: models.forward(TINY, p, x, attention_mask=m))
    logits = np.asarray(forward(params, tokens, mask), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # [B, T, V]
    expected = np.take_along_axis(log_probs[:, :-1], np.asarray(tokens)[:, 1:, None], -1)[..., 0]
    expected_entropy = -(np.exp(log_probs) * log_probs).sum(-1)[:, :-1]
    valid = np.asarray(mask[:, 1:] & mask[:, :-1])
    np.testing.assert_array_equal(out.mask[:, 1:], valid)
    assert not np.any(np.asarray(out.mask[:, 0]))
    np.testing.assert_allclose(out.logprobs[:, 1:], np.where(valid, expected, 0), atol=1e-5)
    np.testing.assert_allclose(out.entropy[:, 1:], np.where(valid, expected_entropy, 0), atol=1e-5)

    prompt, response = out.split(6)
    assert isinstance(prompt, TokenLogprobs) and prompt.logprobs.shape == (3, 6)
    np.testing.assert_array_equal(response.logprobs, out.logprobs[:, 6:])
    assert not np.any(np.asarray(prompt.mask[2]))  # row 2's prompt part is all padding


def test_token_logprobs_gradient_flows_to_params(tiny_params):
    params = tiny_params
    tokens = jax.random.randint(jax.random.key(3), (2, 7), 0, TINY.vocab_size)

    def loss(p, fn):
        return jnp.sum(fn(p))

    chunked = jax.jit(jax.grad(loss), static_argnums=1)(
        params, lambda p: token_logprobs(TINY, p, tokens, chunk_size=3)[0]
    )

    def naive(p):
        log_probs = jax.nn.log_softmax(models.forward(TINY, p, tokens), -1)[:, :-1]
        return jnp.take_along_axis(log_probs, tokens[:, 1:, None], -1)[..., 0]

    expected = jax.jit(jax.grad(loss), static_argnums=1)(params, naive)
    for got, want in zip(jax.tree.leaves(chunked), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_scoring_from_a_position_scores_only_the_tokens_after_it(tiny_params):
    """``score_from=s`` runs the output layer on the positions predicting tokens ``s..T-1``:
    those scores and masks equal the full scoring's, every earlier position is 0 and masked,
    and the gradient is the full scoring's gradient of the same tokens."""
    tokens = jax.random.randint(jax.random.key(5), (3, 10), 0, TINY.vocab_size)
    mask = jnp.arange(10)[None, :] >= jnp.array([[0], [3], [7]])  # row 2: padding up to 7
    full = token_logprobs(TINY, tiny_params, tokens, mask, chunk_size=4)
    part = token_logprobs(TINY, tiny_params, tokens, mask, chunk_size=4, score_from=6)
    for got, want in zip(part, full, strict=True):
        np.testing.assert_allclose(got[:, 6:], want[:, 6:], atol=1e-6)
        assert not np.any(np.asarray(got[:, :6]))
    assert not np.asarray(part.mask[2, 7])  # the first real token of row 2 has no prediction

    def total(p, score_from):
        scores = token_logprobs(TINY, p, tokens, mask, chunk_size=4, score_from=score_from)
        return jnp.sum(scores.logprobs[:, 6:])

    grads = jax.grad(total)(tiny_params, 6)
    expected = jax.grad(total)(tiny_params, 1)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"score_from=10 must be in \[1, T\)"):
        token_logprobs(TINY, tiny_params, tokens, mask, score_from=10)
