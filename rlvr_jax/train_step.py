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

Inside the step the batch is shuffled and cut into ``step.mini_batches`` mini-batches, one
optimizer update each, repeated for ``step.epochs`` epochs (PPO-style; the rollout log-probs
stay the old policy throughout). Each mini-batch is accumulated over ``step.micro_batches``
micro-batches with ``lax.scan``; the loss normalisers are computed once per mini-batch, so the
update does not depend on the micro-batch count (nor on the device count).

Config sections read here (unknown keys are errors naming the key)::

    loss:  clip_low 0.2, clip_high 0.2, dual_clip None, kl_coef 0.0, kl_kind "k3",
           entropy_coef 0.0, aggregation "token_mean", max_len None
    step:  micro_batches 1, mini_batches 1, epochs 1, logprob_chunk_size 256

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
import optax
from jax.sharding import Mesh, NamedSharding

from rlvr_jax import logprobs, losses, metrics, models, sharding

Batch = dict[str, jax.Array]

LOSS_DEFAULTS: dict[str, Any] = {
    "clip_low": 0.2,
    "clip_high": 0.2,
    "dual_clip": None,
    "kl_coef": 0.0,
    "kl_kind": "k3",
    "entropy_coef": 0.0,
    "aggregation": "token_mean",
    "max_len": None,
}
STEP_DEFAULTS: dict[str, Any] = {
    "micro_batches": 1,
    "mini_batches": 1,
    "epochs": 1,
    "logprob_chunk_size": logprobs.DEFAULT_CHUNK_SIZE,
}
BATCH_KEYS = ("tokens", "attention_mask", "response_mask", "old_logp", "advantages")
EXTREME_METRICS = {"ratio_max": jnp.maximum, "ratio_min": jnp.minimum}


@flax.struct.dataclass
class TrainState:
    """Everything an update changes: parameters, optimizer state, rollout count, PRNG key."""

    params: Any
    opt_state: Any
    step: jax.Array  # int32 []: rollout batches trained on
    key: jax.Array  # PRNG key data, uint32 [2]


def section(config: Mapping[str, Any] | None, name: str, defaults: Mapping[str, Any]) -> dict:
    """``config[name]`` merged over ``defaults``; unknown keys raise naming ``name.key``."""
    given = dict((config or {}).get(name) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"{name}: unknown key(s) {[f'{name}.{k}' for k in unknown]}; known keys are "
            f"{sorted(defaults)}"
        )
    return {**defaults, **given}


def check_loss_settings(loss: Mapping[str, Any]) -> None:
    if loss["aggregation"] not in losses.AGGREGATIONS:
        raise ValueError(
            f"loss.aggregation={loss['aggregation']!r}; expected one of {losses.AGGREGATIONS}"
        )
    if loss["kl_kind"] not in losses.KL_KINDS:
        raise ValueError(f"loss.kl_kind={loss['kl_kind']!r}; expected one of {losses.KL_KINDS}")
    for key in ("clip_low", "clip_high"):
        if not 0.0 <= loss[key] < 1.0:
            raise ValueError(f"loss.{key} must be in [0, 1), got {loss[key]}")


def check_step_settings(step: Mapping[str, Any]) -> None:
    for key in ("micro_batches", "mini_batches", "epochs", "logprob_chunk_size"):
        if int(step[key]) < 1:
            raise ValueError(f"step.{key} must be a positive integer, got {step[key]}")


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


def _check_batch(batch: Mapping[str, Any], loss: Mapping[str, Any], step: Mapping[str, Any]):
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"train batch is missing {missing}; it needs {list(BATCH_KEYS)}")
    if loss["kl_coef"] and "ref_logp" not in batch:
        raise ValueError("loss.kl_coef > 0 needs batch['ref_logp'] (reference log-probs)")
    N, T = batch["tokens"].shape
    L = batch["response_mask"].shape[-1]
    for key, shape in (("attention_mask", (N, T)), ("old_logp", (N, L))):
        if tuple(batch[key].shape) != shape:
            raise ValueError(f"batch['{key}'] has shape {batch[key].shape}, expected {shape}")
    if L >= T:
        raise ValueError(f"responses of length {L} leave no prompt in tokens of length {T}")
    per_update = step["mini_batches"] * step["micro_batches"]
    if N % per_update:
        raise ValueError(
            f"batch of {N} sequences does not split into step.mini_batches="
            f"{step['mini_batches']} x step.micro_batches={step['micro_batches']}"
        )


