"""pass@k against exact combinatorics, group statistics, Cov(logp, A), answer diversity."""

import itertools
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import metrics


def brute_force_pass_at_k(n, c, k):
    """Probability that a uniformly random k-subset of n samples holds a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_spec_example():
    assert metrics.pass_at_k(16, 3, 4) == pytest.approx(0.6071428571, abs=1e-10)
    assert float(metrics.pass_at_k(jnp.asarray(16), jnp.asarray(3), 4)) == pytest.approx(
        0.6071428571, abs=1e-6
    )


@pytest.mark.parametrize("n", [1, 4, 7])
def test_matches_brute_force_and_binomials(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - comb(n - c, k) / comb(n, k)
            assert metrics.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
            assert metrics.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k))


def test_jax_version_agrees_and_jits():
    n = np.array([16, 16, 64, 200, 5])
    c = np.array([0, 3, 10, 199, 5])
    for k in (1, 4, 5):
        want = metrics.pass_at_k(n, c, k)
        got = jax.jit(lambda n, c, k=k: metrics.pass_at_k(n, c, k))(jnp.asarray(n),
                                                                    jnp.asarray(c))
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert metrics.pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="0 <= c <= n"):
        metrics.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        metrics.pass_at_k(4, 2, 5)


def test_pass_at_k_curve_from_rewards():
    rewards = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    curve = metrics.pass_at_k_curve(rewards)
    assert curve[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert curve[2] == pytest.approx((0.5 + 0 + 1) / 3)
    assert curve[4] == pytest.approx(2 / 3)
    assert list(curve) == [1, 2, 3, 4]


def test_group_statistics():
    stats = metrics.group_statistics(np.array([[1, 1], [0, 0], [1, 0], [0, 1]], np.float32))
    assert float(stats["frac_all_correct"]) == 0.25
    assert float(stats["frac_all_wrong"]) == 0.25
    assert float(stats["frac_mixed"]) == 0.5
    assert float(stats["reward_mean"]) == 0.5


def test_covariance_matches_numpy_over_valid_tokens():
    rng = np.random.default_rng(0)
    logp = rng.normal(size=(3, 4, 5)).astype(np.float32)
    adv = rng.normal(size=(3, 4)).astype(np.float32)
    mask = rng.integers(0, 2, size=(3, 4, 5)).astype(np.float32)
    x = logp[mask > 0]
    y = np.broadcast_to(adv[..., None], logp.shape)[mask > 0]
    want = np.cov(x, y, ddof=0)[0, 1]
    np.testing.assert_allclose(metrics.logp_advantage_covariance(logp, adv, mask), want,
                               rtol=1e-5)


def test_answer_diversity():
    answers = [["4", "4", "5", None], ["x", "y", "z", "x"]]
    rewards = np.array([[1, 1, 0, 0], [1, 1, 0, 1]])
    out = metrics.answer_diversity(answers, rewards)
    assert out["distinct_answers"] == pytest.approx((2 + 3) / 2)
    assert out["distinct_correct_answers"] == pytest.approx((1 + 2) / 2)
    with pytest.raises(ValueError, match="answers must be 2 groups of 4"):
        metrics.answer_diversity([["4"]], rewards)
