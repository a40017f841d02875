"""Advantage estimators against the spec's worked values, NumPy re-derivations and properties.

The NumPy references below loop over groups and responses in float64, written from
``shared/docs/estimators.md`` without reusing the implementation.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlvr_jax import advantages as adv

# ------------------------------------------------------------------------------------------
# Independent NumPy references (float64, loops)
# ------------------------------------------------------------------------------------------


def ref_grpo(r, ddof=1, eps=1e-6):
    out = np.zeros_like(r, dtype=np.float64)
    for b, group in enumerate(r):
        if np.all(group == group[0]):
            continue
        std = np.std(group, ddof=ddof) if len(group) > ddof else 0.0
        out[b] = (group - group.mean()) / (std + eps)
    return out


def ref_rloo(r):
    out = np.zeros_like(r, dtype=np.float64)
    G = r.shape[1]
    for b, group in enumerate(r):
        for i in range(G):
            others = [group[j] for j in range(G) if j != i]
            out[b, i] = group[i] - sum(others) / len(others)
    return out


def ref_reinforce_pp(r, mask, ddof=1, eps=1e-6):
    centred = r - r.mean(axis=1, keepdims=True)
    values = [centred[b, g] for b, g, t in zip(*np.nonzero(mask), strict=True)]
    mu = np.mean(values)
    sigma = np.std(values, ddof=ddof)
    out = np.zeros(mask.shape)
    for b, g, t in zip(*np.nonzero(mask), strict=True):
        out[b, g, t] = (centred[b, g] - mu) / (sigma + eps)
    return out


def ref_asym(r, beta_pos, beta_neg):
    out = np.zeros_like(r, dtype=np.float64)
    for b, group in enumerate(r):
        p = group.mean()
        if p in (0.0, 1.0):
            continue
        for i, ri in enumerate(group):
            out[b, i] = ((1 - p) / p) ** beta_pos if ri == 1 else -((p / (1 - p)) ** beta_neg)
    return out


def ref_lens(r, logp, mask, alpha=0.25, ddof=1, eps=1e-6, length_norm=True):
    B, G = r.shape
    out = np.zeros((B, G))
    for b in range(B):
        lengths = mask[b].sum(-1)
        sums = (logp[b] * mask[b]).sum(-1)
        pi = np.exp(np.where(lengths > 0, sums / np.maximum(lengths, 1), 0.0))
        seq_prob = pi if length_norm else np.exp(sums)
        if np.all(r[b] >= 1):
            continue
        floor = 2 * pi.max()
        if np.all(r[b] <= 0):
            difficulty = floor
        else:
            d_imp = 1.0 / np.mean(r[b] / seq_prob)
            difficulty = max(d_imp, floor)
        calibrated = r[b] - (1 - r[b]) / G * pi / (difficulty - pi)
        if np.all(r[b] <= 0):
            out[b] = alpha * (calibrated - calibrated.mean())
        else:
            out[b] = (calibrated - calibrated.mean()) / (np.std(calibrated, ddof=ddof) + eps)
    return out


def ref_confidence(logp_row, mask_row, rho, kind):
    values = sorted(logp_row[mask_row > 0])
    if not values:
        return 1.0
    n_low = max(1, math.ceil(rho * len(values)))
    if kind == "low_tokens":
        return math.exp(sum(values[:n_low]) / n_low)
    if kind == "all_tokens":
        return math.exp(sum(values) / len(values))
    return math.exp(sum(values) / n_low)


def ref_progrpo(r, logp, mask, plogp, pmask, alpha, rho, kind, on_all_correct, only_correct):
    base = ref_grpo(r)
    out = base.copy()
    for b in range(r.shape[0]):
        k = np.sum(r[b] > 0)
        if k == 0 or (k == r.shape[1] and not on_all_correct):
            continue
        prompt_values = plogp[b][pmask[b] > 0]
        c_q = math.exp(prompt_values.mean()) if prompt_values.size else 1.0
        for i in range(r.shape[1]):
            if only_correct and r[b, i] <= 0:
                continue
            out[b, i] += alpha * (c_q - ref_confidence(logp[b, i], mask[b, i], rho, kind))
    return out


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


def random_batch(seed, B=6, G=5, L=7, P=4, binary=True):
    rng = np.random.default_rng(seed)
    if binary:
        r = rng.integers(0, 2, size=(B, G)).astype(np.float32)
        r[0] = 0.0  # an all-wrong group
        r[1] = 1.0  # an all-correct group
    else:
        r = rng.normal(size=(B, G)).astype(np.float32)
    logp = -rng.exponential(1.5, size=(B, G, L)).astype(np.float32)
    lengths = rng.integers(0, L + 1, size=(B, G))
    lengths[-1, 0] = 0  # a zero-length response
    mask = (np.arange(L)[None, None, :] < lengths[..., None]).astype(np.float32)
    plogp = -rng.exponential(2.0, size=(B, P)).astype(np.float32)
    pmask = np.ones((B, P), np.float32)
    pmask[:, 0] = 0.0  # left padding
    return r, logp, mask, plogp, pmask


def assert_finite(x):
    assert np.all(np.isfinite(np.asarray(x, np.float32))), x


# ------------------------------------------------------------------------------------------
# Worked values from the spec
# ------------------------------------------------------------------------------------------


def test_asym_grpo_worked_values():
    r = jnp.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    a = np.asarray(adv.asym_grpo(r))
    np.testing.assert_allclose(a[0], [2.687875, -0.644394, -0.644394, -0.644394], atol=1e-5)
    np.testing.assert_allclose(a[1], [1.0, 1.0, -1.0, -1.0], atol=1e-6)
    for beta_pos, beta_neg in [(0.3, 1.7), (2.0, 0.1)]:
        a = adv.asym_grpo(r[1:], beta_pos=beta_pos, beta_neg=beta_neg)
        np.testing.assert_allclose(a[0], [1.0, 1.0, -1.0, -1.0], atol=1e-6)


def _constant_logp(pi, L=3):
    logp = np.repeat(np.log(np.asarray(pi, np.float64))[..., None], L, axis=-1)
    return logp.astype(np.float32), np.ones(logp.shape, np.float32)


def test_lens_worked_value_all_wrong():
    logp, mask = _constant_logp([[0.5, 0.4, 0.2, 0.1]])
    a = adv.lens(jnp.zeros((1, 4)), logp=logp, response_mask=mask)
    expected = 0.25 * np.array([-0.123264, -0.039931, 0.064236, 0.098958])
    np.testing.assert_allclose(np.asarray(a)[0], expected, atol=1e-6)


def test_lens_worked_value_mixed():
    logp, mask = _constant_logp([[0.6, 0.5, 0.3, 0.2]])
    a = adv.lens(jnp.array([[1.0, 0.0, 0.0, 0.0]]), logp=logp, response_mask=mask, std_ddof=0)
    np.testing.assert_allclose(
        np.asarray(a)[0], [1.731009, -0.631033, -0.564379, -0.535597], atol=1e-5
    )


def test_lens_per_response_worked_value_all_wrong():
    """The spec's all-wrong group with lengths [1, 2, 3, 2]: n_bar = 8 / 4 = 2, so each
    response's per-token advantage is A_i * 2 / |o_i|; padding gets 0."""
    pi = np.array([0.5, 0.4, 0.2, 0.1])
    lengths = np.array([1, 2, 3, 2])
    mask = (np.arange(4)[None, :] < lengths[:, None]).astype(np.float32)[None]  # [1, 4, 4]
    logp = np.broadcast_to(np.log(pi)[None, :, None], (1, 4, 4)).astype(np.float32)
    a = adv.lens(jnp.zeros((1, 4)), logp=logp, response_mask=mask,
                 all_wrong_weighting="per_response")
    per_token = 0.25 * np.array([-0.246528, -0.039931, 0.042824, 0.098958])
    assert a.shape == (1, 4, 4)
    np.testing.assert_allclose(a[0], per_token[:, None] * mask[0], atol=1e-6)


