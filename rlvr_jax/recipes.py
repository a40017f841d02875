"""Named algorithm recipes: the estimator plus the loss and rollout settings it comes with.

A recipe config calls ``apply_variant(config, name)`` to turn a base setup into one algorithm.
Every choice is an ordinary config key, so a command line can still override it; the
estimator's options are filled in from its signature's defaults (:func:`estimator_options`)
so sweeps can override them, e.g. ``--config.advantage.options.alpha=0.5``.

=============== ======================= ============================================================
variant         estimator               loss / rollout settings
=============== ======================= ============================================================
grpo            grpo                    seq_mean_token_mean (the GRPO paper's normalisation)
dr_grpo         dr_grpo                 seq_sum_over_max_len (constant normaliser)
dapo            grpo                    token_mean, clip_high 0.28, dynamic sampling, overlong
                                        penalty with a buffer of a quarter of max_new_tokens
rloo            rloo                    token_mean
reinforce_pp    reinforce_pp_baseline   token_mean
progrpo         progrpo (ARM, alpha 1)  token_mean, clip_high 0.28
asym_grpo       asym_grpo               token_mean
lens            lens                    token_mean
=============== ======================= ============================================================
"""

from __future__ import annotations

from typing import Any

from rlvr_jax import advantages
from rlvr_jax.config import base_config, keyword_defaults

VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {"advantage.estimator": "grpo", "loss.aggregation": "seq_mean_token_mean"},
    "dr_grpo": {"advantage.estimator": "dr_grpo", "loss.aggregation": "seq_sum_over_max_len"},
    "dapo": {"advantage.estimator": "grpo", "loss.aggregation": "token_mean",
             "loss.clip_high": 0.28, "rollout.dynamic_sampling": True,
             "rollout.overlong_buffer": "quarter"},
    "rloo": {"advantage.estimator": "rloo", "loss.aggregation": "token_mean"},
    "reinforce_pp": {"advantage.estimator": "reinforce_pp_baseline",
                     "loss.aggregation": "token_mean"},
    "progrpo": {"advantage.estimator": "progrpo", "loss.aggregation": "token_mean",
                "loss.clip_high": 0.28},
    "asym_grpo": {"advantage.estimator": "asym_grpo", "loss.aggregation": "token_mean"},
    "lens": {"advantage.estimator": "lens", "loss.aggregation": "token_mean"},
}


def estimator_options(estimator: str) -> dict[str, Any]:
    """The options of ``estimator`` with the defaults of its signature."""
    entry = advantages.spec(estimator)
    return keyword_defaults(entry.fn, exclude=entry.inputs)


def apply_variant(config: Any, variant: str | None) -> Any:
    """Applies the settings of ``variant`` (default ``grpo``) to ``config`` in place."""
    variant = variant or "grpo"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    for path, value in VARIANTS[variant].items():
        if value == "quarter":
            value = max(1, config.rollout.max_new_tokens // 4)
        section, key = path.split(".")
        config[section][key] = value
    config.advantage.options = estimator_options(config.advantage.estimator)
    config.advantage.options.lock()
    return config


TFDS_DATA_DIR = "~/tensorflow_datasets"


def math_rl_config(
    model: str, task: str, eval_task: str, *, steps: int = 300,
    task_options: dict[str, Any] | None = None,
) -> Any:
    """A math RL run on a mid-size model with DAPO-style settings (bf16 compute, full remat,
    128 prompts x 8 responses, 4k-token responses, 4 updates per rollout, lr 1e-6 with a linear
    warm-up over 10 RL steps, as verl's DAPO example scripts; ``optim`` schedules count RL steps).

    ``model`` is a preset name (users pass their checkpoint directory as ``model.name``);
    ``task`` and ``eval_task`` are TFDS-backed task names sharing ``TFDS_DATA_DIR``.
    ``task_options`` replaces the training task's options (default ``{"data_dir":
    TFDS_DATA_DIR, "manual_dir": ""}``: empty means the data set is built already; a command
    line sets it to the raw files to build from), e.g. the ``components`` of a ``mixture``.
    """
    config = base_config()
    config.total_steps = steps
    config.model.name = model
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "full"
    config.task.name = task
    config.task.options = dict(task_options or {"data_dir": TFDS_DATA_DIR, "manual_dir": ""})
    config.eval.task = eval_task
    config.eval.task_options = {"data_dir": TFDS_DATA_DIR}
    config.eval.num_prompts = 500
    config.eval.samples_per_prompt = 8
    config.eval.every_steps = 20
    config.rollout.prompts_per_step = 128
    config.rollout.group_size = 8
    config.rollout.max_prompt_len = 1024
    config.rollout.max_new_tokens = 4096
    config.rollout.prompt_bucket = 128
    config.rollout.length_bucket = 512
    config.batching.mini_batches = 4
    config.batching.micro_batches = 16
    config.optim.learning_rate = 1e-6
    config.optim.weight_decay = 0.1
    config.optim.warmup_steps = 10
    config.checkpoint.save_every_steps = 20
    return config
