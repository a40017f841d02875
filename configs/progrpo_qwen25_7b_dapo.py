"""ProGRPO (ARM) on Qwen2.5-7B with DAPO-Math-17k, evaluated on AIME, against DAPO.

    python -m rlvr_jax.train --config=configs/progrpo_qwen25_7b_dapo.py:progrpo \\
        --config.model.name=/path/to/Qwen2.5-7B \\
        --config.task.options.manual_dir=/path/to/dapo_math --workdir=gs://bucket/progrpo

Needs the user's own weights (an HF directory) and data files (see
``rlvr_jax/data/tfds_builders.py`` for where to get them and their names). The rollout, loss
and optimizer settings are DAPO's published ones (Yu et al., 2025, section 4.1: 512 prompts x
16 responses, 16 updates per rollout, lr 1e-6 with a linear warm-up over 20 rollout steps, clip
0.2/0.28, token-mean loss, 20k-token responses with a 4k overlong buffer). ProGRPO's own
hyper-parameters are not published beyond these: ARM's ``alpha`` is the spec default 1.0, meant
to be swept (``configs/sweeps/progrpo_alpha.py``).

Both variants run DAPO's whole recipe (token-mean loss, clip-higher, dynamic sampling, overlong
penalty) and differ only in the advantage: ``progrpo`` adds ARM, ``grpo`` is DAPO itself. So a
difference between them is ARM's.
"""

from rlvr_jax.recipes import apply_variant, math_rl_config

VARIANTS = ("progrpo", "grpo")


def get_config(variant: str = "progrpo"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; this recipe has {VARIANTS}")
    config = math_rl_config("qwen2.5-7b", "dapo_math", "aime", steps=500)
    config.eval.num_prompts = 30
    config.eval.samples_per_prompt = 32
    config.eval.sampling.top_p = 0.7
    config.eval.every_steps = 10
    config.rollout.prompts_per_step = 512
    config.rollout.group_size = 16
    config.rollout.max_prompt_len = 2048
    config.rollout.max_new_tokens = 20480
    config.rollout.prompt_bucket = 256
    config.rollout.length_bucket = 1024
    config.batching.mini_batches = 16
    config.batching.micro_batches = 64
    config.optim.warmup_steps = 20  # RL steps, as DAPO's section 4.1
    config.loss.clip_high = 0.28
    config.rollout.dynamic_sampling = True
    config.rollout.overlong_buffer = 4096
    return apply_variant(config, variant)
