"""The run configuration: every key with its default, written once, and the checks on values.

Recipes in ``configs/`` start from :func:`base_config` and change what they need; consumers read
attributes (``config.rollout.group_size``) and never re-merge or re-default a section. The
config is locked: assigning a key that does not exist fails at once with ml_collections' own
"did you mean" message, in a recipe, a sweep and on the command line alike. Only the task
option dictionaries (``task.options``, ``eval.task_options``) are open to a recipe; their keys
are the keyword arguments of the task's factory, checked when the task is built. A command line
or a sweep can change only keys that exist, as ml_collections' ``config_flags`` does.

Where a section is a function's keyword arguments, the signature is the schema and holds the
defaults; :func:`base_config` copies them in, so the config shows every value a run uses:

=================================== ======================================================
section                             keyword arguments of
=================================== ======================================================
``loss``                            :func:`rlvr_jax.losses.policy_loss` (its settings)
``optim``                           :func:`rlvr_jax.optimizer.make_optimizer`
``rollout.sampling``, ``eval.sampling`` :class:`rlvr_jax.sampling.SamplingStrategy`
``advantage.options``               the estimator's keyword options (:mod:`rlvr_jax.advantages`),
                                    for another estimator set by ``recipes.apply_variant``
=================================== ======================================================

The other sections (their keys are documented where they are read)::

    seed, total_steps (0: an evaluation-only run, with eval.at_start), compilation_cache
                (JAX's persistent compilation cache directory, shared by runs: a second run,
                a resumed run and a study's later runs skip compiling; "": off)
    model:      name (preset, HF directory or .gguf), tokenizer (None: same as name), dtype,
                param_dtype, remat_policy, attention_impl ("einsum" | "xla" | "cudnn":
                models.ModelConfig.attention_impl), cache_dir
    task:       name (``tasks.names()``), options, train_split, eval_split
    rollout:    prompts_per_step (B), group_size (G), max_prompt_len, max_new_tokens, sampling,
                prompt_bucket, length_bucket, old_logp_source ("trainer" | "sampler"),
                correction ("none" | "token" | "sequence"), correction_cap (truncated
                importance weights trainer / sampler: rlvr_jax.rollout_correction),
                dynamic_sampling, max_sampling_rounds, overlong_buffer (0: off), overlong_coef,
                unstack_decode_layers (see sampling.generate)
    advantage:  estimator (advantages.ESTIMATORS), options, prompt_tokens (which prompt tokens
                the prompt statistics count, for ProGRPO's c(q): tasks.prompts.PROMPT_TOKENS)
    batching:   epochs, mini_batches (optimizer updates per epoch), micro_batches (gradient
                accumulation per update), logprob_chunk_size (see train_step)
    mesh:       data, fsdp, tensor (-1: the rest)     sharding: logical_axis_rules (None: the
                default rules of rlvr_jax.sharding)
    checkpoint: save_every_steps, keep_last, async_save (directory: <workdir>/checkpoints)
    eval:       every_steps (0: only at the end), at_start, num_prompts, samples_per_prompt,
                samples_per_prompt_at_ends (the evaluations before and after training, which
                give pass@k up to this k; None: samples_per_prompt), sampling,
                max_new_tokens (None: rollout's), task ("": the training task),
                task_options; evaluated on ``task.eval_split``; seed (picks the prompts and
                the sampling key, apart from the run's seed, so runs that differ in seed or
                estimator are evaluated on the same prompts), allow_train_overlap (False: a
                run whose evaluation prompts occur in the training split stops with an error)
    logging:    tensorboard, wandb, wandb_project, num_sample_texts
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections

from rlvr_jax import (
    advantages,
    logprobs,
    losses,
    optimizer,
    rollout_correction,
    sampling,
    sharding,
)
from rlvr_jax.models.config import ATTENTION_IMPLS, CUDNN_DTYPES
from rlvr_jax.tasks.prompts import PROMPT_TOKENS
from rlvr_jax.tasks.registry import check_name as check_task_name

placeholder = ml_collections.config_dict.placeholder
OPEN_SECTIONS = ("task.options", "eval.task_options")


def _field(default: Any, annotation: Any) -> Any:
    """A config value for a keyword default; ``None`` becomes a typed placeholder."""
    if default is not None:
        return default
    types_ = [t for t in typing.get_args(annotation) if t is not type(None)]
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType) or len(types_) != 1:
        raise TypeError(f"cannot type a None default annotated {annotation!r}")
    return placeholder(types_[0])


def keyword_defaults(fn: Callable[..., Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` (minus ``exclude``) with their defaults."""
    hints = typing.get_type_hints(fn)
    return {
        name: _field(p.default, hints.get(name))
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in exclude
    }


