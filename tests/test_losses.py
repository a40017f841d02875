"""Policy loss: aggregation formulas by hand, analytic gradients, micro-batch invariance, KL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr_jax import losses


def batch(seed=0, N=6, L=5):
    rng = np.random.default_rng(seed)
    logp_old = -rng.exponential(size=(N, L)).astype(np.float32)
    logp = (logp_old + rng.normal(scale=0.3, size=(N, L))).astype(np.float32)
    adv = rng.normal(size=(N,)).astype(np.float32)
    lengths = rng.integers(1, L + 1, size=N)
    lengths[-1] = 0  # one empty response
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.float32)
    return logp, logp_old, adv, mask


def ref_token_loss(logp, logp_old, adv, clip_low, clip_high, dual=None):
    """Per-token clipped surrogate in float64, written with explicit cases."""
    out = np.zeros(logp.shape)
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            rho = np.exp(np.float64(logp[i, t]) - logp_old[i, t])
            a = float(adv[i])
            clipped = min(max(rho, 1 - clip_low), 1 + clip_high)
            value = -min(rho * a, clipped * a)
            if dual is not None and a < 0:
                value = min(value, -dual * a)
            out[i, t] = value
    return out


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_each_aggregation_equals_its_formula(aggregation):
    logp, logp_old, adv, mask = batch(1)
    token = ref_token_loss(logp, logp_old, adv, 0.2, 0.28)
    N = mask.shape[0]
    if aggregation == "token_mean":
        want = (token * mask).sum() / mask.sum()
    elif aggregation == "seq_mean_token_mean":
        rows = [(token[i] * mask[i]).sum() / mask[i].sum() for i in range(N) if mask[i].sum()]
        want = np.mean(rows)
    elif aggregation == "seq_mean_token_sum":
        rows = [(token[i] * mask[i]).sum() for i in range(N) if mask[i].sum()]
        want = np.mean(rows)
    else:
        want = (token * mask).sum() / (N * 8)
    loss, _ = losses.policy_loss(logp, logp_old, adv, mask, clip_high=0.28,
                                 aggregation=aggregation, max_len=8)
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_hand_built_two_token_example():
    # ratio e^{0.5} = 1.6487 > 1.2 with A = +1 -> clipped at 1.2; ratio 1 with A = -2 -> 2.
    logp = np.array([[0.5, 0.0]], np.float32)
    old = np.zeros_like(logp)
    adv = np.array([[1.0, -2.0]], np.float32)
    mask = np.ones_like(logp)
    loss, metrics = losses.policy_loss(logp, old, adv, mask)
    np.testing.assert_allclose(loss, (-1.2 + 2.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_frac_high"], 0.5)
    np.testing.assert_allclose(metrics["clip_frac_low"], 0.0)
    np.testing.assert_allclose(metrics["ratio_max"], np.exp(0.5), rtol=1e-6)
    np.testing.assert_allclose(metrics["ratio_min"], 1.0)


def test_dual_clip_caps_negative_advantage_loss():
    logp = np.array([[2.0, 2.0]], np.float32)  # ratio e^2 = 7.39
    old = np.zeros_like(logp)
    adv = np.array([[-1.0, 1.0]], np.float32)
    loss, metrics = losses.policy_loss(logp, old, adv, np.ones_like(logp), dual_clip=3.0)
    # token 0: -min(-7.39, -1.2) = 7.39, capped at 3; token 1: clipped to -1.2
    np.testing.assert_allclose(loss, (3.0 - 1.2) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["dual_clip_frac"], 0.5)


@pytest.mark.parametrize("dual", [None, 2.0])
def test_matches_reference_with_dual_clip(dual):
    logp, logp_old, adv, mask = batch(2)
    adv = adv * 3
    logp = logp_old + 2.0 * (logp - logp_old)  # push ratios outside the clip range
    token = ref_token_loss(logp, logp_old, adv, 0.2, 0.28, dual)
    loss, _ = losses.policy_loss(logp, logp_old, adv, mask, clip_high=0.28, dual_clip=dual)
    np.testing.assert_allclose(loss, (token * mask).sum() / mask.sum(), rtol=1e-5)


def test_gradient_matches_analytic_form():
    """d loss / d logp_t = -A rho_t / n where the clip is inactive, else 0."""
    logp, logp_old, adv, mask = batch(3)
    logp = logp_old + 1.5 * (logp - logp_old)
    grad = jax.grad(lambda lp: losses.policy_loss(lp, logp_old, adv, mask, clip_high=0.28)[0])(
        jnp.asarray(logp)
    )
    rho = np.exp(logp.astype(np.float64) - logp_old)
    a = adv[:, None].astype(np.float64)
    clipped = ((a > 0) & (rho > 1.28)) | ((a < 0) & (rho < 0.8))
    expected = np.where(clipped, 0.0, -a * rho) * mask / mask.sum()
    assert clipped[mask > 0].any() and (~clipped[mask > 0]).any()  # both regions exercised
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
@pytest.mark.parametrize("splits", [2, 3])
def test_micro_batches_with_global_normaliser_sum_to_full_batch(aggregation, splits):
    logp, logp_old, adv, mask = batch(4, N=6)
    ref = -np.abs(logp_old) - 0.1
    entropy = np.abs(logp_old) + 0.5
    kwargs = dict(aggregation=aggregation, clip_high=0.28, logp_ref=ref, kl_coef=0.1,
                  entropy=entropy, entropy_coef=0.01, max_len=7)

    def full(lp):
        return losses.policy_loss(lp, logp_old, adv, mask, **kwargs)

    normalizer = losses.loss_normalizer(mask, aggregation, max_len=7)
    tokens = losses.loss_normalizer(mask, "token_mean")

    def split(lp):
        total, metric_sum = 0.0, 0.0
        for rows in np.array_split(np.arange(mask.shape[0]), splits):
            loss, metrics = losses.policy_loss(
                lp[rows], logp_old[rows], adv[rows], mask[rows], normalizer=normalizer,
                metrics_normalizer=tokens, **{**kwargs, "logp_ref": ref[rows],
                                              "entropy": entropy[rows]})
            total, metric_sum = total + loss, metric_sum + metrics["approx_kl"]
        return total, metric_sum

    (loss_full, metrics_full), grad_full = jax.value_and_grad(full, has_aux=True)(
        jnp.asarray(logp))
    (loss_split, kl_split), grad_split = jax.value_and_grad(split, has_aux=True)(
        jnp.asarray(logp))
    np.testing.assert_allclose(loss_split, loss_full, rtol=1e-6)
    np.testing.assert_allclose(grad_split, grad_full, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(kl_split, metrics_full["approx_kl"], rtol=1e-6)


def test_kl_and_entropy_terms_enter_the_loss():
    logp, logp_old, adv, mask = batch(5)
    ref = logp - 0.3
    base, _ = losses.policy_loss(logp, logp_old, adv, mask)
    with_kl, metrics = losses.policy_loss(logp, logp_old, adv, mask, logp_ref=ref, kl_coef=0.5,
                                          kl_kind="k2")
    np.testing.assert_allclose(with_kl - base, 0.5 * 0.5 * 0.09, rtol=1e-4)
    np.testing.assert_allclose(metrics["kl_ref"], 0.045, rtol=1e-4)
    entropy = np.full_like(logp, 2.0)
    with_entropy, metrics = losses.policy_loss(logp, logp_old, adv, mask, entropy=entropy,
                                               entropy_coef=0.1)
    np.testing.assert_allclose(with_entropy - base, -0.2, rtol=1e-5)
    np.testing.assert_allclose(metrics["entropy"], 2.0, rtol=1e-6)


def test_per_token_advantages_are_accepted():
    logp, logp_old, adv, mask = batch(6)
    per_seq, _ = losses.policy_loss(logp, logp_old, adv, mask)
    per_tok, _ = losses.policy_loss(logp, logp_old, np.broadcast_to(adv[:, None], mask.shape),
                                    mask)
    np.testing.assert_allclose(per_seq, per_tok, rtol=1e-6)


def test_group_shaped_inputs_and_jit():
    logp, logp_old, adv, mask = batch(7, N=6)
    flat, _ = losses.policy_loss(logp, logp_old, adv, mask)
    shaped = jax.jit(losses.policy_loss)(logp.reshape(2, 3, -1), logp_old.reshape(2, 3, -1),
                                         adv.reshape(2, 3), mask.reshape(2, 3, -1))[0]
    np.testing.assert_allclose(shaped, flat, rtol=1e-6)


def test_empty_batch_is_finite():
    z = np.zeros((2, 3), np.float32)
    loss, metrics = losses.policy_loss(z, z, np.ones(2, np.float32), z)
    assert float(loss) == 0.0
    assert all(np.isfinite(v) for k, v in metrics.items() if k not in ("ratio_max", "ratio_min"))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 20), st.floats(-20, -1e-3)),
                min_size=1, max_size=16))
def test_k3_is_nonnegative_and_zero_iff_equal(deltas):
    """(|d| below ~1e-19 underflows d^2 / 2 in float32, so the test keeps |d| >= 1e-3.)"""
    logp = np.zeros(len(deltas), np.float32)
    ref = np.asarray(deltas, np.float32)
    k3 = np.asarray(losses.kl_penalty(jnp.asarray(logp), jnp.asarray(ref), "k3"))
    assert np.all(k3 >= 0)
    np.testing.assert_array_equal(k3 == 0, ref == 0)


def test_kl_estimators_closed_forms():
    logp = np.array([-1.0, -2.0], np.float32)
    ref = np.array([-1.5, -2.0], np.float32)
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k1"), [0.5, 0.0])
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k2"), [0.125, 0.0])
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k3"),
                               [np.exp(-0.5) + 0.5 - 1, 0.0], rtol=1e-6)


def test_bad_input_is_named():
    logp, logp_old, adv, mask = batch(8)
    with pytest.raises(ValueError, match="unknown loss aggregation 'seq-mean'"):
        losses.policy_loss(logp, logp_old, adv, mask, aggregation="seq-mean")
    with pytest.raises(ValueError, match="mask"):
        losses.policy_loss(logp, logp_old, adv, mask[:, :-1])
    with pytest.raises(ValueError, match="advantages must have shape"):
        losses.policy_loss(logp, logp_old, adv[:-1], mask)
    with pytest.raises(ValueError, match="kl_coef > 0 needs logp_ref"):
        losses.policy_loss(logp, logp_old, adv, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy_coef > 0 needs entropy"):
        losses.policy_loss(logp, logp_old, adv, mask, entropy_coef=0.1)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        losses.policy_loss(logp, logp_old, adv, mask, dual_clip=0.5)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        losses.kl_penalty(logp, logp, "k4")