def test_lens_per_response_under_token_mean_is_the_per_sequence_objective():
    """All-wrong groups only: token_mean with the per-response advantages gives the same loss
    and gradient as seq_mean_token_mean with the per-response-mean advantages (the paper's
    alpha-weighted group objective), clipping included; with the default they differ."""
    from rlvr_jax import losses

    r, logp, mask, *_ = random_batch(7, B=3, G=4, L=6)
    r[:] = 0.0
    rng = np.random.default_rng(8)
    logp_old = logp + rng.normal(scale=0.3, size=logp.shape).astype(np.float32)
    per_seq = adv.lens(r, logp=logp_old, response_mask=mask)  # [B, G]
    per_token = adv.lens(r, logp=logp_old, response_mask=mask,
                         all_wrong_weighting="per_response")  # [B, G, L]

    def loss(lp, advantages, aggregation):
        return losses.policy_loss(lp, logp_old, advantages, mask, clip_high=0.28,
                                  aggregation=aggregation)[0]

    want = loss(logp, per_seq, "seq_mean_token_mean")
    np.testing.assert_allclose(loss(logp, per_token, "token_mean"), want, rtol=1e-5)
    grad = jax.grad(loss)
    np.testing.assert_allclose(grad(jnp.asarray(logp), per_token, "token_mean"),
                               grad(jnp.asarray(logp), per_seq, "seq_mean_token_mean"),
                               rtol=1e-4, atol=1e-7)
    assert abs(float(loss(logp, per_seq, "token_mean")) - float(want)) > 1e-3


