"""One compiled RL update: log-probs, policy loss, micro-batch accumulation, optax, on a mesh.

``make_train_step(config, model_config, optimizer, mesh, rules)`` returns a function
``(state, batch) -> (state, metrics)`` that runs as a single ``jax.jit`` with explicit
shardings. A *batch* is one rollout, flattened to ``N = B * G`` sequences::

    tokens          int32 [N, T]     left-padded prompt followed by the response (T = P + L)
    attention_mask  bool  [N, T]     1 on real tokens
    response_mask   float [N, L]     1 on response tokens the loss sees
    old_logp        float [N, L]     rollout-policy log-probs of the response tokens
    advantages      float [N] | [N, L]
    ref_logp        float [N, L]     reference-policy log-probs (only when loss.kl_coef > 0)
    is_weights      float [N, L]     rollout-correction weights (only with rollout.correction)

Every log-prob and entropy (``old_logp`` and ``ref_logp`` as the rollout computes them, and the
current policy's here) is of the policy at the sampling temperature ``T =
rollout.sampling.temperature``: ``log π_T(y) = z[y] / T - logsumexp(z / T)``, the distribution
the responses were drawn from (``config.validate`` refuses greedy and truncated training
sampling, whose distributions the trainer does not score). At ``T != 1`` the ratio and the
gradient of ``log π_1`` would be those of a distribution nothing was sampled from.

Inside the step the batch is shuffled and cut into ``batching.mini_batches`` mini-batches,
one optimizer update each, repeated for ``batching.epochs`` epochs (PPO-style; the rollout
log-probs stay the old policy throughout). Each mini-batch is accumulated over
``batching.micro_batches`` micro-batches with ``lax.scan``; the loss normalisers are computed
once per mini-batch, so the update does not depend on the micro-batch count (nor on the device
count). The ``loss`` section is passed to :func:`losses.policy_loss` as it is. Clip-Cov and
KL-Cov (``loss.objective``) choose their tokens from the current policy's log-probs of the whole
mini-batch, so those objectives first run one forward pass over the mini-batch's micro-batches
(no gradient) and choose once, with uniform random priorities from the update's key
(:func:`policy_losses.covariance_selection`); the choice then does not depend on the micro-batch
count either.

Metrics: ``loss``, ``grad_norm`` (before clipping), the :func:`losses.policy_loss` metrics
(means over updates; ``ratio_max``/``ratio_min`` are extremes), ``cov_logp_advantage`` over
the rollout's response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from rlvr_jax import advantages, logprobs, losses, metrics, models, policy_losses, sharding

Batch = dict[str, jax.Array]
BATCH_KEYS = ("tokens", "attention_mask", "response_mask", "old_logp", "advantages")
EXTREME_METRICS = {"ratio_max": jnp.maximum, "ratio_min": jnp.minimum}


@flax.struct.dataclass
class TrainState:
    """Everything an update changes: parameters, optimizer state, rollout count, PRNG key."""

    params: Any
    opt_state: Any
    step: jax.Array  # int32 []: rollout batches trained on
    key: jax.Array  # PRNG key data, uint32 [2]


# --------------------------------------------------------------------------------------------
# State creation
# --------------------------------------------------------------------------------------------


def create_train_state(
    model_config: models.ModelConfig,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    mesh: Mesh,
    rules: sharding.LogicalRules,
    params: Any = None,
) -> tuple[TrainState, Any]:
    """A sharded :class:`TrainState` and its shardings.

    With ``params=None`` the parameters are initialised randomly *directly in their sharding*
    (``jit`` with ``out_shardings``); given parameters (e.g. from ``models.load``) are placed
    into it. ``key`` seeds the state's PRNG key (and the random init).
    """
    init_key, state_key = jax.random.split(key)

    def build(params: Any) -> TrainState:
        if params is None:
            params = models.init_params(model_config, init_key)
        return TrainState(
            params=params,
            opt_state=optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            key=jax.random.key_data(state_key),
        )

    abstract = jax.eval_shape(build, params)
    shardings = sharding.train_state_shardings(
        abstract, models.param_logical_axes(model_config), mesh, rules
    )
    if params is not None:
        params = jax.device_put(params, shardings.params)
    state = jax.jit(build, out_shardings=shardings)(params)
    return state, shardings


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def _interleave(x: jax.Array, parts: int) -> jax.Array:
    """``[N, ...] -> [parts, N / parts, ...]`` with part ``j`` = rows ``j, j + parts, ...``.

    Interleaving (rather than contiguous blocks) keeps every part spread over all devices
    that hold the batch dimension.
    """
    n = x.shape[0]
    return x.reshape(n // parts, parts, *x.shape[1:]).swapaxes(0, 1)


def _check_batch(batch: Mapping[str, Any], config: ml_collections.ConfigDict) -> None:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"train batch is missing {missing}; it needs {list(BATCH_KEYS)}")
    if config.loss.kl_coef and "ref_logp" not in batch:
        raise ValueError("loss.kl_coef > 0 needs batch['ref_logp'] (reference log-probs)")
    if config.rollout.correction != "none" and "is_weights" not in batch:
        raise ValueError(f"rollout.correction={config.rollout.correction!r} needs "
                         "batch['is_weights'] (rollout.train_batch adds them)")
    N, T = batch["tokens"].shape
    L = batch["response_mask"].shape[-1]
    for key, shape in (("attention_mask", (N, T)), ("old_logp", (N, L))):
        if tuple(batch[key].shape) != shape:
            raise ValueError(f"batch['{key}'] has shape {batch[key].shape}, expected {shape}")
    if L >= T:
        raise ValueError(f"responses of length {L} leave no prompt in tokens of length {T}")
    mini_batches, micro_batches = config.batching.mini_batches, config.batching.micro_batches
    if N % (mini_batches * micro_batches):
        raise ValueError(
            f"batch of {N} sequences does not split into batching.mini_batches="
            f"{mini_batches} x batching.micro_batches={micro_batches}"
        )


def batch_shapes(config: ml_collections.ConfigDict, num_rows: int, total_len: int,
                 response_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The train batch of ``config`` as shapes, nothing allocated (``rlvr_jax.compile_check``).

    ``num_rows = N = B * G`` sequences of ``total_len = T = P + L`` tokens with
    ``response_len = L``: the arrays of the module docstring that ``config`` uses. The
    advantages are ``[N]`` or ``[N, L]`` as the configured estimator returns them.
    """
    G = config.rollout.group_size
    if num_rows % G or response_len >= total_len:
        raise ValueError(f"num_rows={num_rows} must be a multiple of rollout.group_size={G} "
                         f"and response_len={response_len} < total_len={total_len}")
    B, P = num_rows // G, total_len - response_len
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    stats = {"logp": f32(B, G, response_len), "response_mask": f32(B, G, response_len),
             "entropy": f32(B, G, response_len), "prompt_logp": f32(B, P),
             "prompt_mask": jax.ShapeDtypeStruct((B, P), jnp.bool_)}
    estimated = jax.eval_shape(
        lambda rewards, stats: advantages.compute(config.advantage.estimator, rewards, stats,
                                                  **config.advantage.options),
        f32(B, G), stats)  # [B, G] or [B, G, L]
    shapes = {
        "tokens": jax.ShapeDtypeStruct((num_rows, total_len), jnp.int32),
        "attention_mask": jax.ShapeDtypeStruct((num_rows, total_len), jnp.bool_),
        "response_mask": f32(num_rows, response_len),
        "old_logp": f32(num_rows, response_len),
        "advantages": f32(num_rows, *estimated.shape[2:]),
    }
    if config.loss.kl_coef:
        shapes["ref_logp"] = f32(num_rows, response_len)
    if config.rollout.correction != "none":
        shapes["is_weights"] = f32(num_rows, response_len)
    return shapes


