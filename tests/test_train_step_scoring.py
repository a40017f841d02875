"""The train step scores the rollout policy itself: old log-probs, estimator statistics,
advantages and correction weights computed inside the compiled step (in the update's own
forward pass, or in a scoring pass before the updates) give the update of the two-pass path,
where the old log-probs come from a separate scoring forward and the advantages from
``advantages.compute`` on the host."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import advantages, logprobs, models, recipes, sharding
from rlvr_jax import config as config_lib
from rlvr_jax import optimizer as optim
from rlvr_jax import train_step as ts

CONFIG = models.ModelConfig(family="llama", vocab_size=64, hidden_size=32, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
B, G, P, L = 3, 4, 5, 6
N = B * G
TEMPERATURE = 0.7
SGD = {"name": "sgd", "learning_rate": 1.0, "grad_clip_norm": 0}
# Group 0 with one correct response (what the pass@k advantage credits), group 1 all wrong,
# group 2 with three correct.
REWARDS = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]], np.float32)


def rollout_batch(seed=0):
    """Tokens of ``B`` prompts (left-padded, shared by their group) and ``G`` responses each,
    some ended early, with rewards and the prompt tokens ProGRPO counts."""
    rng = np.random.default_rng(seed)
    prompts = np.repeat(rng.integers(0, CONFIG.vocab_size, (B, P)), G, axis=0)  # [N, P]
    responses = rng.integers(0, CONFIG.vocab_size, (N, L))
    mask = np.ones((N, P + L), bool)
    mask[:G, :2] = False  # the first group's prompt is left-padded
    response_mask = np.ones((N, L), np.float32)
    response_mask[::3, 4:] = 0.0
    mask[:, P:] = response_mask > 0
    prompt_mask = mask[:, :P].copy()
    prompt_mask[:, -1] = False  # e.g. the template's last token is not counted
    return {
        "tokens": np.concatenate([prompts, responses], 1).astype(np.int32),
        "attention_mask": mask, "response_mask": response_mask,
        "rewards": REWARDS.reshape(N), "prompt_mask": prompt_mask,
    }


def run_config(estimator, overrides=None):
    config = config_lib.base_config()
    config.rollout.group_size = G
    config.rollout.sampling.temperature = TEMPERATURE
    config.advantage.estimator = estimator
    config.advantage.options = recipes.estimator_options(estimator)
    config.update_from_flattened_dict(overrides or {})
    return config


def make_step(config):
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    rules = sharding.rules_from_config(None)
    tx, _ = optim.make_optimizer(**SGD)
    state, shardings = ts.create_train_state(CONFIG, tx, jax.random.key(0), mesh, rules)
    return state, ts.make_train_step(config, CONFIG, tx, mesh, rules, shardings)


def two_pass(config, params, batch, old_logp=None):
    """The old path: a separate scoring forward, then the estimator on the host."""
    scored = jax.jit(lambda p: logprobs.token_logprobs(
        CONFIG, p, jnp.asarray(batch["tokens"]), jnp.asarray(batch["attention_mask"]),
        temperature=TEMPERATURE))(params)
    trainer_logp = np.asarray(scored.logprobs[:, P:])
    old_logp = trainer_logp if old_logp is None else old_logp
    stats = {
        "logp": old_logp.reshape(B, G, L),
        "response_mask": batch["response_mask"].reshape(B, G, L),
        "entropy": np.asarray(scored.entropy[:, P:]).reshape(B, G, L),
        "prompt_logp": np.asarray(scored.logprobs[::G, :P]),
        "prompt_mask": np.asarray(scored.mask[::G, :P]) & batch["prompt_mask"][::G],
    }
    adv = np.asarray(advantages.compute(config.advantage.estimator, REWARDS, stats,
                                        **config.advantage.options), np.float32)
    return trainer_logp, np.asarray(scored.entropy[:, P:]), adv.reshape(N, *adv.shape[2:])


def assert_same_update(config, batch, reference_batch):
    """The step on ``batch`` (it derives what it lacks) and on ``reference_batch`` (everything
    given) make the same SGD update, with the same loss figures."""
    state, step = make_step(config)
    reference_state, reference_step = make_step(config)
    new, figures, derived = step(state, batch)
    expected, expected_figures, nothing = reference_step(reference_state, reference_batch)
    assert nothing == {}  # the step derived nothing from a complete batch
    for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected.params),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    for key in ("loss", "grad_norm", "cov_logp_advantage", "entropy"):
        np.testing.assert_allclose(figures[key], expected_figures[key], rtol=1e-4, atol=1e-7)
    return derived


@pytest.mark.parametrize("estimator", sorted(advantages.ESTIMATORS))
def test_one_pass_update_equals_the_two_pass_update_for_every_estimator(estimator):
    config = run_config(estimator)
    batch = rollout_batch()
    state, _ = make_step(config)
    logp, entropy, adv = two_pass(config, state.params, batch)
    assert np.abs(adv).max() > 0
    derived = assert_same_update(config, batch, {**batch, "old_logp": logp, "advantages": adv})
    np.testing.assert_allclose(derived["advantages"], adv, rtol=1e-4, atol=1e-6)
    valid = batch["response_mask"] > 0
    np.testing.assert_allclose(derived["logp"][valid], logp[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(derived["entropy"][valid], entropy[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["grpo", "progrpo", "lens", "entropy_advantage"])
@pytest.mark.parametrize("batching", [{"batching.micro_batches": 2},
                                      {"batching.mini_batches": 2},
                                      {"batching.epochs": 2, "batching.micro_batches": 2}])
def test_scoring_pass_and_micro_batches_give_the_two_pass_update(estimator, batching):
    """Two micro-batches split the groups (a scoring pass gives the estimator its statistics,
    except for GRPO, which reads none); several updates need the scoring pass too."""
    config = run_config(estimator, batching)
    batch = rollout_batch(1)
    state, _ = make_step(config)
    logp, _, adv = two_pass(config, state.params, batch)
    derived = assert_same_update(config, batch, {**batch, "old_logp": logp, "advantages": adv})
    np.testing.assert_allclose(derived["advantages"], adv, rtol=1e-4, atol=1e-6)


def test_sampler_log_probs_are_the_old_policy_and_lens_reads_them():
    config = run_config("lens", {"rollout.old_logp_source": "sampler"})
    batch = rollout_batch(2)
    sampler_logp = -np.random.default_rng(3).exponential(1.0, (N, L)).astype(np.float32) - 3.0
    state, _ = make_step(config)
    _, _, adv = two_pass(config, state.params, batch, old_logp=sampler_logp)
    batch = {**batch, "old_logp": sampler_logp}
    derived = assert_same_update(config, batch, {**batch, "advantages": adv})
    np.testing.assert_allclose(derived["advantages"], adv, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_correction_weights_come_from_the_rollout_policy(level):
    cap = 1.5
    config = run_config("grpo", {"rollout.correction": level, "rollout.correction_cap": cap})
    batch = rollout_batch(4)
    state, _ = make_step(config)
    logp, _, adv = two_pass(config, state.params, batch)
    noise = np.random.default_rng(5).normal(0.0, 0.3, (N, L)).astype(np.float32)
    sampling_logp = logp + noise
    valid = batch["response_mask"] > 0
    log_ratio = np.where(valid, logp.astype(np.float64) - sampling_logp, 0.0)
    if level == "sequence":
        log_ratio = np.broadcast_to(log_ratio.sum(-1, keepdims=True), log_ratio.shape)
    weights = np.where(valid, np.minimum(np.exp(log_ratio), cap), 0.0).astype(np.float32)
    assert 0 < (weights[valid] == cap).mean() < 1  # some capped, some not
    batch = {**batch, "sampling_logp": sampling_logp}
    derived = assert_same_update(config, batch, {**batch, "old_logp": logp, "advantages": adv,
                                                 "is_weights": weights})
    np.testing.assert_allclose(derived["is_weights"], weights, rtol=1e-4, atol=1e-6)


def test_padded_fraction_counts_padding_positions():
    config = run_config("grpo")
    batch = rollout_batch()
    state, step = make_step(config)
    _, figures, _ = step(state, batch)
    expected = 1.0 - batch["attention_mask"].mean()
    assert expected > 0
    np.testing.assert_allclose(figures["padded_fraction"], expected, rtol=1e-6)


def test_a_batch_without_rewards_or_what_the_estimator_reads_is_refused():
    state, step = make_step(run_config("progrpo"))
    batch = rollout_batch()
    with pytest.raises(ValueError, match="needs 'rewards'"):
        step(state, {k: v for k, v in batch.items() if k != "rewards"})
    with pytest.raises(ValueError, match="needs 'prompt_mask'"):
        step(state, {k: v for k, v in batch.items() if k != "prompt_mask"})
    with pytest.raises(ValueError, match="whole groups"):
        step(state, {k: v[:N - 2] for k, v in batch.items()})