def make_train_step(
    config: Mapping[str, Any] | None,
    model_config: models.ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding.LogicalRules,
    state_shardings: Any,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted update ``(state, batch) -> (state, metrics)``; see the module docstring.

    Config errors raise here, before anything is compiled; batch errors raise on the call,
    before tracing. The input state is donated.
    """
    loss_cfg = section(config, "loss", LOSS_DEFAULTS)
    step_cfg = section(config, "step", STEP_DEFAULTS)
    check_loss_settings(loss_cfg)
    check_step_settings(step_cfg)
    micro_batches, mini_batches = int(step_cfg["micro_batches"]), int(step_cfg["mini_batches"])
    epochs = int(step_cfg["epochs"])
    row_sharding = batch_partition(mesh, rules)
    loss_options = {k: v for k, v in loss_cfg.items() if k != "entropy_coef"}

    def loss_fn(params, mb: Batch, normalizer, token_count):
        prompt_len = mb["tokens"].shape[1] - mb["response_mask"].shape[1]
        scores = logprobs.token_logprobs(
            model_config, params, mb["tokens"], mb["attention_mask"],
            chunk_size=int(step_cfg["logprob_chunk_size"]),
        )
        _, response = scores.split(prompt_len)  # [n, L] each
        entropy = response.entropy
        if not loss_cfg["entropy_coef"]:
            entropy = jax.lax.stop_gradient(entropy)
        return losses.policy_loss(
            response.logprobs, mb["old_logp"], mb["advantages"], mb["response_mask"],
            logp_ref=mb.get("ref_logp"), entropy=entropy,
            entropy_coef=loss_cfg["entropy_coef"], normalizer=normalizer,
            metrics_normalizer=token_count, **loss_options,
        )

    def combine(total: dict, part: dict) -> dict:
        return {k: EXTREME_METRICS.get(k, jnp.add)(total[k], part[k]) for k in total}

    def update(carry, mini: Batch):
        params, opt_state = carry
        mask = mini["response_mask"]
        normalizer = losses.loss_normalizer(mask, loss_cfg["aggregation"], loss_cfg["max_len"])
        token_count = losses.loss_normalizer(mask, "token_mean")
        micro = jax.tree.map(lambda x: _interleave(x, micro_batches), mini)
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
        (params, opt_state), epoch_metrics = jax.lax.scan(update, carry[:2], minis)
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
        _check_batch(batch, loss_cfg, step_cfg)
        with sharding.activate(mesh, rules):
            return jitted(state, batch)

    run.lower = lambda state, batch: jitted.lower(state, batch)  # for cost analysis
    return run


def batch_partition(mesh: Mesh, rules: sharding.LogicalRules) -> NamedSharding:
    """Sharding of every train-batch array (rows over the batch mesh axes)."""
    return NamedSharding(mesh, sharding.batch_partition_spec(rules))


def make_scorer(
    config: Mapping[str, Any] | None,
    model_config: models.ModelConfig,
    mesh: Mesh,
    rules: sharding.LogicalRules,
    params_shardings: Any,
) -> Callable[[Any, jax.Array, jax.Array], logprobs.TokenLogprobs]:
    """Jitted ``(params, tokens [N, T], attention_mask [N, T]) -> TokenLogprobs [N, T]``.

    The rollout scores its sequences with it: the current policy's log-probs (the old policy
    of the update), the frozen reference policy's (for the KL term) and the prompt log-probs
    ProGRPO's prompt confidence needs. Same code path as the train step's log-probs.
    """
    chunk = int(section(config, "step", STEP_DEFAULTS)["logprob_chunk_size"])
    rows = batch_partition(mesh, rules)

    def score(params, tokens, attention_mask):
        return logprobs.token_logprobs(model_config, params, tokens, attention_mask,
                                       chunk_size=chunk)

    jitted = jax.jit(score, in_shardings=(params_shardings, rows, rows), out_shardings=rows)

    def run(params, tokens, attention_mask):
        with sharding.activate(mesh, rules):
            return jitted(params, tokens, attention_mask)

    return run


__all__ = [
    "LOSS_DEFAULTS",
    "STEP_DEFAULTS",
    "TrainState",
    "batch_partition",
    "create_train_state",
    "make_scorer",
    "make_train_step",
    "section",
]
