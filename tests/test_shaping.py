"""DAPO's overlong penalty (in tokens) and mixed-group mask."""

import numpy as np
import pytest

from rlvr_jax import shaping


def test_overlong_penalty_piecewise_values():
    lengths = np.array([0, 80, 84, 90, 100, 101, 5000])
    got = shaping.overlong_penalty(lengths, max_len=100, cache_len=20)
    np.testing.assert_allclose(got, [0, 0, -0.2, -0.5, -1.0, -1.0, -1.0], atol=1e-7)


def test_overlong_penalty_rejects_bad_buffer():
    with pytest.raises(ValueError, match="cache_len"):
        shaping.overlong_penalty(np.array([1]), max_len=10, cache_len=0)
    with pytest.raises(ValueError, match="cache_len"):
        shaping.overlong_penalty(np.array([1]), max_len=10, cache_len=11)


def test_mixed_groups_is_zero_lt_k_lt_g_for_binary_rewards():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 2, size=(50, 4))
    k = r.sum(1)
    np.testing.assert_array_equal(shaping.mixed_groups(r), (k > 0) & (k < 4))
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        shaping.mixed_groups(r[0])