def test_lens_per_response_leaves_mixed_groups_alone():
    r, logp, mask, *_ = random_batch(9)
    per_seq = np.asarray(adv.lens(r, logp=logp, response_mask=mask))
    per_token = np.asarray(adv.lens(r, logp=logp, response_mask=mask,
                                    all_wrong_weighting="per_response"))
    mixed = ~np.all(r <= 0, axis=1)
    np.testing.assert_array_equal(per_token[mixed], (per_seq[..., None] * (mask > 0))[mixed])
    with pytest.raises(ValueError, match=r"all_wrong_weighting='per_sequence'"):
        adv.lens(r, logp=logp, response_mask=mask, all_wrong_weighting="per_sequence")


def test_progrpo_on_overlong_shaped_rewards_by_hand():
    """Shaped rewards v + R_len (overlong_coef 1). Group 0: the correct response keeps 0.75 > 0,
    so ARM applies. Group 1: the correct response filled the budget (R_len = -1, shaped 0), so
    no response counts as correct and the group gets GRPO on its shaped rewards only."""
    r = np.array([[0.75, -0.5, 0.0, 0.0], [0.0, -0.5, 0.0, -1.0]], np.float32)
    _, logp, mask, plogp, pmask = random_batch(11, B=2, G=4)
    got = np.asarray(adv.progrpo(r, logp=logp, response_mask=mask, prompt_logp=plogp,
                                 prompt_mask=pmask, alpha=0.5))
    base = ref_grpo(r.astype(np.float64))
    c_q = math.exp(plogp[0][pmask[0] > 0].mean())
    bonus = [0.5 * (c_q - ref_confidence(logp[0, i], mask[0, i], 0.2, "low_tokens"))
             for i in range(4)]
    np.testing.assert_allclose(got[0], base[0] + bonus, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], base[1], rtol=1e-5, atol=1e-6)
    assert np.ptp(base[1]) > 0  # the length penalty alone still orders the group


def test_grpo_binary_closed_form_population_std():
    r = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [1, 0, 1, 0]], np.float32)
    a = np.asarray(adv.grpo(r, std_ddof=0, eps=0.0))
    for b in range(3):
        p = r[b].mean()
        np.testing.assert_allclose(
            a[b], np.where(r[b] == 1, np.sqrt((1 - p) / p), -np.sqrt(p / (1 - p))), rtol=1e-6
        )