def _strategy_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {f.name: f.default for f in dataclasses.fields(sampling.SamplingStrategy)})


def base_config() -> ml_collections.ConfigDict:
    """Every key of a run with its default value (locked; option dictionaries open)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 100
    config.compilation_cache = "~/.cache/rlvr_jax/compilation"
    config.model = ml_collections.ConfigDict({
        "name": "smollm2-135m-instruct",
        "tokenizer": placeholder(str),
        "dtype": "float32",
        "param_dtype": "float32",
        "remat_policy": "none",
        "attention_impl": "einsum",
        "cache_dir": placeholder(str),
    })
    config.task = ml_collections.ConfigDict({
        "name": "basic_arithmetic",
        "options": ml_collections.ConfigDict(),
        "train_split": "train",
        "eval_split": "test",
    })
    config.rollout = ml_collections.ConfigDict({
        "prompts_per_step": 8,
        "group_size": 8,
        "max_prompt_len": 256,
        "max_new_tokens": 256,
        "sampling": _strategy_defaults(),
        "prompt_bucket": 64,
        "length_bucket": 64,
        "old_logp_source": "trainer",
        "correction": "none",
        "correction_cap": 2.0,
        "dynamic_sampling": False,
        "max_sampling_rounds": 4,
        "overlong_buffer": 0,
        "overlong_coef": 1.0,
        "unstack_decode_layers": True,
    })
    config.advantage = ml_collections.ConfigDict({
        "estimator": "grpo",
        "options": keyword_defaults(advantages.grpo),
        "prompt_tokens": "question",
    })
    config.loss = ml_collections.ConfigDict(
        keyword_defaults(losses.policy_loss, exclude=losses.LOSS_INPUTS))
    config.batching = ml_collections.ConfigDict({
        "epochs": 1,
        "mini_batches": 1,
        "micro_batches": 1,
        "logprob_chunk_size": logprobs.DEFAULT_CHUNK_SIZE,
    })
    config.optim = ml_collections.ConfigDict(keyword_defaults(optimizer.make_optimizer))
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    config.sharding = ml_collections.ConfigDict({"logical_axis_rules": placeholder(tuple)})
    config.checkpoint = ml_collections.ConfigDict({
        "save_every_steps": 10,
        "keep_last": 3,
        "async_save": True,
    })
    config.eval = ml_collections.ConfigDict({
        "every_steps": 10,
        "at_start": True,
        "num_prompts": 32,
        "samples_per_prompt": 8,
        "samples_per_prompt_at_ends": placeholder(int),
        "sampling": _strategy_defaults(),
        "max_new_tokens": placeholder(int),
        "task": "",
        "task_options": ml_collections.ConfigDict(),
        "seed": 0,
        "allow_train_overlap": False,
    })
    config.logging = ml_collections.ConfigDict({
        "tensorboard": True,
        "wandb": False,
        "wandb_project": placeholder(str),
        "num_sample_texts": 2,
    })
    return lock(config)


def flatten(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"section.key": value}`` for every leaf at every depth (option dictionaries too)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            out[prefix[:-1]] = node

    walk("", config.to_dict())
    return out


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks ``config`` in place (no new keys) except its option dictionaries; returns it."""
    config.lock()
    for path in OPEN_SECTIONS:
        section, key = path.split(".")
        config[section][key].unlock()
    return config


