"""The policy objectives GSPO, CISPO, GMPO, Clip-Cov and KL-Cov: verl 0.9.1's numbers, float64
NumPy re-derivations, hand-worked values, the covariance selection, rollout-correction weights,
micro-batch invariance with global normalisers and selection, degenerate inputs under jax.grad."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import losses, policy_losses

REFERENCE = json.loads(
    (pathlib.Path(__file__).parent / "reference" / "verl_0_9_1.json").read_text())
NEW_OBJECTIVES = ("gspo", "cispo", "gmpo", "clip_cov", "kl_cov")
SETTINGS = dict(clip_low=0.2, clip_high=0.28, gspo_clip_low=0.05, gspo_clip_high=0.1,
                clip_cov_ratio=0.2, clip_cov_lb=0.05, clip_cov_ub=3.0, kl_cov_ratio=0.15,
                kl_cov_coef=0.5)


def batch(seed=0, N=6, L=5):
    rng = np.random.default_rng(seed)
    logp_old = -rng.exponential(size=(N, L)).astype(np.float32)
    logp = (logp_old + rng.normal(scale=0.3, size=(N, L))).astype(np.float32)
    adv = rng.normal(size=(N,)).astype(np.float32)
    lengths = rng.integers(1, L + 1, size=N)
    lengths[-1] = 0  # one empty response
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.float32)
    priority = rng.uniform(size=(N, L)).astype(np.float32)
    return logp, logp_old, adv, mask, priority


# ------------------------------------------------------------------------------------------
# Independent NumPy references (float64, loops over tokens)
# ------------------------------------------------------------------------------------------


def ppo_clip(rho, a, low, high):
    return -min(rho * a, min(max(rho, 1 - low), 1 + high) * a)


def ref_selection(objective, logp, old, adv, mask, priority, s=SETTINGS):
    tokens = [(i, t) for i, t in np.ndindex(mask.shape) if mask[i, t] > 0]
    mean_a = np.mean([float(adv[i]) for i, _ in tokens])
    mean_l = np.mean([float(logp[i, t]) for i, t in tokens])
    cov = {(i, t): (float(adv[i]) - mean_a) * (float(logp[i, t]) - mean_l) for i, t in tokens}
    chosen = np.zeros(mask.shape, bool)
    if objective == "kl_cov":
        wanted = max(1, math.floor(s["kl_cov_ratio"] * len(tokens)))
        picked = sorted(tokens, key=lambda k: (-cov[k], priority[k]))[:wanted]
    else:
        def clipped(i, t):
            rho = math.exp(float(logp[i, t]) - float(old[i, t]))
            a = float(adv[i])
            return (a < 0 and rho < 1 - s["clip_low"]) or (a > 0 and rho > 1 + s["clip_high"])

        band = [k for k in tokens
                if s["clip_cov_lb"] < cov[k] < s["clip_cov_ub"] and not clipped(*k)]
        wanted = max(1, math.floor(s["clip_cov_ratio"] * len(tokens)))
        picked = sorted(band, key=lambda k: priority[k])[:wanted]
    for k in picked:
        chosen[k] = True
    return chosen


def ref_token_loss(objective, logp, old, adv, mask, selection=None, s=SETTINGS):
    out = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        valid = [t for t in range(mask.shape[1]) if mask[i, t] > 0]
        d = {t: float(logp[i, t]) - float(old[i, t]) for t in valid}
        a = float(adv[i])
        for t in valid:
            rho = math.exp(d[t])
            if objective == "clipped":
                out[i, t] = ppo_clip(rho, a, s["clip_low"], s["clip_high"])
            elif objective == "gspo":
                seq = min(math.exp(sum(d.values()) / len(valid)), math.exp(10.0))
                out[i, t] = ppo_clip(seq, a, s["gspo_clip_low"], s["gspo_clip_high"])
            elif objective == "cispo":
                weight = min(max(rho, 1 - s["clip_low"]), 1 + s["clip_high"])
                out[i, t] = -weight * a * float(logp[i, t])
            elif objective == "gmpo":
                bound = {1: lambda x: min(x, s["clip_high"]), -1: lambda x: max(x, -s["clip_low"]),
                         0: lambda x: x}[int(np.sign(a))]
                ratio = math.exp(sum(bound(x) for x in d.values()) / len(valid))
                out[i, t] = -a * ratio
            elif objective == "clip_cov":
                out[i, t] = 0.0 if selection[i, t] else ppo_clip(rho, a, s["clip_low"],
                                                                  s["clip_high"])
            else:  # kl_cov
                out[i, t] = -rho * a + (s["kl_cov_coef"] * abs(d[t]) if selection[i, t] else 0)
    return out


def ref_aggregate(token, mask, aggregation, max_len):
    rows = [i for i in range(mask.shape[0]) if mask[i].sum()]
    if aggregation == "token_mean":
        return (token * mask).sum() / mask.sum()
    if aggregation == "seq_mean_token_mean":
        return np.mean([(token[i] * mask[i]).sum() / mask[i].sum() for i in rows])
    if aggregation == "seq_mean_token_sum":
        return np.mean([(token[i] * mask[i]).sum() for i in rows])
    return (token * mask).sum() / (mask.shape[0] * max_len)


# ------------------------------------------------------------------------------------------
# verl 0.9.1
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", REFERENCE["policy_losses"],
                         ids=lambda c: f"{c['verl_loss_mode']}-{c['aggregation']}")
def test_loss_and_gradient_agree_with_verl(case):
    """verl's loss mode -> objective, verl's aggregation name -> ours (``losses.py`` table);
    verl's GSPO clips with the actor's clip range, passed here as GSPO's own."""
    inputs = {k: np.asarray(v, np.float32) for k, v in REFERENCE["loss_inputs"].items()}
    clip = dict(clip_low=REFERENCE["clip_low"], clip_high=REFERENCE["clip_high"])
    options = {("kl_cov_coef" if k == "ppo_kl_coef" else k): v for k, v in case["options"].items()}
    settings = dict(objective=case["objective"], aggregation=case["aggregation"], **clip,
                    gspo_clip_low=clip["clip_low"], gspo_clip_high=clip["clip_high"], **options)
    N, L = inputs["mask"].shape
    priority = np.arange(N * L, dtype=np.float32).reshape(N, L)  # verl with randperm = identity

    def loss(logp):
        return losses.policy_loss(logp, inputs["logp_old"], inputs["advantages"], inputs["mask"],
                                  cov_priority=priority, **settings)[0]

    value, grad = jax.value_and_grad(loss)(jnp.asarray(inputs["logp"]))
    np.testing.assert_allclose(value, case["loss"], rtol=1e-5)
    np.testing.assert_allclose(grad, case["grad_logp"], rtol=1e-5, atol=1e-7)


