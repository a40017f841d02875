"""LENS on Qwen2.5-3B with MATH, evaluated on MATH-500; GRPO and DAPO baselines.

    python -m rlvr_jax.train --config=configs/lens_qwen25_3b_math.py:lens \\
        --config.model.name=/path/to/Qwen2.5-3B \\
        --config.task.options.manual_dir=/path/to/math --workdir=gs://bucket/lens

The paper trains on MATH together with DAPO-Math; one run trains on one task here, so this
recipe uses MATH (run ``--config.task.name=dapo_math`` for the other half). LENS's all-wrong
scale ``alpha = 0.25`` is the paper's; the batch, length and optimizer settings are DAPO-style
defaults for a 3B model, not values published by the LENS paper.
"""

from rlvr_jax.config import base_config
from rlvr_jax.recipes import apply_variant

VARIANTS = ("lens", "grpo", "dapo")


def get_config(variant: str = "lens"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; this recipe has {VARIANTS}")
    config = base_config()
    config.total_steps = 300
    config.model.name = "qwen2.5-3b"
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
