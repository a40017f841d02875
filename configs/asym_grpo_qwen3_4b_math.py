"""AsymGRPO on Qwen3-4B with MATH (train split), evaluated on MATH-500, against GRPO.

    python -m rlvr_jax.train --config=configs/asym_grpo_qwen3_4b_math.py:asym_grpo \\
        --config.model.name=/path/to/Qwen3-4B \\
        --config.task.options.manual_dir=/path/to/math --workdir=gs://bucket/asym

Needs the user's own weights and MATH files.

Paper: Gu, Han, Bian, Wang, Zhou, *Asymmetric Advantage Modulation Calibrates Entropy Dynamics
in RLVR*, arXiv:2604.04894 (v2, May 2026; v1, April 2026, was titled *Rethinking Exploration in
RLVR: From Entropy Regularization to Refinement via Bidirectional Entropy Modulation*, the title
``shared/docs/estimators.md`` cites).

What the paper fixes for this recipe (its abstract): the estimator, GRPO's advantage split into
a positive and a negative outcome channel with separate modulation strengths (``asym_grpo``),
trained with binary verifiable math rewards against GRPO-family baselines and evaluated on five
math benchmarks, with gains reported across several model backbones.

What it does not fix here: the only copies of the paper this project could read hold the
abstract and the start of the introduction; the experimental setup (backbones, training data,
hyper-parameter table) was not reachable. So no number below comes from the paper, and none is
claimed to:

===================== ======================= ===============================================
setting               value                   source
===================== ======================= ===============================================
model                 ``qwen3-4b``            project choice (the paper's backbones unread)
train data            ``math`` train split    project choice (the paper's training set unread)
evaluation            ``math500``             one eval task per run (the paper's five unread)
beta_pos / beta_neg   0.9 / 0.4               project reading (estimators.md), unchecked
prompts x group size  128 x 8                 ``math_rl_config`` (DAPO-style default)
response length       4096 new tokens         ``math_rl_config``
optimizer             AdamW, lr 1e-6, wd 0.1  ``math_rl_config``; 10 warm-up RL steps
updates per rollout   4 mini-batches          ``math_rl_config``
steps                 300                     ``math_rl_config``
temperature           1.0                     base config
clip                  0.2 / 0.2               base config
KL / entropy terms    0 / 0                   base config
loss aggregation      ``token_mean``          base config
===================== ======================= ===============================================

Each is an ordinary config key: once the paper's table is at hand, its values go on the command
line (``--config.advantage.options.beta_pos=...``, ``--config.rollout.max_new_tokens=...``) or
into this file.
"""

from rlvr_jax.recipes import apply_variant, math_rl_config

VARIANTS = ("asym_grpo", "grpo")  # controlled: they differ only in advantage.*


def get_config(variant: str = "asym_grpo"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; this recipe has {VARIANTS}")
    config = math_rl_config("qwen3-4b", "math", "math500")
    # Sized for a v5p-256 slice (v5p:4x4x8, 128 chips; launch/README.md): 256 rows per update in 2
    # micro-batches of 128, one sequence per chip (mesh: fsdp over all chips, full remat).
    config.batching.micro_batches = 2
    return apply_variant(config, variant)