def test_bessel_changes_scale_by_known_factor():
    r = np.array([[1, 0, 1, 0]], np.float32)
    ratio = adv.grpo(r, std_ddof=0, eps=0.0) / adv.grpo(r, std_ddof=1, eps=0.0)
    np.testing.assert_allclose(ratio, math.sqrt(4 / 3), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# NumPy re-derivations on random inputs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("binary", [True, False])
def test_baselines_match_numpy(seed, binary):
    r, _, mask, _, _ = random_batch(seed, binary=binary)
    r64 = r.astype(np.float64)
    for ddof in (0, 1):
        np.testing.assert_allclose(adv.grpo(r, std_ddof=ddof), ref_grpo(r64, ddof), atol=2e-5)
    np.testing.assert_allclose(adv.dr_grpo(r), r64 - r64.mean(1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(adv.rloo(r), ref_rloo(r64), atol=1e-5)
    np.testing.assert_allclose(
        adv.reinforce_pp_baseline(r, response_mask=mask), ref_reinforce_pp(r64, mask), atol=2e-5
    )


@pytest.mark.parametrize("seed", range(4))
def test_asym_grpo_matches_numpy(seed):
    r, *_ = random_batch(seed)
    for betas in [(0.9, 0.4), (0.5, 0.5), (1.3, 0.2)]:
        np.testing.assert_allclose(adv.asym_grpo(r, beta_pos=betas[0], beta_neg=betas[1]),
                                   ref_asym(r.astype(np.float64), *betas), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("length_norm", [True, False])
def test_lens_matches_numpy(seed, length_norm):
    r, logp, mask, _, _ = random_batch(seed, L=4)
    logp = logp / 4  # keep raw sequence probabilities representable for the reference
    got = adv.lens(r, logp=logp, response_mask=mask, dimp_uses_length_norm=length_norm)
    want = ref_lens(r.astype(np.float64), logp.astype(np.float64), mask, length_norm=length_norm)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["low_tokens", "all_tokens", "low_tokens_sum"])
@pytest.mark.parametrize(("on_all_correct", "only_correct"), [(True, False), (False, True)])
def test_progrpo_matches_numpy(seed, kind, on_all_correct, only_correct):
    r, logp, mask, plogp, pmask = random_batch(seed, L=11)
    got = adv.progrpo(r, logp=logp, response_mask=mask, prompt_logp=plogp, prompt_mask=pmask,
                      alpha=0.7, rho_low=0.3, confidence=kind,
                      arm_on_all_correct=on_all_correct, arm_only_on_correct=only_correct)
    want = ref_progrpo(r.astype(np.float64), logp.astype(np.float64), mask, plogp, pmask,
                       0.7, 0.3, kind, on_all_correct, only_correct)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_answer_confidence_low_tokens_by_hand():
    logp = np.log(np.array([[0.9, 0.1, 0.5, 0.2, 0.8, 0.7, 0.0]], np.float32) + 1e-30)
    mask = np.array([[1, 1, 1, 1, 1, 1, 0]], np.float32)  # 6 valid tokens, rho 0.34 -> n_low 3
    c = adv.answer_confidence(logp, mask, rho_low=0.34)
    np.testing.assert_allclose(c, [(0.1 * 0.2 * 0.5) ** (1 / 3)], rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

# A few fixed shapes keep compilation bounded; hypothesis varies the values.
SHAPES = st.sampled_from([(1, 2), (3, 4), (2, 7), (5, 8)])
binary_rewards = hnp.arrays(np.float32, SHAPES, elements=st.sampled_from([0.0, 1.0]))
float_rewards = hnp.arrays(np.float32, SHAPES, elements=st.floats(-3, 3, width=32))
grpo, dr_grpo, rloo, asym_grpo = (jax.jit(f) for f in (adv.grpo, adv.dr_grpo, adv.rloo,
                                                       adv.asym_grpo))
lens = jax.jit(adv.lens, static_argnames=("alpha",))
progrpo = jax.jit(adv.progrpo, static_argnames=("alpha",))


@settings(max_examples=30, deadline=None)
@given(float_rewards)
def test_centred_estimators_sum_to_zero(r):
    for a in (grpo(r), dr_grpo(r), rloo(r)):
        np.testing.assert_allclose(np.sum(a, axis=1), 0.0, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(float_rewards)
def test_rloo_is_scaled_dr_grpo(r):
    G = r.shape[1]
    np.testing.assert_allclose(rloo(r), G / (G - 1) * dr_grpo(r), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(binary_rewards)
def test_asym_half_equals_population_grpo_and_zero_gives_signs(r):
    np.testing.assert_allclose(
        adv.asym_grpo(r, beta_pos=0.5, beta_neg=0.5), grpo(r, std_ddof=0, eps=0.0),
        rtol=1e-5, atol=1e-5,
    )
    signs = adv.asym_grpo(r, beta_pos=0.0, beta_neg=0.0)
    mixed = (r.min(1) == 0) & (r.max(1) == 1)
    np.testing.assert_array_equal(np.asarray(signs)[mixed], np.where(r[mixed] == 1, 1.0, -1.0))
    np.testing.assert_array_equal(np.asarray(signs)[~mixed], 0.0)


@settings(max_examples=25, deadline=None)
@given(binary_rewards, st.integers(0, 2**31 - 1))
def test_progrpo_alpha_zero_is_grpo(r, seed):
    B, G = r.shape
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(size=(B, G, 5)).astype(np.float32)
    mask = np.ones_like(logp)
    plogp = -rng.exponential(size=(B, 3)).astype(np.float32)
    a = progrpo(r, logp=logp, response_mask=mask, prompt_logp=plogp,
                    prompt_mask=np.ones_like(plogp), alpha=0.0)
    np.testing.assert_array_equal(a, grpo(r))
    wrong = r.max(1) == 0
    a1 = progrpo(r, logp=logp, response_mask=mask, prompt_logp=plogp,
                     prompt_mask=np.ones_like(plogp), alpha=1.0)
    np.testing.assert_array_equal(np.asarray(a1)[wrong], 0.0)


@settings(max_examples=30, deadline=None)
@given(binary_rewards, st.integers(0, 2**31 - 1))
def test_lens_properties(r, seed):
    B, G = r.shape
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(size=(B, G, 4)).astype(np.float32)
    mask = np.ones_like(logp)
    a = np.asarray(lens(r, logp=logp, response_mask=mask))
    assert_finite(a)
    all_correct = r.min(1) == 1
    np.testing.assert_array_equal(a[all_correct], 0.0)
    all_wrong = r.max(1) == 0
    np.testing.assert_allclose(a[all_wrong].sum(1), 0.0, atol=1e-6)
    pi = np.exp(logp.mean(-1))
    for b in np.nonzero(all_wrong)[0]:  # more confident mistakes are pushed down more
        order = np.argsort(pi[b])
        assert np.all(np.diff(a[b][order]) <= 1e-7)
    # Calibrated rewards of wrong responses lie in [-1/G, 0]: recover them from the all-wrong
    # branch with alpha = 1 and the group mean of r~, which is the negative mean penalty.
    a1 = np.asarray(lens(r, logp=logp, response_mask=mask, alpha=1.0))
    for b in np.nonzero(all_wrong)[0]:
        d = 2 * pi[b].max()
        calibrated = -(1 / G) * pi[b] / (d - pi[b])
        np.testing.assert_allclose(a1[b], calibrated - calibrated.mean(), atol=1e-6)
        assert np.all((calibrated >= -1 / G - 1e-7) & (calibrated <= 0))


# ------------------------------------------------------------------------------------------
# Degenerate groups, jit, vmap, bfloat16, gradients
# ------------------------------------------------------------------------------------------


def call(name, r, logp, mask, plogp, pmask):
    stats = {"logp": logp, "response_mask": mask, "prompt_logp": plogp, "prompt_mask": pmask,
             "entropy": jnp.abs(logp)}  # any non-negative [B, G, L] statistic
    return adv.compute(name, r, stats)


@pytest.mark.parametrize("name", list(adv.ESTIMATORS))
def test_degenerate_groups_are_finite_and_zero_where_specified(name):
    r = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]], np.float32)
    _, logp, mask, plogp, pmask = random_batch(0, B=3, G=4)
    mask[0] = 0.0  # zero-length responses in a degenerate group
    a = np.asarray(call(name, r, logp, mask, plogp, pmask))
    assert_finite(a)
    grad = jax.grad(lambda x: jnp.sum(call(name, x, logp, mask, plogp, pmask) ** 2))(r)
    assert_finite(grad)
    if name in ("grpo", "dr_grpo", "rloo", "asym_grpo", "lens", "grpo_passk",
                "entropy_advantage", "nsr"):
        np.testing.assert_array_equal(a[1], 0.0)  # all-correct
    if name == "reinforce_pp_baseline":  # batch whitening shifts every valid token alike
        np.testing.assert_array_equal(a[mask == 0], 0.0)
        np.testing.assert_allclose(np.ptp(a[1][mask[1] > 0]), 0.0, atol=1e-6)
    if name in ("grpo", "dr_grpo", "rloo", "asym_grpo", "progrpo", "grpo_passk",
                "entropy_advantage", "psr"):
        np.testing.assert_array_equal(a[0], 0.0)  # all-wrong
    if name in ("psr", "nsr", "w_reinforce"):  # no baseline: degenerate groups are trained on
        positive, negative = {"psr": (1, 0), "nsr": (0, 1), "w_reinforce": (0.1, 1)}[name]
        np.testing.assert_allclose(a[1], positive, rtol=1e-6)
        np.testing.assert_allclose(a[0], -negative, rtol=1e-6)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "asym_grpo", "lens", "progrpo",
                                  "reinforce_pp_baseline"])
def test_group_of_one(name):
    r = np.array([[1.0], [0.0]], np.float32)
    _, logp, mask, plogp, pmask = random_batch(1, B=2, G=1)
    a = np.asarray(call(name, r, logp, mask, plogp, pmask))
    assert_finite(a)


def test_eps_zero_on_degenerate_groups_is_still_finite():
    r = jnp.ones((2, 4))
    assert_finite(adv.grpo(r, eps=0.0))
    assert_finite(jax.grad(lambda x: adv.grpo(x, eps=0.0).sum())(r))


@pytest.mark.parametrize("name", list(adv.ESTIMATORS))
def test_jit_vmap_and_bfloat16(name):
    r, logp, mask, plogp, pmask = random_batch(3)
    eager = np.asarray(call(name, r, logp, mask, plogp, pmask))
    jitted = jax.jit(lambda *xs: call(name, *xs))(r, logp, mask, plogp, pmask)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
    # vmap over a leading axis of independent batches (e.g. seeds or hyper-parameters)
    stacked = [np.stack([x, x]) for x in (r, logp, mask, plogp, pmask)]
    mapped = jax.vmap(lambda *xs: call(name, *xs))(*stacked)
    np.testing.assert_allclose(mapped[1], eager, rtol=1e-5, atol=1e-6)
    low = call(name, jnp.asarray(r, jnp.bfloat16), jnp.asarray(logp, jnp.bfloat16), mask,
               jnp.asarray(plogp, jnp.bfloat16), pmask)
    assert low.dtype == jnp.bfloat16
    assert_finite(low)
    np.testing.assert_allclose(np.asarray(low, np.float32), eager, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", ["lens", "progrpo"])
def test_statistics_are_constants_for_the_gradient(name):
    r, logp, mask, plogp, pmask = random_batch(4)
    grad = jax.grad(lambda lp: jnp.sum(call(name, r, lp, mask, plogp, pmask)))(jnp.asarray(logp))
    np.testing.assert_array_equal(grad, 0.0)


# ------------------------------------------------------------------------------------------
# Registry and bad input
# ------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert adv.get("grpo") is adv.grpo
    assert adv.get("progrpo") is adv.progrpo
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'gpro'.*grpo.*lens"):
        adv.get("gpro")


def test_compute_names_missing_statistics():
    with pytest.raises(ValueError, match=r"needs rollout statistics \['logp', 'response_mask'\]"):
        adv.compute("lens", np.zeros((1, 2)), {})


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"rewards must have shape \[B, G\]"):
        adv.grpo(np.zeros(4))
    with pytest.raises(ValueError, match="response_mask shape"):
        adv.lens(np.zeros((2, 3)), logp=np.zeros((2, 3, 5)), response_mask=np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"logp must have shape \[B, G, L\] = \[2, 3, L\]"):
        adv.lens(np.zeros((2, 3)), logp=np.zeros((2, 4, 5)), response_mask=np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="prompt_mask shape"):
        adv.progrpo(np.zeros((2, 3)), logp=np.zeros((2, 3, 5)), response_mask=np.ones((2, 3, 5)),
                    prompt_logp=np.zeros((2, 4)), prompt_mask=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 2 responses"):
        adv.rloo(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="unknown confidence"):
        adv.answer_confidence(np.zeros((1, 2)), np.ones((1, 2)), kind="median")


def test_asym_grpo_rejects_non_binary_rewards_outside_jit():
    with pytest.raises(ValueError, match=r"binary rewards.*0\.5"):
        adv.asym_grpo(np.array([[1.0, 0.5, 0.0]]))
    # Inside jit the values are unknown: r > 0.5 counts as correct, as documented.
    got = jax.jit(adv.asym_grpo)(jnp.array([[0.9, 0.2, 0.0, 0.1]]))
    np.testing.assert_allclose(got, adv.asym_grpo(jnp.array([[1.0, 0.0, 0.0, 0.0]])), rtol=1e-6)