def test_verl_cases_exercise_every_objective_and_the_selection():
    """The reference is not vacuous: each objective differs from the clipped loss."""
    by_mode = {(c["objective"], c["aggregation"]): c["loss"] for c in REFERENCE["policy_losses"]}
    for objective in NEW_OBJECTIVES:
        mode = "seq_mean_token_mean"
        assert abs(by_mode[objective, mode] - by_mode["clipped", mode]) > 1e-3, objective


# ------------------------------------------------------------------------------------------
# NumPy re-derivations and worked values
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
@pytest.mark.parametrize("objective", NEW_OBJECTIVES)
def test_each_objective_matches_its_numpy_reference(objective, aggregation):
    logp, old, adv, mask, priority = batch(1)
    logp = old + 2.0 * (logp - old)  # ratios on both sides of every clip
    selection = (ref_selection(objective, logp, old, adv, mask, priority)
                 if objective in policy_losses.COVARIANCE_OBJECTIVES else None)
    token = ref_token_loss(objective, logp, old, adv, mask, selection)
    loss, metrics = losses.policy_loss(logp, old, adv, mask, objective=objective,
                                       aggregation=aggregation, max_len=7, cov_priority=priority,
                                       **SETTINGS)
    np.testing.assert_allclose(loss, ref_aggregate(token, mask, aggregation, 7), rtol=1e-5)
    if selection is not None:
        assert 0 < selection.sum() < mask.sum()
        np.testing.assert_allclose(metrics["cov_selected_frac"], selection.sum() / mask.sum())


