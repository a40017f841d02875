"""One compiled RL update: rollout-policy scores, advantages, policy loss, micro-batch
accumulation, optax, on a mesh.

``make_train_step(config, model_config, optimizer, mesh, rules, state_shardings)`` returns a
function ``(state, batch) -> (state, metrics, rollout_policy)`` that runs as a single
``jax.jit`` with explicit shardings. A *batch* is one rollout, flattened to ``N = B * G``
sequences, rows group-major (row ``b * G + g`` is sample ``g`` of prompt ``b``,
``G = rollout.group_size``)::

    tokens          int32 [N, T]     left-padded prompt followed by the response (T = P + L)
    attention_mask  bool  [N, T]     1 on real tokens
    response_mask   float [N, L]     1 on response tokens the loss sees
    rewards         float [N]        (shaped) rewards; the step runs ``config.advantage``
    advantages      float [N] | [N, L]   instead of ``rewards``: advantages computed elsewhere
    old_logp        float [N, L]     optional: the old policy's log-probs (the sampler's with
                                     ``rollout.old_logp_source="sampler"``); absent: the step
                                     scores the batch with the state's parameters
    sampling_logp   float [N, L]     the sampler's log-probs (``rollout.correction`` weights)
    prompt_mask     bool  [N, P]     prompt tokens an estimator reads (ProGRPO's ``prompt_mask``)
    ref_logp        float [N, L]     reference-policy log-probs (only when loss.kl_coef > 0)
    is_weights      float [N, L]     optional: rollout-correction weights computed elsewhere

**The rollout policy is the state's policy.** Whatever the batch does not hold, the step derives
from the log-probs and full-vocabulary entropies of the state's parameters before any update
(constants for the gradient): the old log-probs, the estimator's statistics (ProGRPO's answer
and prompt confidences, LENS's ``π̄``, the entropy-shaped advantage's ``H``), the advantages
``advantages.compute(config.advantage.estimator, rewards [B, G], ...)`` over the whole batch,
and the correction weights ``rollout_correction.importance_weights``. Two ways to get them:

* *one pass* (``batching.epochs = mini_batches = 1``, not Clip-Cov / KL-Cov, and either one
  micro-batch or an estimator that reads no log-prob statistic): the update's own forward pass
  scores the tokens; its log-probs, under ``stop_gradient``, are the old policy, so the ratio is
  1 and the gradient ``A ∇log π`` is the two-pass update's (TRL and Tunix skip the second pass
  the same way);
* *a scoring pass* otherwise: a gradient-free forward over the micro-batches first (the whole
  batch: later updates of the step move the policy away from the rollout's).

The output layer runs only on the positions that predict response tokens, unless the estimator
reads prompt log-probs (``logprobs.token_logprobs(score_from=...)``).

Every log-prob and entropy is of the policy at the sampling temperature ``T =
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
the rollout's response tokens, ``padded_fraction`` (token positions of ``[N, T]`` that are
padding). ``rollout_policy`` holds the per-row arrays the step derived, for the rollout's
figures: ``logp`` and ``entropy`` ``[N, L]`` of the rollout policy when it scored them, the
``advantages`` and ``is_weights`` when it computed them (empty when the batch held all).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from rlvr_jax import (
    advantages,
    logprobs,
    losses,
    metrics,
    models,
    policy_losses,
    rollout_correction,
    sharding,
)

Batch = dict[str, jax.Array]
BATCH_KEYS = ("tokens", "attention_mask", "response_mask")  # plus "rewards" or "advantages"
POLICY_STATISTICS = ("logp", "entropy", "prompt_logp")  # estimator inputs scored by the step
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


def _deinterleave(x: jax.Array) -> jax.Array:
    """The inverse of :func:`_interleave`: ``[parts, N / parts, ...] -> [N, ...]``."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def _check_batch(batch: Mapping[str, Any], config: ml_collections.ConfigDict) -> None:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"train batch is missing {missing}; it needs {list(BATCH_KEYS)}")
    if "advantages" not in batch and "rewards" not in batch:
        raise ValueError("train batch needs 'rewards' (the step runs config.advantage) or "
                         "precomputed 'advantages'")
    if config.loss.kl_coef and "ref_logp" not in batch:
        raise ValueError("loss.kl_coef > 0 needs batch['ref_logp'] (reference log-probs)")
    if (config.rollout.correction != "none" and "is_weights" not in batch
            and "sampling_logp" not in batch):
        raise ValueError(f"rollout.correction={config.rollout.correction!r} needs "
                         "batch['sampling_logp'] (or precomputed batch['is_weights'])")
    N, T = batch["tokens"].shape
    L = batch["response_mask"].shape[-1]
    shapes = {"attention_mask": (N, T), "old_logp": (N, L), "sampling_logp": (N, L),
              "rewards": (N,), "prompt_mask": (N, T - L), "ref_logp": (N, L),
              "is_weights": (N, L)}
    for key, shape in shapes.items():
        if key in batch and tuple(batch[key].shape) != shape:
            raise ValueError(f"batch['{key}'] has shape {batch[key].shape}, expected {shape}")
    if L >= T:
        raise ValueError(f"responses of length {L} leave no prompt in tokens of length {T}")
    if "advantages" not in batch:
        group_size = config.rollout.group_size
        if N % group_size:
            raise ValueError(f"batch of {N} sequences is not whole groups of "
                             f"rollout.group_size={group_size}")
        needed = advantages.spec(config.advantage.estimator).inputs
        if "prompt_mask" in needed and "prompt_mask" not in batch:
            raise ValueError(f"estimator {config.advantage.estimator!r} reads prompt tokens: "
                             "the batch needs 'prompt_mask' [N, P]")
    mini_batches, micro_batches = config.batching.mini_batches, config.batching.micro_batches
    if N % (mini_batches * micro_batches):
        raise ValueError(
            f"batch of {N} sequences does not split into batching.mini_batches="
            f"{mini_batches} x batching.micro_batches={micro_batches}"
        )


