"""The exploration literature's estimators: pass@k against verl 0.9.1 and a NumPy
re-derivation, PSR / NSR / W-REINFORCE closed forms, the entropy-shaped advantage's worked
values and properties. (Degenerate groups, jit, vmap and bfloat16 for every registered
estimator: ``test_advantages``.)"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import advantages
from rlvr_jax import exploration_advantages as explore

REFERENCE = json.loads(
    (pathlib.Path(__file__).parent / "reference" / "verl_0_9_1.json").read_text())


def ref_passk(r, ddof=1, eps=1e-6, normalise=True):
    """Leave-one-out ``max_j r_j - max_{j != i} r_j``, over ``std + eps``, in float64 loops."""
    out = np.zeros(r.shape)
    for b, group in enumerate(np.asarray(r, np.float64)):
        for i in range(len(group)):
            gain = group.max() - np.delete(group, i).max()
            if gain > 0:
                out[b, i] = gain / (np.std(group, ddof=ddof) + eps) if normalise else gain
    return out


def ref_entropy_advantage(r, entropy, mask, alpha, kappa, ddof=1, eps=1e-6):
    out = np.zeros(mask.shape)
    for b, group in enumerate(np.asarray(r, np.float64)):
        std = np.std(group, ddof=ddof)
        base = np.zeros(len(group)) if np.all(group == group[0]) else (
            (group - group.mean()) / (std + eps))
        for g, t in zip(*np.nonzero(mask[b]), strict=True):
            out[b, g, t] = base[g] + min(alpha * entropy[b, g, t], abs(base[g]) / kappa)
    return out


# ------------------------------------------------------------------------------------------
# Pass@k
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", REFERENCE["grpo_passk"],
                         ids=lambda c: f"G{len(c['rewards'][0])}-std{c['normalise_by_std']}")
def test_passk_agrees_with_verl(case):
    got = explore.grpo_passk(np.asarray(case["rewards"], np.float32),
                             normalise_by_std=case["normalise_by_std"])
    np.testing.assert_allclose(got, case["advantages"], rtol=1e-6, atol=1e-7)
    assert np.count_nonzero(case["advantages"]) >= 2  # the reference is not all zeros


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("binary", [True, False])
def test_passk_matches_the_leave_one_out_reference(binary, ddof):
    rng = np.random.default_rng(ddof)
    r = (rng.integers(0, 2, (40, 5)) if binary else rng.integers(0, 4, (40, 5)) / 3.0)
    r = r.astype(np.float32)  # few distinct values: ties at the top are common
    for normalise in (True, False):
        np.testing.assert_allclose(
            explore.grpo_passk(r, std_ddof=ddof, normalise_by_std=normalise),
            ref_passk(r, ddof, normalise=normalise), rtol=1e-5, atol=1e-7)


def test_passk_worked_values():
    """One correct of four: std (ddof 1) 0.5, so 1 / 0.500001 = 1.999996 on it. Floats
    [0.1, 0.7, 0.4, 0.2]: margin 0.3, std 0.264575, 1.133889 on the 0.7. Tied best: 0."""
    r = np.array([[1, 0, 0, 0], [0.1, 0.7, 0.4, 0.2], [1, 1, 0, 0], [0.5] * 4], np.float32)
    np.testing.assert_allclose(explore.grpo_passk(r), [[1.999996, 0, 0, 0], [0, 1.133889, 0, 0],
                                                       [0] * 4, [0] * 4], rtol=1e-6)
    with pytest.raises(ValueError, match="at least 2 responses per group"):
        explore.grpo_passk(np.ones((2, 1)))


# ------------------------------------------------------------------------------------------
# PSR, NSR, W-REINFORCE
# ------------------------------------------------------------------------------------------


def test_signed_reinforce_closed_forms():
    r = np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], np.float32)
    correct = r == 1
    np.testing.assert_array_equal(explore.psr(r), np.where(correct, 1.0, 0.0))
    np.testing.assert_array_equal(explore.nsr(r), np.where(correct, 0.0, -1.0))
    np.testing.assert_allclose(explore.w_reinforce(r), np.where(correct, 0.1, -1.0), rtol=1e-7)
    np.testing.assert_array_equal(explore.w_reinforce(r, positive_weight=1.0),
                                  np.where(correct, 1.0, -1.0))  # REINFORCE on {-1, +1}
    np.testing.assert_array_equal(explore.w_reinforce(r, positive_weight=0.0), explore.nsr(r))
    for name in ("psr", "nsr", "w_reinforce"):
        assert advantages.get(name) is getattr(explore, name)
        assert advantages.spec(name).binary_rewards


def test_signed_reinforce_refuses_non_binary_rewards_outside_jit():
    for fn in (explore.psr, explore.nsr, explore.w_reinforce):
        with pytest.raises(ValueError, match=r"binary rewards.*0\.5"):
            fn(np.array([[1.0, 0.5]]))
    got = jax.jit(explore.nsr)(jnp.array([[0.9, 0.2]]))  # inside jit: r > 0.5 is correct
    np.testing.assert_array_equal(got, [[0.0, -1.0]])
    with pytest.raises(ValueError, match="positive_weight must be >= 0"):
        explore.w_reinforce(np.ones((1, 2)), positive_weight=-0.1)


# ------------------------------------------------------------------------------------------
# Entropy-shaped advantage
# ------------------------------------------------------------------------------------------


def test_entropy_advantage_worked_values():
    """r = [1, 0, 0, 0]: GRPO gives 0.75 / 0.500001 = 1.499997 and -0.499999. With alpha 0.4
    and kappa 2, entropy 0.5 adds min(0.2, |A| / 2) = 0.2 to both; entropy 3 adds
    min(1.2, |A| / 2): 0.749999 to the correct, 0.25 to the wrong responses."""
    r = np.array([[1, 0, 0, 0]], np.float32)
    entropy = np.array([[[0.5, 3.0, 9.0]] * 4], np.float32)
    mask = np.ones_like(entropy)
    mask[0, :, 2] = 0.0  # padding
    got = explore.entropy_advantage(r, entropy=entropy, response_mask=mask)
    correct, wrong = 1.499997, -0.499999
    expected = [[correct + 0.2, correct * 1.5, 0]] + [[wrong + 0.2, wrong / 2, 0]] * 3
    np.testing.assert_allclose(got, [expected], rtol=1e-6)


def test_entropy_advantage_matches_the_reference_and_keeps_signs():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 2, (6, 5)).astype(np.float32)
    r[0] = 1.0  # a degenerate group stays 0
    entropy = rng.exponential(2.0, (6, 5, 7)).astype(np.float32)
    mask = (rng.uniform(size=(6, 5, 7)) < 0.8).astype(np.float32)
    for alpha, kappa in ((0.4, 2.0), (1.0, 1.5), (0.05, 4.0)):
        got = np.asarray(explore.entropy_advantage(r, entropy=entropy, response_mask=mask,
                                                   alpha=alpha, kappa=kappa))
        np.testing.assert_allclose(got, ref_entropy_advantage(r, entropy, mask, alpha, kappa),
                                   rtol=1e-5, atol=1e-7)
        base = np.asarray(advantages.grpo(r))[..., None] * mask
        assert np.all(np.sign(got) == np.sign(base))  # kappa > 1: the bonus never flips a sign
        np.testing.assert_array_equal(got[0], 0.0)
    no_bonus = explore.entropy_advantage(r, entropy=entropy, response_mask=mask, alpha=0.0)
    np.testing.assert_allclose(no_bonus, np.asarray(advantages.grpo(r))[..., None] * mask,
                               rtol=1e-6)


def test_entropy_advantage_is_a_constant_of_the_entropy_and_checks_its_input():
    r = np.array([[1, 0, 0]], np.float32)
    entropy = jnp.full((1, 3, 4), 0.3)
    mask = np.ones((1, 3, 4), np.float32)
    grad = jax.grad(lambda h: explore.entropy_advantage(r, entropy=h, response_mask=mask).sum())
    np.testing.assert_array_equal(grad(entropy), 0.0)
    with pytest.raises(ValueError, match=r"entropy must have shape \[B, G, L\] = \[1, 3, L\]"):
        explore.entropy_advantage(r, entropy=np.ones((1, 4, 4)), response_mask=mask)
    with pytest.raises(ValueError, match="kappa > 0"):
        explore.entropy_advantage(r, entropy=entropy, response_mask=mask, kappa=0.0)
    assert advantages.spec("entropy_advantage").inputs == ("entropy", "response_mask")