def test_gspo_worked_values():
    """d = [0.2, 0.4]: s = e^0.3 = 1.349859. A = +1 is clipped at 1 + 0.28 (no gradient);
    A = -1 gives 1.349859 per token and d/dlogp_t = s / 2 = 0.674929 under token_mean."""
    logp = np.array([[0.2, 0.4], [0.2, 0.4]], np.float32)
    old = np.zeros_like(logp)
    mask = np.ones_like(logp)
    settings = dict(objective="gspo", gspo_clip_low=0.2, gspo_clip_high=0.28)

    def loss(lp, a):
        return losses.policy_loss(lp, old, a, mask, **settings)[0]

    np.testing.assert_allclose(loss(logp, np.array([1.0, -1.0])), (-1.28 * 2 + 1.349859 * 2) / 4,
                               rtol=1e-5)
    grad = jax.grad(loss)(jnp.asarray(logp), np.array([1.0, -1.0]))
    np.testing.assert_allclose(grad, [[0.0, 0.0], [0.337464, 0.337464]], rtol=1e-5)
    _, metrics = losses.policy_loss(logp, old, np.array([1.0, -1.0]), mask, **settings)
    np.testing.assert_allclose(metrics["clip_frac_high"], 0.5)


def test_cispo_worked_values():
    """Token 0: rho = e^0.5 = 1.6487, its weight clipped to 1.28; A = 2 and logp = -1 give
    -1.28 * 2 * (-1) = 2.56 and d/dlogp = -2.56 (the weight is a constant). Token 1: rho = 1,
    A = -0.5, logp = -2: -1 * (-0.5) * (-2) = -1 and d/dlogp = 0.5. Token mean: 0.78, gradient
    halved."""
    logp = np.array([[-1.0, -2.0]], np.float32)
    old = np.array([[-1.5, -2.0]], np.float32)
    adv = np.array([[2.0, -0.5]], np.float32)

    def loss(lp):
        return losses.policy_loss(lp, old, adv, np.ones((1, 2)), objective="cispo",
                                  clip_high=0.28)[0]

    np.testing.assert_allclose(loss(logp), 0.78, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(logp)), [[-1.28, 0.25]], rtol=1e-6)


def test_gmpo_worked_values():
    """d = [0.5, -0.1]. A = +1: the upper clip binds, [0.28, -0.1], mean 0.09, ratio
    e^0.09 = 1.094174, loss -1.094174, gradient only through the unclipped token: -0.547087.
    A = -1: the lower clip would bind, [0.5, -0.1] unchanged, mean 0.2, loss +e^0.2 = 1.221403."""
    logp = np.array([[0.5, -0.1]], np.float32)
    old = np.zeros_like(logp)
    mask = np.ones_like(logp)

    def loss(lp, a):
        return losses.policy_loss(lp, old, a, mask, objective="gmpo", clip_high=0.28,
                                  aggregation="seq_mean_token_mean")[0]

    np.testing.assert_allclose(loss(logp, np.array([1.0])), -1.094174, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(logp), np.array([1.0])),
                               [[0.0, -0.547087]], rtol=1e-5)
    np.testing.assert_allclose(loss(logp, np.array([-1.0])), 1.221403, rtol=1e-6)