def batch_shapes(config: ml_collections.ConfigDict, num_rows: int, total_len: int,
                 response_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The train batch the rollout builds for ``config`` (``rollout.train_batch``), as shapes,
    nothing allocated (``rlvr_jax.compile_check``).

    ``num_rows = N = B * G`` sequences of ``total_len = T = P + L`` tokens with
    ``response_len = L``: the arrays of the module docstring that ``config`` uses (rewards, not
    advantages: the step runs the estimator).
    """
    G = config.rollout.group_size
    if num_rows % G or response_len >= total_len:
        raise ValueError(f"num_rows={num_rows} must be a multiple of rollout.group_size={G} "
                         f"and response_len={response_len} < total_len={total_len}")
    N, T, L = num_rows, total_len, response_len
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    shapes = {
        "tokens": jax.ShapeDtypeStruct((N, T), jnp.int32),
        "attention_mask": jax.ShapeDtypeStruct((N, T), jnp.bool_),
        "response_mask": f32(N, L),
        "rewards": f32(N),
    }
    if config.rollout.old_logp_source == "sampler":
        shapes["old_logp"] = f32(N, L)
    if config.rollout.correction != "none":
        shapes["sampling_logp"] = f32(N, L)
    if "prompt_mask" in advantages.spec(config.advantage.estimator).inputs:
        shapes["prompt_mask"] = jax.ShapeDtypeStruct((N, T - L), jnp.bool_)
    if config.loss.kl_coef:
        shapes["ref_logp"] = f32(N, L)
    return shapes


def make_train_step(
    config: ml_collections.ConfigDict,
    model_config: models.ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding.LogicalRules,
    state_shardings: Any,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array], Batch]]:
    """The jitted update ``(state, batch) -> (state, metrics, rollout_policy)``; see the module
    docstring.

    Reads ``config.loss``, ``config.batching``, ``config.advantage``,
    ``config.rollout.group_size``, ``config.rollout.correction[_cap]`` and
    ``config.rollout.sampling.temperature`` (the temperature of every log-prob and entropy).
    Loss-setting errors raise here, before anything is compiled; batch errors raise on the call,
    before tracing. The input state is donated.
    """
    losses.check_settings(**config.loss)
    loss_settings = dict(config.loss)
    micro_batches = config.batching.micro_batches
    mini_batches, epochs = config.batching.mini_batches, config.batching.epochs
    row_sharding = sharding.batch_sharding(mesh, rules)
    temperature = config.rollout.sampling.temperature
    selects_tokens = loss_settings["objective"] in policy_losses.COVARIANCE_OBJECTIVES
    group_size = config.rollout.group_size
    estimator = advantages.spec(config.advantage.estimator)
    estimator_options = dict(config.advantage.options)
    scores_prompt = "prompt_logp" in estimator.inputs
    correction, correction_cap = config.rollout.correction, config.rollout.correction_cap
    single_update = epochs == 1 and mini_batches == 1 and not selects_tokens

    def scores(params, mb: Batch, with_prompt: bool) -> logprobs.TokenLogprobs:
        """The policy's scores of ``mb``'s tokens ``[n, T]`` (response positions only, unless
        ``with_prompt``)."""
        prompt_len = mb["tokens"].shape[1] - mb["response_mask"].shape[1]
        return logprobs.token_logprobs(
            model_config, params, mb["tokens"], mb["attention_mask"],
            chunk_size=config.batching.logprob_chunk_size, temperature=temperature,
            score_from=1 if with_prompt else prompt_len,
        )

    def policy_statistics(scored: logprobs.TokenLogprobs, prompt_len: int) -> Batch:
        """The rollout policy's statistics of a batch's rows, constants for the gradient."""
        prompt, response = scored.split(prompt_len)
        out = {"logp": response.logprobs, "entropy": response.entropy}  # [n, L] each
        if scores_prompt:
            out |= {"prompt_logp": prompt.logprobs, "prompt_valid": prompt.mask}  # [n, P]
        return jax.lax.stop_gradient(out)

    def needs_policy_for_advantages(batch: Batch) -> bool:
        """Whether the estimator reads a statistic only the rollout policy's scores give."""
        from_batch = {"logp"} if "old_logp" in batch else set()
        return "advantages" not in batch and bool(
            set(estimator.inputs) & (set(POLICY_STATISTICS) - from_batch))

    def estimate(batch: Batch, policy: Batch) -> jax.Array:
        """``config.advantage`` on the whole batch's rewards ``[B, G]`` -> ``[N]`` or ``[N, L]``."""
        N, L = batch["response_mask"].shape
        B = N // group_size
        stats = {"response_mask": batch["response_mask"].reshape(B, group_size, L)}
        if "logp" in estimator.inputs:
            logp = batch["old_logp"] if "old_logp" in batch else policy["logp"]
            stats["logp"] = logp.reshape(B, group_size, L)
        if "entropy" in estimator.inputs:
            stats["entropy"] = policy["entropy"].reshape(B, group_size, L)
        if scores_prompt:
            stats["prompt_logp"] = policy["prompt_logp"][::group_size]  # [B, P]
        if "prompt_mask" in estimator.inputs:
            stats["prompt_mask"] = (batch["prompt_mask"][::group_size]
                                    & policy["prompt_valid"][::group_size])  # [B, P]
        rewards = batch["rewards"].reshape(B, group_size)
        adv = advantages.compute(config.advantage.estimator, rewards, stats, **estimator_options)
        return adv.reshape(N, *adv.shape[2:]).astype(jnp.float32)

    def completed(batch: Batch, policy: Batch) -> tuple[Batch, Batch]:
        """``batch`` with what it lacks derived from the rollout ``policy`` statistics, and
        the derived arrays (the step's ``rollout_policy`` output)."""
        derived = {k: policy[k] for k in ("logp", "entropy") if k in policy}
        if "advantages" not in batch:
            derived["advantages"] = estimate(batch, policy)
        if correction != "none" and "is_weights" not in batch:
            derived["is_weights"] = rollout_correction.importance_weights(
                policy["logp"], batch["sampling_logp"], batch["response_mask"],
                level=correction, cap=correction_cap)
        batch = {"old_logp": policy["logp"], **batch,
                 **{k: derived[k] for k in ("advantages", "is_weights") if k in derived}}
        return batch, derived

    def scoring_pass(params, batch: Batch) -> Batch:
        """The rollout policy's statistics of every row, one micro-batch at a time (no
        gradient)."""
        prompt_len = batch["tokens"].shape[1] - batch["response_mask"].shape[1]
        inputs = {k: _interleave(batch[k], micro_batches)
                  for k in ("tokens", "attention_mask", "response_mask")}

        def one(mb: Batch) -> Batch:
            mb = jax.lax.with_sharding_constraint(mb, row_sharding)
            return policy_statistics(scores(params, mb, scores_prompt), prompt_len)

        return jax.tree.map(_deinterleave, jax.lax.map(one, inputs))

    def loss_fn(params, mb: Batch, normalizer, token_count, one_pass: bool):
        """The loss of micro-batch ``mb``. ``one_pass``: the rollout policy is ``params`` (one
        update per rollout), so what ``mb`` lacks (:func:`completed`) comes from this very
        forward pass, whose statistics are returned too."""
        prompt_len = mb["tokens"].shape[1] - mb["response_mask"].shape[1]
        scored = scores(params, mb, scores_prompt and one_pass)
        response = scored.split(prompt_len)[1]
        derived = {}
        if one_pass:
            mb, derived = completed(mb, policy_statistics(scored, prompt_len))
        entropy = response.entropy
        if not loss_settings["entropy_coef"]:
            entropy = jax.lax.stop_gradient(entropy)
        loss, loss_metrics = losses.policy_loss(
            response.logprobs, mb["old_logp"], mb["advantages"], mb["response_mask"],
            logp_ref=mb.get("ref_logp"), entropy=entropy, normalizer=normalizer,
            metrics_normalizer=token_count, is_weights=mb.get("is_weights"),
            cov_selection=mb.get("cov_selection"), **loss_settings,
        )
        return loss, (loss_metrics, derived)

    def covariance_selection(params, mini: Batch, micro: Batch, key) -> jax.Array:
        """Clip-Cov's / KL-Cov's tokens of the mini-batch, in the micro-batch layout."""
        def current_logp(mb: Batch) -> jax.Array:
            mb = jax.lax.with_sharding_constraint(mb, row_sharding)
            prompt_len = mb["tokens"].shape[1] - mb["response_mask"].shape[1]
            return jax.lax.stop_gradient(scores(params, mb, False).split(prompt_len)[1].logprobs)

        logp = jax.lax.map(current_logp, micro)  # [micro_batches, n / micro_batches, L]
        priority = _interleave(jax.random.uniform(key, mini["response_mask"].shape),
                               micro_batches)  # drawn in the mini-batch's own row order
        return policy_losses.covariance_selection(
            logp, micro["old_logp"], micro["advantages"], micro["response_mask"],
            priority=priority, **{k: loss_settings[k] for k in policy_losses.SELECTION_SETTINGS})

    def combine(total: dict, part: dict) -> dict:
        return {k: EXTREME_METRICS.get(k, jnp.add)(total[k], part[k]) for k in total}

    def update(carry, inputs: tuple[Batch, jax.Array], one_pass: bool = False):
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
            (loss, (step_metrics, derived)), grads = grad_fn(params, mb, normalizer,
                                                             token_count, one_pass)
            grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
            return (grads, combine(metrics_acc, {**step_metrics, "loss": loss})), derived

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(functools.partial(loss_fn, one_pass=one_pass), params, first,
                                normalizer, token_count)
        metrics0 = {k: jnp.zeros((), jnp.float32) for k in shapes[1][0]} | {"loss": jnp.zeros(())}
        metrics0 |= {"ratio_max": jnp.asarray(-jnp.inf), "ratio_min": jnp.asarray(jnp.inf)}
        grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        (grads, update_metrics), derived = jax.lax.scan(accumulate, (grads0, metrics0), micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        update_metrics["grad_norm"] = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (update_metrics, derived)

    def epoch(carry, epoch_key):
        batch = carry[2]
        if mini_batches > 1:
            order = jax.random.permutation(epoch_key, batch["tokens"].shape[0])
            batch = jax.tree.map(lambda x: x[order], batch)
        minis = jax.tree.map(lambda x: _interleave(x, mini_batches), batch)
        update_keys = jax.random.split(jax.random.fold_in(epoch_key, 1), mini_batches)
        (params, opt_state), (epoch_metrics, _) = jax.lax.scan(update, carry[:2],
                                                               (minis, update_keys))
        return (params, opt_state, carry[2]), epoch_metrics

    def train_step(state: TrainState, batch: Batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        missing = any(k not in batch for k in ("old_logp", "advantages")) or (
            correction != "none" and "is_weights" not in batch)
        if missing and single_update and (
                micro_batches == 1 or not needs_policy_for_advantages(batch)):  # one pass
            precomputed = {}
            if "advantages" not in batch and not needs_policy_for_advantages(batch):
                precomputed["advantages"] = estimate(batch, {})
            (params, opt_state), (per_update, derived) = update(
                (state.params, state.opt_state), ({**batch, **precomputed}, key), one_pass=True)
            per_update = jax.tree.map(lambda x: x[None, None], per_update)  # [epochs, minis]
            derived = {**precomputed, **jax.tree.map(_deinterleave, derived)}
            used = {"old_logp": derived["logp"], **batch, **derived}
        else:
            derived = {}
            if missing:
                batch, derived = completed(batch, scoring_pass(state.params, batch))
            epoch_keys = jax.random.split(key, epochs)
            (params, opt_state, _), per_update = jax.lax.scan(
                epoch, (state.params, state.opt_state, batch), epoch_keys
            )  # per_update leaves: [epochs, mini_batches]
            used = batch
        out = {
            k: jnp.max(v) if k == "ratio_max" else jnp.min(v) if k == "ratio_min" else
            jnp.mean(v) for k, v in per_update.items()
        }
        out["cov_logp_advantage"] = metrics.logp_advantage_covariance(
            used["old_logp"], used["advantages"], used["response_mask"]
        )
        out["padded_fraction"] = 1.0 - jnp.mean(used["attention_mask"].astype(jnp.float32))
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, out, derived

    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, row_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh), row_sharding),
        donate_argnums=0,
    )

    def run(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array], Batch]:
        _check_batch(batch, config)
        with sharding.activate(mesh, rules):
            return jitted(state, batch)

    run.lower = lambda state, batch: jitted.lower(state, batch)  # for cost analysis
    return run


__all__ = ["BATCH_KEYS", "TrainState", "batch_shapes", "create_train_state", "make_train_step"]
