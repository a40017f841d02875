"""The compiled train step: gradients against a naive full-logits loss (at the sampling
temperature), a zero expected gradient for a constant advantage, micro-batch and device
invariance, optimisation of the objective, exact resume from a checkpoint, config errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlvr_jax import checkpoint, logprobs, models, sharding
from rlvr_jax import config as config_lib
from rlvr_jax import optimizer as optim
from rlvr_jax import train_step as ts

CONFIG = models.ModelConfig(family="llama", vocab_size=64, hidden_size=32, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
N, P, L = 8, 5, 6
SGD = {"name": "sgd", "learning_rate": 1.0, "grad_clip_norm": 0}


def make_batch(seed=0, advantages=None):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, size=(N, P + L)).astype(np.int32)
    mask = np.ones((N, P + L), bool)
    mask[:3, :2] = False  # left-padded prompts
    response = np.ones((N, L), np.float32)
    response[::2, 4:] = 0.0  # responses that ended early
    return {
        "tokens": tokens, "attention_mask": mask, "response_mask": response,
        "old_logp": -rng.exponential(0.5, size=(N, L)).astype(np.float32) - 3.5,
        "advantages": rng.normal(size=(N,)).astype(np.float32) if advantages is None
        else advantages,
    }


def run_config(overrides=None):
    """The base run config with ``{"section.key": value}`` overrides."""
    config = config_lib.base_config()
    config.update_from_flattened_dict(overrides or {})
    return config


def setup(overrides=None, optim_config=SGD, seed=0, params=None):
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    rules = sharding.rules_from_config(None)
    tx, _ = optim.make_optimizer(**optim_config)
    state, shardings = ts.create_train_state(CONFIG, tx, jax.random.key(seed), mesh, rules,
                                             params=params)
    step = ts.make_train_step(run_config(overrides), CONFIG, tx, mesh, rules, shardings)
    return state, step, (mesh, rules, tx, shardings)


def naive_loss(params, batch, clip=0.2, temperature=1.0):
    """Full [N, T, V] logits, log-softmax at ``temperature``, gather, clipped surrogate, token
    mean."""
    logits = models.forward(CONFIG, params, jnp.asarray(batch["tokens"]),
                            attention_mask=jnp.asarray(batch["attention_mask"]))
    logp_all = jax.nn.log_softmax(logits[:, :-1] / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_all, batch["tokens"][:, 1:, None], -1)[..., 0][:, P - 1:]
    ratio = jnp.exp(logp - batch["old_logp"])
    adv = batch["advantages"][:, None]
    token = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip, 1 + clip) * adv)
    mask = batch["response_mask"]
    return jnp.sum(token * mask) / jnp.sum(mask)


def tree_max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sgd_update_equals_naive_gradient(temperature):
    state, step, _ = setup({"rollout.sampling.temperature": temperature})
    params0 = jax.tree.map(np.array, state.params)
    batch = make_batch()
    loss = lambda params: naive_loss(params, batch, temperature=temperature)  # noqa: E731
    grads = jax.grad(loss)(params0)
    new_state, metrics, _ = step(state, batch)
    expected = jax.tree.map(lambda p, g: p - g, params0, grads)
    assert tree_max_diff(new_state.params, expected) < 1e-5
    np.testing.assert_allclose(metrics["loss"], loss(params0), rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-4)
    assert int(new_state.step) == 1


def test_expected_gradient_of_a_constant_advantage_is_zero_at_the_sampling_temperature():
    """Every next token ``y`` after one prompt, as a one-token response weighted by its
    sampling probability ``π_T(y)`` (from the full logits): the batch's loss is
    ``-E_{y ~ π_T}[A ratio]``, whose gradient at ratio 1 is ``-A ∇ Σ_y π_T(y) = 0``. A
    trainer scoring at another temperature gives ratios != 1 and a gradient that is not 0."""
    temperature, V = 0.7, CONFIG.vocab_size
    overrides = {"rollout.sampling.temperature": temperature}
    # Larger weights than the init gives a peaked next-token distribution.
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x,
                          models.init_params(CONFIG, jax.random.key(0)))
    state, step, _ = setup(overrides, params=params)
    prompt = np.random.default_rng(4).integers(0, V, size=P).astype(np.int32)
    logits = models.forward(CONFIG, state.params, jnp.asarray(prompt)[None])[0, -1]  # [V]
    logp = np.asarray(jax.nn.log_softmax(logits / temperature), np.float32)  # [V]
    probs = np.exp(logp.astype(np.float64))
    assert probs.max() > 10 * probs.min()  # far from uniform: T matters
    tokens = np.concatenate([np.tile(prompt, (V, 1)), np.arange(V, dtype=np.int32)[:, None]], 1)
    batch = {"tokens": tokens, "attention_mask": np.ones((V, P + 1), bool),
             "response_mask": np.ones((V, 1), np.float32), "old_logp": logp[:, None]}
    # token_mean over V rows: advantage V·π_T(y)·A makes the loss the expectation; A = 1.
    _, metrics, _ = step(state, {**batch, "advantages": (V * probs).astype(np.float32)})
    assert abs(float(metrics["ratio_max"]) - 1) < 1e-4
    assert abs(float(metrics["ratio_min"]) - 1) < 1e-4
    state, step, _ = setup(overrides, params=params)
    one_token = np.where(np.arange(V) == np.argmax(probs), float(V), 0.0).astype(np.float32)
    _, reference, _ = step(state, {**batch, "advantages": one_token})  # the scale of one sample
    assert float(metrics["grad_norm"]) < 1e-4 * float(reference["grad_norm"])


def test_micro_batch_count_does_not_change_the_update():
    batch = make_batch(1)
    results = []
    for micro in (1, 2, 4):
        config = {"batching.micro_batches": micro, "loss.aggregation": "seq_mean_token_mean",
                  "loss.clip_high": 0.28}
        state, step, _ = setup(config)  # SGD with lr 1: the update is the gradient itself
        new_state, metrics, _ = step(state, batch)
        results.append((jax.tree.map(np.asarray, new_state.params), float(metrics["loss"])))
    for params, loss in results[1:]:
        assert tree_max_diff(params, results[0][0]) < 1e-6
        np.testing.assert_allclose(loss, results[0][1], rtol=1e-5)


OBJECTIVE_SETTINGS = {  # each objective's own part active on make_batch's ratios ~ e^-0.6
    "gspo": {"loss.gspo_clip_low": 0.5, "loss.gspo_clip_high": 0.28},
    "cispo": {},
    "gmpo": {"loss.clip_low": 0.4},
    "clip_cov": {"loss.clip_cov_ratio": 0.25, "loss.clip_cov_lb": 0.0, "loss.clip_low": 0.5},
    "kl_cov": {"loss.kl_cov_ratio": 0.25, "loss.kl_cov_coef": 1.0},
}


@pytest.mark.parametrize("objective", OBJECTIVE_SETTINGS)
def test_micro_batch_count_does_not_change_the_update_of_any_objective(objective):
    """With rollout-correction weights and, for Clip-Cov / KL-Cov, the token selection made
    over the whole mini-batch from the current policy (the same random choice for 1, 2 and 4
    micro-batches)."""
    batch = make_batch(4)
    rng = np.random.default_rng(0)
    batch["is_weights"] = rng.uniform(0.5, 2.0, (N, L)).astype(np.float32)
    settings = {"loss.objective": objective, "loss.aggregation": "seq_mean_token_mean",
                "rollout.correction": "token", **OBJECTIVE_SETTINGS[objective]}
    state, _, (mesh, rules, tx, shardings) = setup(settings)
    params0 = jax.tree.map(np.asarray, state.params)
    results = []
    for micro in (1, 2, 4):
        config = run_config({**settings, "batching.micro_batches": micro})
        step = ts.make_train_step(config, CONFIG, tx, mesh, rules, shardings)
        new_state, metrics, _ = step(jax.tree.map(jnp.copy, state), batch)  # the step donates it
        results.append((jax.tree.map(np.asarray, new_state.params), metrics))
    assert tree_max_diff(results[0][0], params0) > 1e-4  # the objective has a gradient
    for params, metrics in results[1:]:
        assert tree_max_diff(params, results[0][0]) < 1e-6
        for key, value in metrics.items():
            np.testing.assert_allclose(value, results[0][1][key], rtol=1e-5, atol=1e-7,
                                       err_msg=key)
    if objective in ("clip_cov", "kl_cov"):
        selected = float(results[0][1]["cov_selected_frac"])
        assert 0 < selected <= 0.25, selected


def test_ppo_epochs_and_mini_batches_count_optimizer_updates():
    config = {"batching.mini_batches": 2, "batching.epochs": 3, "batching.micro_batches": 2}
    state, step, _ = setup(config, {"name": "adamw", "learning_rate": 1e-3})
    new_state, metrics, _ = step(state, make_batch(2))
    counts = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(new_state.opt_state)
              if "count" in jax.tree_util.keystr(path)]
    assert counts and all(int(c) == 6 for c in counts)
    assert int(new_state.step) == 1
    assert float(metrics["ratio_max"]) >= float(metrics["ratio_min"])


def test_training_raises_logprob_of_positively_rewarded_completions():
    batch = make_batch(3, advantages=np.ones(N, np.float32))
    config = {"batching.mini_batches": 2, "batching.epochs": 2, "loss.clip_high": 0.5}
    state, step, (mesh, rules, _, shardings) = setup(
        config, {"name": "adamw", "learning_rate": 3e-3})
    logprob_fn = logprobs.make_logprob_fn(CONFIG, mesh, rules, shardings.params, chunk_size=256)

    def response_logp(params):
        scores = logprob_fn(params, batch["tokens"], batch["attention_mask"], temperature=1.0)
        return float(np.sum(np.asarray(scores.logprobs)[:, P:] * batch["response_mask"]))

    before = response_logp(state.params)
    batch["old_logp"] = np.asarray(logprob_fn(state.params, batch["tokens"],
                                          batch["attention_mask"], temperature=1.0).logprobs)[:, P:]
    for _ in range(4):
        state, _, _ = step(state, batch)
    after = response_logp(state.params)
    assert after > before + 5.0, (before, after)


def test_resume_from_checkpoint_is_bitwise_identical(tmp_path):
    config = {"batching.mini_batches": 2}
    optim_config = {"name": "adamw", "learning_rate": 1e-3}
    batches = [make_batch(10 + i) for i in range(4)]

    state, step, _ = setup(config, optim_config)
    for batch in batches:
        state, _, _ = step(state, batch)
    uninterrupted = jax.tree.map(np.asarray, state)

    state, step, (*_, shardings) = setup(config, optim_config)
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
        for batch in batches[:2]:
            state, _, _ = step(state, batch)
        ckpt.save(2, state, {"data_position": 2}, force=True)
    abstract = jax.eval_shape(lambda: state)
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
        restored = ckpt.restore(abstract, shardings)
    assert restored.step == 2 and restored.host_state["data_position"] == 2
    state = restored.state
    for batch in batches[2:]:
        state, _, _ = step(state, batch)
    resumed = jax.tree.map(np.asarray, state)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)


def test_config_errors_name_the_key_before_compiling():
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    rules = sharding.rules_from_config(None)
    with pytest.raises(ValueError, match=r"optim.name='lion'"):
        optim.make_optimizer(name="lion")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'lr'"):
        optim.make_optimizer(lr=1e-3)
    tx, _ = optim.make_optimizer(**SGD)
    bad = [
        ({"loss.aggregation": "token-mean"}, r"unknown loss aggregation 'token-mean'"),
        ({"loss.kl_kind": "k4"}, r"unknown KL estimator 'k4'"),
        ({"loss.clip_high": 1.5}, r"loss.clip_high must be in \[0, 1\)"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            ts.make_train_step(run_config(overrides), CONFIG, tx, mesh, rules, None)


def test_batch_errors_are_named():
    state, step, _ = setup({"batching.micro_batches": 3})
    with pytest.raises(ValueError, match=r"batching\.micro_batches=3"):
        step(state, make_batch())
    state, step, _ = setup({"loss.kl_coef": 0.1})
    with pytest.raises(ValueError, match=r"needs batch\['ref_logp'\]"):
        step(state, make_batch())
    state, step, _ = setup({"rollout.correction": "token"})
    with pytest.raises(ValueError, match=r"rollout.correction='token' needs "
                                         r"batch\['sampling_logp'\]"):
        step(state, make_batch())
    state, step, _ = setup()
    batch = make_batch()
    del batch["response_mask"]
    with pytest.raises(ValueError, match=r"missing \['response_mask'\]"):
        step(state, batch)
    batch = make_batch()
    batch["old_logp"] = batch["old_logp"][:, 1:]
    with pytest.raises(ValueError, match=r"batch\['old_logp'\] has shape \(8, 5\), "
                                         r"expected \(8, 6\)"):
        step(state, batch)


@pytest.mark.slow
@pytest.mark.multidevice
def test_eight_devices_match_one_device():
    script = pathlib.Path(__file__).parent / "multidevice" / "train_step_parity.py"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for mesh_name, diffs in result.items():
        assert diffs["sharded"], mesh_name
        assert diffs["param_change"] > 1e-3, mesh_name  # the step really moved the params
        assert diffs["loss_diff"] < 1e-5, (mesh_name, diffs)
        assert diffs["grad_norm_diff"] < 1e-5, (mesh_name, diffs)
        assert diffs["param_diff"] < 1e-6, (mesh_name, diffs)


def test_warmup_counts_rl_steps_not_optimizer_updates():
    """4 updates per RL step, 10 warm-up RL steps: every update of RL step s moves an SGD
    parameter with gradient 1 by lr(s) = s / 10 (peak 1 from s = 10), so halfway at s = 5."""
    tx, schedule = optim.make_optimizer(4, name="sgd", learning_rate=1.0, warmup_steps=10,
                                        grad_clip_norm=0)
    params = jnp.zeros(())
    state = tx.init(params)
    moves = []
    for _ in range(48):  # 12 RL steps
        updates, state = tx.update(jnp.ones(()), state, params)
        moves.append(-float(updates))
    per_step = np.asarray(moves).reshape(12, 4)
    np.testing.assert_allclose(per_step, np.repeat(np.arange(12)[:, None] / 10, 4, 1).clip(max=1),
                               rtol=1e-6)
    assert float(schedule(5)) == 0.5 and float(schedule(10)) == float(schedule(11)) == 1.0
    with pytest.raises(ValueError, match="updates_per_step must be >= 1"):
        optim.make_optimizer(0)


def test_updates_per_rl_step_reads_the_batching_section():
    config = run_config({"batching.mini_batches": 4, "batching.epochs": 2})
    assert optim.updates_per_rl_step(config.batching) == 8
    assert "updates_per_step" not in config.optim  # the trainer passes it; not an optim key
