"""Conformance of `sample_from_logits` against NumPy re-derivations of each strategy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rlvr_jax import sampling
from rlvr_jax.sampling import SamplingStrategy, sample_from_logits

# Toy logits with distinct probabilities, so no truncation boundary is a tie.
TOY_LOGITS = np.array([2.0, 1.3, 0.9, 0.4, 0.1, -0.3, -0.8, -1.5, -2.2, -3.0], np.float32)
NUM_DRAWS = 200_000
SIGNIFICANCE = 1e-3  # chi-square goodness of fit, fixed key: a deterministic pass/fail


def reference_distribution(logits: np.ndarray, strategy: SamplingStrategy):
    """Sampling distribution and truncated mass, re-derived with sorting and loops in NumPy."""
    z = logits.astype(np.float64) / strategy.temperature
    tempered = np.exp(z - z.max())
    tempered /= tempered.sum()
    order = np.argsort(-tempered)
    kept = np.ones_like(tempered, bool)
    if strategy.top_k > 0:
        kept[order[strategy.top_k :]] = False
    if strategy.top_p < 1.0:
        head = [i for i in order if kept[i]]
        head_mass = tempered[head].sum()
        cumulative = 0.0
        for i in head:
            if cumulative >= strategy.top_p:
                kept[i] = False
            cumulative += tempered[i] / head_mass
    if strategy.min_p > 0.0:
        kept &= tempered >= strategy.min_p * tempered.max()
    q = np.where(kept, tempered, 0.0)
    q /= q.sum()
    return q, tempered[~kept].sum()


STRATEGIES = [
    sampling.temperature(1.0),
    sampling.temperature(0.7),
    sampling.temperature(1.6),
    sampling.top_k(3),
    sampling.top_p(0.8),
    sampling.top_p(0.5, t=0.8),
    sampling.min_p(0.1),
    SamplingStrategy(temperature=1.2, top_k=6, top_p=0.9, min_p=0.05),
    SamplingStrategy(temperature=0.9, top_k=5, top_p=0.7),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_empirical_frequencies_match_truncated_softmax(strategy):
    q, _ = reference_distribution(TOY_LOGITS, strategy)
    logits = jnp.broadcast_to(jnp.asarray(TOY_LOGITS), (NUM_DRAWS, TOY_LOGITS.size))
    draws = np.asarray(sample_from_logits(jax.random.key(0), logits, strategy).token)
    counts = np.bincount(draws, minlength=TOY_LOGITS.size)
    assert counts[q == 0].sum() == 0, "drew a token that truncation should have cut"
    support = q > 0
    if support.sum() > 1:
        _, p_value = stats.chisquare(counts[support], NUM_DRAWS * q[support])
        assert p_value > SIGNIFICANCE, f"frequencies {counts} do not match {q} (p={p_value})"


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
def test_reported_statistics_are_exact(strategy):
    q, truncated = reference_distribution(TOY_LOGITS, strategy)
    draws = sample_from_logits(
        jax.random.key(1), jnp.broadcast_to(jnp.asarray(TOY_LOGITS), (64, 10)), strategy
    )
    tokens = np.asarray(draws.token)
    policy = TOY_LOGITS - np.log(np.exp(TOY_LOGITS.astype(np.float64)).sum())
    entropy = -np.sum(q[q > 0] * np.log(q[q > 0]))
    np.testing.assert_allclose(draws.sampling_logprob, np.log(q[tokens]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(draws.policy_logprob, policy[tokens], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(draws.sampling_entropy, np.full(64, entropy), rtol=1e-5)
    np.testing.assert_allclose(draws.truncated_mass, np.full(64, truncated), atol=1e-6)


def test_truncated_mass_of_top_k_is_the_tail_mass():
    logits = jnp.log(jnp.array([0.5, 0.25, 0.125, 0.125]))
    out = sample_from_logits(jax.random.key(0), logits, sampling.top_k(2))
    np.testing.assert_allclose(out.truncated_mass, 0.25, atol=1e-7)
    entropy = -(2 / 3) * np.log(2 / 3) - (1 / 3) * np.log(1 / 3)
    np.testing.assert_allclose(out.sampling_entropy, entropy, rtol=1e-6)


@pytest.mark.parametrize("no_top_k", [0, -1])
def test_top_k_zero_or_minus_one_means_no_truncation(no_top_k):
    logits = jax.random.normal(jax.random.key(3), (32, 50))
    key = jax.random.key(4)
    plain = sample_from_logits(key, logits, sampling.temperature(0.9))
    off = sample_from_logits(key, logits, SamplingStrategy(temperature=0.9, top_k=no_top_k))
    np.testing.assert_array_equal(plain.token, off.token)
    np.testing.assert_allclose(off.sampling_entropy, plain.sampling_entropy, rtol=1e-6)
    np.testing.assert_array_equal(off.truncated_mass, np.zeros(32))


def test_top_k_at_least_vocab_size_keeps_everything():
    logits = jax.random.normal(jax.random.key(5), (16, 7))
    out = sample_from_logits(jax.random.key(6), logits, sampling.top_k(7))
    np.testing.assert_allclose(out.truncated_mass, 0.0, atol=1e-7)
    np.testing.assert_allclose(out.sampling_logprob, out.policy_logprob, atol=1e-6)


def test_temperature_to_zero_agrees_with_greedy():
    logits = jax.random.normal(jax.random.key(7), (256, 40)) * 2.0
    argmax = np.argmax(np.asarray(logits), axis=-1)
    greedy = sample_from_logits(jax.random.key(8), logits, sampling.greedy())
    cold = sample_from_logits(jax.random.key(9), logits, sampling.temperature(1e-4))
    np.testing.assert_array_equal(greedy.token, argmax)
    np.testing.assert_array_equal(cold.token, argmax)
    np.testing.assert_allclose(cold.sampling_logprob, 0.0, atol=1e-5)
    np.testing.assert_allclose(cold.sampling_entropy, 0.0, atol=1e-4)
    np.testing.assert_array_equal(greedy.sampling_entropy, np.zeros(256))
    np.testing.assert_array_equal(greedy.truncated_mass, np.zeros(256))
    log_softmax = np.asarray(jax.nn.log_softmax(logits))
    expected = log_softmax[np.arange(256), argmax]
    np.testing.assert_allclose(greedy.policy_logprob, expected, rtol=1e-5, atol=1e-6)


def test_same_key_same_samples_and_different_keys_differ():
    logits = jax.random.normal(jax.random.key(10), (64, 100))
    strategy = sampling.top_p(0.9)
    a = sample_from_logits(jax.random.key(11), logits, strategy).token
    b = sample_from_logits(jax.random.key(11), logits, strategy).token
    c = sample_from_logits(jax.random.key(12), logits, strategy).token
    np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(a) != np.asarray(c))


def test_bfloat16_logits_and_jit_with_static_strategy():
    logits = jax.random.normal(jax.random.key(13), (4, 3, 20)).astype(jnp.bfloat16)
    fn = jax.jit(sample_from_logits, static_argnums=2)
    out = fn(jax.random.key(14), logits, SamplingStrategy(temperature=0.8, top_k=5, min_p=0.02))
    assert out.token.shape == (4, 3) and out.token.dtype == jnp.int32
    assert out.sampling_logprob.dtype == jnp.float32
    assert np.all(np.asarray(out.sampling_logprob) <= 0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
    ],
)
def test_invalid_strategies_are_rejected_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingStrategy(**kwargs)


def test_strategy_is_hashable_for_jit():
    assert hash(sampling.top_k(5)) == hash(SamplingStrategy(top_k=5))


def test_nucleus_on_a_large_vocabulary_matches_sorting():
    logits = np.asarray(jax.random.normal(jax.random.key(15), (16, 3000))) * 3.0
    strategy = sampling.top_p(0.7, t=1.3)
    out = sample_from_logits(jax.random.key(16), jnp.asarray(logits), strategy)
    for row in range(16):
        q, truncated = reference_distribution(logits[row], strategy)
        token = int(out.token[row])
        assert q[token] > 0
        np.testing.assert_allclose(out.truncated_mass[row], truncated, atol=1e-5)
        np.testing.assert_allclose(out.sampling_logprob[row], np.log(q[token]), atol=1e-4)
        entropy = -np.sum(q[q > 0] * np.log(q[q > 0]))
        np.testing.assert_allclose(out.sampling_entropy[row], entropy, rtol=1e-4)
