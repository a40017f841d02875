"""AsymGRPO on Qwen3-4B with MATH (train split), evaluated on MATH-500; GRPO and DAPO baselines.

    python -m rlvr_jax.train --config=configs/asym_grpo_qwen3_4b_math.py:asym_grpo \\
        --config.model.name=/path/to/Qwen3-4B \\
        --config.task.options.manual_dir=/path/to/math --workdir=gs://bucket/asym

Needs the user's own weights and MATH files. ``beta_pos = 0.9, beta_neg = 0.4`` are the
project's reading of the paper (``shared/docs/estimators.md``); the batch, length and optimizer
settings are DAPO-style defaults for a 4B model, not values published by the AsymGRPO paper.
"""

from rlvr_jax.config import base_config
from rlvr_jax.recipes import apply_variant

VARIANTS = ("asym_grpo", "grpo", "dapo")


def get_config(variant: str = "asym_grpo"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; this recipe has {VARIANTS}")
    config = base_config()
    config.total_steps = 300
    config.model.name = "qwen3-4b"
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "full"
    config.task.name = "math"
    config.task.options = {"data_dir": "~/tensorflow_datasets"}
    config.eval.task = "math500"
    config.eval.task_options = {"data_dir": "~/tensorflow_datasets"}
    config.eval.num_prompts = 500
    config.eval.samples_per_prompt = 8
    config.eval.every_steps = 20
    config.rollout.prompts_per_step = 128
    config.rollout.group_size = 8
    config.rollout.max_prompt_len = 1024
    config.rollout.max_new_tokens = 4096
    config.rollout.prompt_bucket = 128
    config.rollout.length_bucket = 512
    config.step.mini_batches = 4
    config.step.micro_batches = 16
    config.optim.learning_rate = 1e-6
    config.optim.weight_decay = 0.1
    config.optim.warmup_steps = 10
    config.checkpoint.save_every_steps = 20
    return apply_variant(config, variant)