def test_clip_cov_and_kl_cov_worked_values():
    """A = [1, -1], logp = [[-1, -3], [-2, -2]]: mean A = 0, mean logp = -2, so
    C = [[1, -1], [0, 0]]. Clip-Cov with band (0.5, 5) and 1 of 4 tokens removes token (0, 0):
    losses [[0, -1], [1, 1]], token mean 0.25. KL-Cov with 1 of 4 penalises the same token;
    with d = 0.5 there: -e^0.5 + 0.1 * 0.5 = -1.598721, token mean (-1.598721 - 1 + 2) / 4."""
    logp = np.array([[-1.0, -3.0], [-2.0, -2.0]], np.float32)
    adv = np.array([1.0, -1.0], np.float32)
    mask = np.ones_like(logp)
    priority = np.zeros_like(logp)
    loss, metrics = losses.policy_loss(logp, logp, adv, mask, objective="clip_cov",
                                       clip_cov_ratio=0.25, clip_cov_lb=0.5, cov_priority=priority)
    np.testing.assert_allclose(loss, 0.25, rtol=1e-6)
    np.testing.assert_allclose(metrics["cov_selected_frac"], 0.25)
    grad = jax.grad(lambda lp: losses.policy_loss(
        lp, logp, adv, mask, objective="clip_cov", clip_cov_ratio=0.25, clip_cov_lb=0.5,
        cov_priority=priority)[0])(jnp.asarray(logp))
    np.testing.assert_allclose(grad, [[0.0, -0.25], [0.25, 0.25]], rtol=1e-6)
    old = logp - np.array([[0.5, 0.0], [0.0, 0.0]], np.float32)
    loss, _ = losses.policy_loss(logp, old, adv, mask, objective="kl_cov", kl_cov_ratio=0.25)
    np.testing.assert_allclose(loss, (-1.598721 - 1 + 2) / 4, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# The covariance selection
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("objective", ["clip_cov", "kl_cov"])
def test_covariance_selection_matches_its_numpy_reference(objective, seed):
    logp, old, adv, mask, priority = batch(seed, N=8, L=6)
    logp = old + 2.0 * (logp - old)
    chosen = policy_losses.covariance_selection(
        logp, old, adv, mask, objective=objective, priority=priority,
        **{k: v for k, v in SETTINGS.items() if not k.startswith(("gspo", "kl_cov_coef"))})
    np.testing.assert_array_equal(chosen, ref_selection(objective, logp, old, adv, mask, priority))


def test_selection_does_not_depend_on_the_row_layout():
    """The micro-batch layout permutes rows; the selection follows the tokens, not positions."""
    logp, old, adv, mask, priority = batch(3, N=8, L=6)
    rows = np.random.default_rng(0).permutation(8)
    for objective in ("clip_cov", "kl_cov"):
        kwargs = dict(objective=objective, clip_cov_lb=0.01, clip_cov_ratio=0.3, kl_cov_ratio=0.3)
        chosen = policy_losses.covariance_selection(logp, old, adv, mask, priority=priority,
                                                    **kwargs)
        permuted = policy_losses.covariance_selection(
            logp[rows], old[rows], adv[rows], mask[rows], priority=priority[rows], **kwargs)
        np.testing.assert_array_equal(np.asarray(permuted), np.asarray(chosen)[rows])
        assert np.asarray(chosen).sum() > 1


def test_clip_cov_skips_tokens_the_clip_already_removes():
    """Every token in the band, the first two (lowest priority) clipped: the selection takes the
    next two."""
    logp = np.array([[0.0, -1.0, -2.0, -3.0], [-3.0, -2.0, -1.0, 0.0]], np.float32)
    old = logp - np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    chosen = policy_losses.covariance_selection(  # rho = e at (0, 0) and (0, 1), with A = +1
        logp, old, np.array([1.0, -1.0], np.float32), np.ones((2, 4)), objective="clip_cov",
        clip_cov_ratio=0.25, clip_cov_lb=-10.0, priority=np.arange(8.0).reshape(2, 4))
    np.testing.assert_array_equal(chosen, [[0, 0, 1, 1], [0, 0, 0, 0]])


# ------------------------------------------------------------------------------------------
# Rollout-correction weights, micro-batches, degenerate inputs, bad settings
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["clipped", *NEW_OBJECTIVES])
def test_is_weights_scale_the_objective_per_token_or_per_response(objective):
    logp, old, adv, mask, priority = batch(4)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, mask.shape).astype(np.float32)
    selection = (ref_selection(objective, logp, old, adv, mask, priority)
                 if objective in policy_losses.COVARIANCE_OBJECTIVES else None)
    token = ref_token_loss(objective, logp, old, adv, mask, selection)
    if objective == "gmpo":  # one weight per response: the geometric mean of its tokens'
        lengths = np.maximum(mask.sum(-1, keepdims=True), 1)
        weights_used = np.exp((np.log(weights) * mask).sum(-1, keepdims=True) / lengths)
    else:
        weights_used = weights
    weighted, metrics = losses.policy_loss(logp, old, adv, mask, objective=objective,
                                           is_weights=weights, cov_priority=priority, **SETTINGS)
    expected = (token * weights_used * mask).sum() / mask.sum()
    np.testing.assert_allclose(weighted, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["pg_loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("objective", NEW_OBJECTIVES)
def test_micro_batches_with_global_normaliser_and_selection_sum_to_full_batch(objective):
    """(Every aggregation's global normaliser: ``test_losses``; the compiled step:
    ``test_train_step``.)"""
    logp, old, adv, mask, priority = batch(5, N=8)
    weights = np.random.default_rng(2).uniform(0.5, 2.0, mask.shape).astype(np.float32)
    aggregation = "seq_mean_token_mean"
    kwargs = dict(objective=objective, aggregation=aggregation, **SETTINGS)
    selection = (policy_losses.covariance_selection(
        logp, old, adv, mask, objective=objective, priority=priority,
        **{k: SETTINGS[k] for k in ("clip_low", "clip_high", "clip_cov_ratio", "clip_cov_lb",
                                    "clip_cov_ub", "kl_cov_ratio")})
        if objective in policy_losses.COVARIANCE_OBJECTIVES else None)
    normalizer = losses.loss_normalizer(mask, aggregation)
    tokens = losses.loss_normalizer(mask, "token_mean")

    def full(lp):
        return losses.policy_loss(lp, old, adv, mask, is_weights=weights, cov_priority=priority,
                                  **kwargs)[0]

    def split(lp, parts):
        total = 0.0
        for rows in np.array_split(np.arange(8), parts):
            total += losses.policy_loss(
                lp[rows], old[rows], adv[rows], mask[rows], is_weights=weights[rows],
                cov_selection=None if selection is None else selection[rows],
                normalizer=normalizer, metrics_normalizer=tokens, **kwargs)[0]
        return total

    value, grad = jax.value_and_grad(full)(jnp.asarray(logp))
    for parts in (2, 4):
        split_value, split_grad = jax.value_and_grad(split)(jnp.asarray(logp), parts)
        np.testing.assert_allclose(split_value, value, rtol=1e-5)
        np.testing.assert_allclose(split_grad, grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("objective", NEW_OBJECTIVES)
def test_degenerate_inputs_are_finite_under_grad(objective):
    """Zero advantages (all-equal groups), empty responses, extreme log-ratios and -inf
    log-probs on padding give a finite loss and gradient; A = 0 gives no gradient, except
    KL-Cov's penalty, which pulls its selected token back towards the old policy."""
    N, L = 4, 5
    mask = np.ones((N, L), np.float32)
    mask[0] = 0.0
    mask[1, 2:] = 0.0
    logp = np.where(mask > 0, -1.0, -np.inf).astype(np.float32)
    old = np.where(mask > 0, np.array([0, 60.0, -60.0, -1.0])[:, None], 0.0).astype(np.float32)
    adv = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    priority = np.zeros((N, L), np.float32)

    def loss(lp, a):
        return losses.policy_loss(lp, old, a, mask, objective=objective, cov_priority=priority,
                                  aggregation="seq_mean_token_mean", **SETTINGS)[0]

    for a in (adv, np.zeros_like(adv)):
        value, grad = jax.value_and_grad(loss)(jnp.asarray(logp), a)
        assert np.isfinite(value) and np.all(np.isfinite(grad)), (value, grad)
        np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(logp), np.zeros_like(adv)))
    assert np.count_nonzero(grad) == (1 if objective == "kl_cov" else 0), grad


BAD = [
    (dict(objective="ppo"), r"unknown loss.objective 'ppo'"),
    (dict(objective="gspo", dual_clip=3.0), r"dual_clip applies to loss.objective='clipped'"),
    (dict(objective="gspo", gspo_clip_high=1.5), r"loss.gspo_clip_high must be in \[0, 1\)"),
    (dict(objective="clip_cov", clip_cov_ratio=0.0), r"loss.clip_cov_ratio must be in \(0, 1\]"),
    (dict(objective="clip_cov", clip_cov_lb=5.0), r"clip_cov_lb=5.0 must be below"),
    (dict(objective="kl_cov", kl_cov_coef=-1.0), r"loss.kl_cov_coef must be >= 0"),
    (dict(objective="clip_cov"), r"clip_cov needs cov_priority"),
    (dict(is_weights=np.ones((6, 4))), r"is_weights has shape \(6, 4\), but logp has \(6, 5\)"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_settings_and_inputs_are_named(kwargs, message):
    logp, old, adv, mask, _ = batch(6)
    with pytest.raises(ValueError, match=message):
        losses.policy_loss(logp, old, adv, mask, **kwargs)