def check_options(fn: Callable[..., Any], options: Mapping[str, Any], where: str,
                  inputs: tuple[str, ...] = (), hint: str = "") -> None:
    """Raises naming ``where.<key>`` for an option that is not a keyword argument of ``fn``."""
    allowed = keyword_defaults(fn, exclude=inputs)
    for key in sorted(set(options) - set(allowed)):
        close = difflib.get_close_matches(key, allowed, n=1)
        guess = f"; did you mean {where}.{close[0]}?" if close else "."
        raise ValueError(
            f"unknown option '{where}.{key}' for {fn.__name__}{guess} Known options: "
            f"{sorted(allowed)}{hint}"
        )


def _value(config: ml_collections.ConfigDict, path: str) -> Any:
    for key in path.split("."):
        config = config[key]
    return config


def _at_least(config: ml_collections.ConfigDict, minimum: int, *paths: str) -> None:
    for path in paths:
        if not _value(config, path) >= minimum:
            raise ValueError(f"{path} must be >= {minimum}, got {_value(config, path)}")


def _strategy(config: ml_collections.ConfigDict, path: str) -> sampling.SamplingStrategy:
    """The ``SamplingStrategy`` of section ``path``; a bad value's error names its key."""
    try:
        return sampling.SamplingStrategy(**_value(config, path))
    except ValueError as error:  # "top_p must be in (0, 1], got 0.0"
        raise ValueError(f"{path}.{error}") from None


def _check_training_sampling(strategy: sampling.SamplingStrategy) -> None:
    """Refuses a ``rollout.sampling`` whose distribution the trainer does not score.

    The trainer, the old and the reference log-probs are ``log_softmax(z / T)`` at
    ``T = rollout.sampling.temperature`` (``logprobs``), the distribution of an untruncated
    sampler; evaluation (``eval.sampling``) may use any strategy.
    """
    if strategy.is_greedy:
        raise ValueError(
            "rollout.sampling.temperature=0 is greedy decoding: its samples have no "
            "distribution to take a policy gradient or an importance ratio of. Use a "
            "temperature > 0 for training rollouts (eval.sampling may be greedy)."
        )
    for key, value, off in (("top_k", strategy.top_k, strategy.top_k <= 0),
                            ("top_p", strategy.top_p, strategy.top_p == 1.0),
                            ("min_p", strategy.min_p, strategy.min_p == 0.0)):
        if not off:
            raise ValueError(
                f"rollout.sampling.{key}={value} truncates the sampling distribution, but the "
                "trainer's log-probs (current, old, reference) are of the untruncated policy "
                "at the sampling temperature, so the importance ratio and the policy gradient "
                "would be of a distribution the samples did not come from. Training rollouts "
                "take top_k=0, top_p=1.0, min_p=0.0 (eval.sampling may truncate)."
            )


