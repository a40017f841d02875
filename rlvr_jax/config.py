"""The run configuration: every key with its default, validation, and override checking.

Recipes in ``configs/`` start from :func:`base_config` and change what they need; the entry
point validates the result with :func:`validate` before anything is loaded or compiled.
Sections and keys (see each module for the meaning of its section)::

    seed, total_steps
    model:      name (preset, HF directory or .gguf), dtype, param_dtype, remat_policy,
                cache_dir, tokenizer (default: same as name)
    task:       name (rewards.get_task), options (keyword arguments of the task factory),
                train_split, eval_split
    rollout:    prompts_per_step (B), group_size (G), max_prompt_len, max_new_tokens,
                temperature, top_k, top_p, min_p, prompt_bucket, length_bucket,
                old_logp_source ("trainer" | "sampler"), dynamic_sampling,
                max_sampling_rounds, overlong_buffer (0: off), overlong_coef,
                unstack_decode_layers (decode on per-layer weight copies: faster, one more
                set of layer weights in memory while generating; see sampling.generate)
    advantage:  estimator (advantages.ESTIMATORS), options (its keyword arguments)
    loss:       train_step.LOSS_DEFAULTS       step: train_step.STEP_DEFAULTS
    optim:      optimizer.DEFAULTS
    mesh:       data, fsdp, tensor (-1: the rest)     sharding: logical_axis_rules
    checkpoint: save_every_steps, keep_last, async_save (dir: <workdir>/checkpoints)
    eval:       every_steps (0: only at the end), num_prompts, samples_per_prompt,
                temperature, top_p, max_new_tokens, at_start, task (default: the training
                task) and task_options, evaluated on its ``task.eval_split``
    logging:    tensorboard, wandb, wandb_project, num_sample_texts
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from rlvr_jax import advantages
from rlvr_jax import optimizer as optimizer_lib
from rlvr_jax import train_step as train_step_lib

placeholder = ml_collections.config_dict.placeholder


def base_config() -> ml_collections.ConfigDict:
    """Every key of a run with its default value."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 100
    config.model = ml_collections.ConfigDict({
        "name": "smollm2-135m-instruct",
        "tokenizer": placeholder(str),
        "dtype": "float32",
        "param_dtype": "float32",
        "remat_policy": "none",
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
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "prompt_bucket": 64,
        "length_bucket": 64,
        "old_logp_source": "trainer",
        "dynamic_sampling": False,
        "max_sampling_rounds": 4,
        "overlong_buffer": 0,
        "overlong_coef": 1.0,
        "unstack_decode_layers": True,
    })
    config.advantage = ml_collections.ConfigDict({
        "estimator": "grpo",
        "options": ml_collections.ConfigDict(),
    })
    loss = dict(train_step_lib.LOSS_DEFAULTS)
    loss["dual_clip"] = placeholder(float)
    loss["max_len"] = placeholder(int)
    config.loss = ml_collections.ConfigDict(loss)
    config.step = ml_collections.ConfigDict(dict(train_step_lib.STEP_DEFAULTS))
    config.optim = ml_collections.ConfigDict(dict(optimizer_lib.DEFAULTS))
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
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": placeholder(int),
        "task": "",
        "task_options": ml_collections.ConfigDict(),
    })
    config.logging = ml_collections.ConfigDict({
        "tensorboard": True,
        "wandb": False,
        "wandb_project": placeholder(str),
        "num_sample_texts": 2,
    })
    return config


def _is_section(value: Any) -> bool:
    return isinstance(value, Mapping | ml_collections.ConfigDict)


def flat_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of ``config`` (option dictionaries count as leaves)."""
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if _is_section(value) and not key.endswith("options") and len(value):
            keys.extend(flat_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def _unknown_key_error(key: str, known: Iterable[str], where: str) -> ValueError:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {sorted(known)}"
    return ValueError(f"{where}: unknown config key '{key}'{hint}")


def check_override_keys(config: Mapping[str, Any], overrides: Iterable[str]) -> None:
    """Raises for an override path (``a.b.c``) that is not a key of ``config``.

    Paths under an ``options`` dictionary (estimator and task options) are free-form and are
    checked by :func:`validate` instead.
    """
    known = set(flat_keys(config))
    for key in overrides:
        if key in known or any(key.startswith(f"{k}.") for k in known if k.endswith("options")):
            continue
        raise _unknown_key_error(key, known, "override --config." + key)


def _check_section(config: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> None:
    for key in config.get(name, {}):
        if key not in defaults:
            raise _unknown_key_error(f"{name}.{key}", [f"{name}.{k}" for k in defaults], name)


def _check_estimator_options(estimator: str, options: Mapping[str, Any]) -> None:
    entry = advantages.spec(estimator)
    parameters = inspect.signature(entry.fn).parameters
    allowed = [p for p, v in parameters.items()
               if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in entry.inputs]
    for key in options:
        if key not in allowed:
            raise _unknown_key_error(
                f"advantage.options.{key}", [f"advantage.options.{k}" for k in allowed],
                f"estimator {estimator!r}",
            )


def validate(config: Mapping[str, Any]) -> None:
    """Checks every section's keys and the values that can be checked without loading anything.

    Raises ``ValueError`` naming the offending key (with the closest valid keys for typos).
    """
    reference = base_config()
    for key in config:
        if key not in reference:
            raise _unknown_key_error(key, list(reference), "config")
    for name in reference:
        if _is_section(reference[name]):
            _check_section(config, name, reference[name])
    advantage = config["advantage"]
    advantages.spec(advantage["estimator"])
    _check_estimator_options(advantage["estimator"], advantage["options"])
    train_step_lib.check_loss_settings(config["loss"])
    train_step_lib.check_step_settings(config["step"])
    optimizer_lib.settings(config["optim"])
    rollout = config["rollout"]
    if rollout["group_size"] < 1 or rollout["prompts_per_step"] < 1:
        raise ValueError("rollout.group_size and rollout.prompts_per_step must be >= 1")
    if rollout["old_logp_source"] not in ("trainer", "sampler"):
        raise ValueError(
            f"rollout.old_logp_source={rollout['old_logp_source']!r}; expected 'trainer' or "
            "'sampler'"
        )
    if rollout["overlong_buffer"] and advantage["estimator"] == "asym_grpo":
        raise ValueError(
            "rollout.overlong_buffer makes rewards non-binary, but advantage.estimator="
            "'asym_grpo' requires binary rewards"
        )
    if not 0 <= rollout["overlong_buffer"] <= rollout["max_new_tokens"]:
        raise ValueError(
            f"rollout.overlong_buffer={rollout['overlong_buffer']} must be in "
            f"[0, rollout.max_new_tokens={rollout['max_new_tokens']}]"
        )
    sequences = rollout["prompts_per_step"] * rollout["group_size"]
    per_update = config["step"]["mini_batches"] * config["step"]["micro_batches"]
    if sequences % per_update:
        raise ValueError(
            f"rollout.prompts_per_step x rollout.group_size = {sequences} sequences do not split "
            f"into step.mini_batches x step.micro_batches = {per_update}"
        )
