"""LENS on Qwen2.5-3B with MATH, evaluated on MATH-500; GRPO and DAPO baselines.

    python -m rlvr_jax.train --config=configs/lens_qwen25_3b_math.py:lens \\
        --config.model.name=/path/to/Qwen2.5-3B \\
        --config.task.options.manual_dir=/path/to/math --workdir=gs://bucket/lens

The paper trains on MATH together with DAPO-Math; one run trains on one task here, so this
recipe uses MATH (run ``--config.task.name=dapo_math`` for the other half). LENS's all-wrong
scale ``alpha = 0.25`` is the paper's; the batch, length and optimizer settings are DAPO-style
defaults for a 3B model, not values published by the LENS paper.
"""

from rlvr_jax.recipes import apply_variant, math_rl_config

VARIANTS = ("lens", "grpo", "dapo")


def get_config(variant: str = "lens"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; this recipe has {VARIANTS}")
    config = math_rl_config("qwen2.5-3b", "math", "math500")
    return apply_variant(config, variant)
