"""AsymGRPO on Qwen3-4B with MATH (train split), evaluated on MATH-500; GRPO and DAPO baselines.

    python -m rlvr_jax.train --config=configs/asym_grpo_qwen3_4b_math.py:asym_grpo \\
        --config.model.name=/path/to/Qwen3-4B \\
        --config.task.options.manual_dir=/path/to/math --workdir=gs://bucket/asym

Needs the user's own weights and MATH files. ``beta_pos = 0.9, beta_neg = 0.4`` are the
project's reading of the paper (``shared/docs/estimators.md``); the batch, length and optimizer
settings are DAPO-style defaults for a 4B model, not values published by the AsymGRPO paper.
"""

from rlvr_jax.recipes import apply_variant, math_rl_config

VARIANTS = ("asym_grpo", "grpo", "dapo")


def get_config(variant: str = "asym_grpo"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; this recipe has {VARIANTS}")
    config = math_rl_config("qwen3-4b", "math", "math500")
    return apply_variant(config, variant)