def make_train_step(
    config: ml_collections.ConfigDict,
    model_config: models.ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding.LogicalRules,
    state_shardings: Any,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted update ``(state, batch) -> (state, metrics)``; see the module docstring.

    Reads ``config.loss``, ``config.batching`` and ``config.rollout.sampling.temperature``
    (the temperature of every log-prob and entropy). Loss-setting errors raise here, before
    anything is compiled; batch errors raise on the call, before tracing. The input state is
    donated.
    """
    losses.check_settings(**config.loss)
    loss_settings = dict(config.loss)
    micro_batches = config.batching.micro_batches
    mini_batches, epochs = config.batching.mini_batches, config.batching.epochs
    row_sharding = sharding.batch_sharding(mesh, rules)
    temperature = config.rollout.sampling.temperature
    selects_tokens = loss_settings["objective"] in policy_losses.COVARIANCE_OBJECTIVES

    def response_scores(params, mb: Batch) -> logprobs.TokenLogprobs:
        prompt_len = mb["tokens"].shape[1] - mb["response_mask"].shape[1]
        scores = logprobs.token_logprobs(
            model_config, params, mb["tokens"], mb["attention_mask"],
            chunk_size=config.batching.logprob_chunk_size, temperature=temperature,
        )
        return scores.split(prompt_len)[1]  # [n, L] each

    def loss_fn(params, mb: Batch, normalizer, token_count):
        response = response_scores(params, mb)
        entropy = response.entropy
        if not loss_settings["entropy_coef"]:
            entropy = jax.lax.stop_gradient(entropy)
        return losses.policy_loss(
            response.logprobs, mb["old_logp"], mb["advantages"], mb["response_mask"],
            logp_ref=mb.get("ref_logp"), entropy=entropy, normalizer=normalizer,
            metrics_normalizer=token_count, is_weights=mb.get("is_weights"),
            cov_selection=mb.get("cov_selection"), **loss_settings,
        )

    def covariance_selection(params, mini: Batch, micro: Batch, key) -> jax.Array:
        """Clip-Cov's / KL-Cov's tokens of the mini-batch, in the micro-batch layout."""
        def current_logp(mb: Batch) -> jax.Array:
            mb = jax.lax.with_sharding_constraint(mb, row_sharding)
            return jax.lax.stop_gradient(response_scores(params, mb).logprobs)

        logp = jax.lax.map(current_logp, micro)  # [micro_batches, n / micro_batches, L]
        priority = _interleave(jax.random.uniform(key, mini["response_mask"].shape),
                               micro_batches)  # drawn in the mini-batch's own row order
        return policy_losses.covariance_selection(
            logp, micro["old_logp"], micro["advantages"], micro["response_mask"],
            priority=priority, **{k: loss_settings[k] for k in policy_losses.SELECTION_SETTINGS})

    def combine(total: dict, part: dict) -> dict:
        return {k: EXTREME_METRICS.get(k, jnp.add)(total[k], part[k]) for k in total}

    def update(carry, inputs: tuple[Batch, jax.Array]):
        (params, opt_state), (mini, key) = carry, inputs
        mask = mini["response_mask"]
        normalizer = losses.loss_normalizer(mask, loss_settings["aggregation"],
                                            loss_settings["max_len"])
        token_count = losses.loss_normalizer(mask, "token_mean")
        micro = jax.tree.map(lambda x: _interleave(x, micro_batches), mini)
        if selects_tokens:
            micro["cov_selection"] = covariance_selection(params, mini, micro, key)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def accumulate(acc, mb: Batch):
            grads_acc, metrics_acc = acc
            mb = jax.lax.with_sharding_constraint(mb, row_sharding)
            (loss, step_metrics), grads = grad_fn(params, mb, normalizer, token_count)
            grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
            return (grads, combine(metrics_acc, {**step_metrics, "loss": loss})), None

        shapes = jax.eval_shape(loss_fn, params, jax.tree.map(lambda x: x[0], micro),
                                normalizer, token_count)
        metrics0 = {k: jnp.zeros((), jnp.float32) for k in shapes[1]} | {"loss": jnp.zeros(())}
        metrics0 |= {"ratio_max": jnp.asarray(-jnp.inf), "ratio_min": jnp.asarray(jnp.inf)}
        grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        (grads, update_metrics), _ = jax.lax.scan(accumulate, (grads0, metrics0), micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        update_metrics["grad_norm"] = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), update_metrics

    def epoch(carry, epoch_key):
        batch = carry[2]
        if mini_batches > 1:
            order = jax.random.permutation(epoch_key, batch["tokens"].shape[0])
            batch = jax.tree.map(lambda x: x[order], batch)
        minis = jax.tree.map(lambda x: _interleave(x, mini_batches), batch)
        update_keys = jax.random.split(jax.random.fold_in(epoch_key, 1), mini_batches)
        (params, opt_state), epoch_metrics = jax.lax.scan(update, carry[:2],
                                                          (minis, update_keys))
        return (params, opt_state, carry[2]), epoch_metrics

    def train_step(state: TrainState, batch: Batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        epoch_keys = jax.random.split(key, epochs)
        (params, opt_state, _), per_update = jax.lax.scan(
            epoch, (state.params, state.opt_state, batch), epoch_keys
        )  # per_update leaves: [epochs, mini_batches]
        out = {
            k: jnp.max(v) if k == "ratio_max" else jnp.min(v) if k == "ratio_min" else
            jnp.mean(v) for k, v in per_update.items()
        }
        out["cov_logp_advantage"] = metrics.logp_advantage_covariance(
            batch["old_logp"], batch["advantages"], batch["response_mask"]
        )
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, out

    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, row_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )

    def run(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        _check_batch(batch, config)
        with sharding.activate(mesh, rules):
            return jitted(state, batch)

    run.lower = lambda state, batch: jitted.lower(state, batch)  # for cost analysis
    return run


__all__ = ["BATCH_KEYS", "TrainState", "batch_shapes", "create_train_state", "make_train_step"]