def _check_estimator_conventions(config: ml_collections.ConfigDict) -> None:
    """The estimator's pairings with the rollout and the loss that would silently be wrong.

    DAPO's overlong penalty makes rewards non-binary: the estimators that read rewards as binary
    outcomes (``EstimatorSpec.binary_rewards``: AsymGRPO, LENS, PSR / NSR / W-REINFORCE) refuse
    it; ProGRPO accepts it (its correctness test ``r > 0`` on the shaped
    reward is documented in ``advantages.progrpo``). LENS's ``per_response`` weighting already
    divides by the response length, which ``seq_mean_token_mean`` would do a second time.
    """
    advantage = config.advantage
    if advantage.prompt_tokens not in PROMPT_TOKENS:
        raise ValueError(
            f"advantage.prompt_tokens={advantage.prompt_tokens!r}; expected one of {PROMPT_TOKENS}"
        )
    if config.rollout.overlong_buffer and advantages.spec(advantage.estimator).binary_rewards:
        accepting = [name for name, entry in advantages.ESTIMATORS.items()
                     if not entry.binary_rewards]
        raise ValueError(
            "rollout.overlong_buffer makes rewards non-binary (verifier reward plus a length "
            f"penalty), but advantage.estimator={advantage.estimator!r} requires binary rewards; "
            "set rollout.overlong_buffer=0 or use an estimator that accepts shaped rewards "
            f"({', '.join(accepting)})"
        )
    if (advantage.estimator == "lens"
            and advantage.options.get("all_wrong_weighting") == "per_response"
            and config.loss.aggregation == "seq_mean_token_mean"):
        raise ValueError(
            "advantage.options.all_wrong_weighting='per_response' divides each all-wrong "
            "response's advantage by its length, and loss.aggregation='seq_mean_token_mean' "
            "divides by it again; under seq_mean_token_mean the default 'loss' already counts "
            "each response once"
        )


def _check_model_dtypes(model: ml_collections.ConfigDict) -> None:
    """Valid dtype names, an attention implementation that takes the compute dtype, and f32
    storage of the trained weights.

    An optimizer update is applied to the stored weights: in bfloat16 (8 significant bits) an
    update smaller than half the spacing at the weight's magnitude rounds away (``1.0 + 1e-6``
    is ``1.0``), so at RL learning rates most updates are lost. ``param_dtype='float32'`` with
    ``dtype='bfloat16'`` keeps f32 master weights and computes in bf16 (each use casts them),
    in no more memory than bf16 weights plus a separate f32 master copy would take.
    """
    for key in ("dtype", "param_dtype"):
        try:
            jnp.dtype(model[key])
        except TypeError:
            raise ValueError(f"model.{key}={model[key]!r} is not a dtype name") from None
    if model.attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl={model.attention_impl!r}; expected one of "
                         f"{ATTENTION_IMPLS}")
    if model.attention_impl == "cudnn" and jnp.dtype(model.dtype).name not in CUDNN_DTYPES:
        raise ValueError(f"model.attention_impl='cudnn' needs model.dtype in {CUDNN_DTYPES} "
                         f"(cuDNN's fused attention), got {model.dtype!r}")
    if jnp.dtype(model.param_dtype) != jnp.float32:
        raise ValueError(
            f"model.param_dtype={model.param_dtype!r} would store the trained weights in a "
            "low-precision type, where most optimizer updates at RL learning rates round away; "
            "train with model.param_dtype='float32' (f32 master weights) and set "
            "model.dtype='bfloat16' to compute in bfloat16"
        )


def _check_lengths_and_counts(config: ml_collections.ConfigDict) -> None:
    """Sizes and counts, each ``>= 1`` (``>= 0`` where 0 means off), before any check that
    combines them."""
    if config.total_steps < 0 or (config.total_steps == 0 and not config.eval.at_start):
        raise ValueError(
            f"total_steps must be >= 1 (0: an evaluation-only run, with eval.at_start=True), "
            f"got {config.total_steps}"
        )
    if config.rollout.group_size < 2:
        raise ValueError(
            f"rollout.group_size={config.rollout.group_size}: every advantage estimator measures "
            "a response against the others of its group, so with fewer than 2 responses per "
            "group the advantages are 0 (ProGRPO keeps only its ARM term) and the policy does "
            "not learn; use rollout.group_size >= 2"
        )
    _at_least(config, 1, "rollout.prompts_per_step", "rollout.max_prompt_len",
              "rollout.max_new_tokens", "rollout.prompt_bucket", "rollout.length_bucket",
              "rollout.max_sampling_rounds", "batching.epochs", "batching.mini_batches",
              "batching.micro_batches", "batching.logprob_chunk_size", "eval.num_prompts",
              "eval.samples_per_prompt")
    _at_least(config, 0, "eval.every_steps", "checkpoint.save_every_steps",
              "checkpoint.keep_last", "logging.num_sample_texts", "rollout.overlong_coef")
    if config.eval.max_new_tokens is not None:
        _at_least(config, 1, "eval.max_new_tokens")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the values that can be checked without loading anything (and without devices:
    :func:`validate_devices` checks the rest once they are known).

    Raises ``ValueError`` naming the offending key. Keys themselves are checked by the lock.
    """
    _check_lengths_and_counts(config)
    _check_model_dtypes(config.model)
    check_task_name(config.task.name, "task.name")
    if config.eval.task:
        check_task_name(config.eval.task, "eval.task")
    estimator = advantages.spec(config.advantage.estimator)
    check_options(estimator.fn, config.advantage.options, "advantage.options", estimator.inputs,
                  hint="; a recipe variant (configs/<recipe>.py:<variant>) sets an estimator "
                  "together with its options")
    missing = sorted(set(keyword_defaults(estimator.fn, exclude=estimator.inputs))
                     - set(config.advantage.options))
    if missing:  # a key that is not there cannot be set on the command line either
        raise ValueError(
            f"advantage.options lacks {missing} of {config.advantage.estimator}: set an "
            "estimator with recipes.apply_variant(config, <variant>), which writes each of its "
            "options with its default, so that any can be set (--config.advantage.options."
            "<key>=<value>)"
        )
    advantages.check_options(config.advantage.options)
    losses.check_settings(**config.loss)
    optimizer.make_optimizer(**config.optim)
    _check_training_sampling(_strategy(config, "rollout.sampling"))
    _strategy(config, "eval.sampling")
    rollout = config.rollout
    if rollout.old_logp_source not in ("trainer", "sampler"):
        raise ValueError(
            f"rollout.old_logp_source={rollout.old_logp_source!r}; expected 'trainer' or "
            "'sampler'"
        )
    rollout_correction.check_settings(rollout.correction, rollout.correction_cap,
                                      rollout.old_logp_source)
    _check_estimator_conventions(config)
    at_ends = config.eval.samples_per_prompt_at_ends
    if at_ends is not None and at_ends < 1:
        raise ValueError(f"eval.samples_per_prompt_at_ends={at_ends} must be >= 1 (None: "
                         "eval.samples_per_prompt)")
    if not 0 <= rollout.overlong_buffer <= rollout.max_new_tokens:
        raise ValueError(
            f"rollout.overlong_buffer={rollout.overlong_buffer} must be in "
            f"[0, rollout.max_new_tokens={rollout.max_new_tokens}]"
        )
    sequences = rollout.prompts_per_step * rollout.group_size
    per_update = config.batching.mini_batches * config.batching.micro_batches
    if sequences % per_update:
        raise ValueError(
            f"rollout.prompts_per_step x rollout.group_size = {sequences} sequences do not split "
            f"into batching.mini_batches x batching.micro_batches = {per_update}"
        )


def validate_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """The checks that need the device count: the mesh (``mesh.*``, -1 resolved) and that the
    rollout's ``rollout.prompts_per_step x rollout.group_size`` sequences divide over the
    devices of the batch mesh axes (``sharding.logical_axis_rules``), as every rollout's
    log-prob pass and train step shard them. Raises ``ValueError`` naming the keys."""
    sizes = sharding.mesh_shape(config.mesh, num_devices)
    axes = sharding.batch_partition_spec(sharding.rules_from_config(config.sharding))[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    devices = math.prod(sizes[axis] for axis in axes)
    sequences = config.rollout.prompts_per_step * config.rollout.group_size
    if sequences % devices:
        raise ValueError(
            f"rollout.prompts_per_step x rollout.group_size = {sequences} sequences do not "
            f"divide over the {devices} devices of the batch mesh axes "
            f"({', '.join(f'mesh.{axis}={sizes[axis]}' for axis in axes)} on {num_devices} "
            "devices); change the batch or the mesh"
        )
