"""LENS on Qwen2.5-3B trained on MATH and DAPO-Math together, evaluated on MATH-500, against
GRPO.

    python -m rlvr_jax.train --config=configs/lens_qwen25_3b_math.py:lens \\
        --config.model.name=/path/to/Qwen2.5-3B \\
        '--config.task.options.components[0].options.manual_dir=/path/to/math' \\
        '--config.task.options.components[1].options.manual_dir=/path/to/dapo' \\
        --workdir=gs://bucket/lens

Both data sets are built once into ``~/tensorflow_datasets`` from the user's files (see
``rlvr_jax.data.tfds_builders``); later runs need no ``manual_dir``. The training task is a
``mixture`` (``rlvr_jax/tasks/mixture.py``): each example keeps its component's verifier and
prompt, and the log shows ``train/reward_mean/math``, ``train/reward_mean/dapo_math`` and the
groups per component each step.

Source: Feng, Jain, Hartshorn, Duan, Kempe, "Don't Waste Mistakes: Leveraging Negative
RL-Groups via Confidence Reweighting", arXiv 2510.08696 (v1). What this recipe takes from it:

* the method and the model: LENS against a GRPO baseline on Qwen-2.5-3B, evaluated on MATH
  (abstract);
* LENS's all-wrong-group scale ``alpha = 0.25`` (the ``lens`` variant), as the project's
  specification reads the paper's practical algorithm (``shared/docs/estimators.md``), with
  each response of an all-wrong group counted once (``all_wrong_weighting="per_response"``,
  the paper's per-sequence average; under this recipe's ``token_mean`` loss the default
  ``"loss"`` would let long responses dominate the group's push).

Not stated in what could be read of the paper: the copy available to this project holds the
abstract and the opening of the introduction only, so its experimental settings could not be
checked, and none of the numbers below are the paper's. The recipe uses instead:

* training data: MATH ``train`` and DAPO-Math-17k ``train`` in equal shares (weights 1 : 1,
  seed 0); the split between the two is this recipe's choice;
* learning rate 1e-6 (AdamW, weight decay 0.1, 10 warm-up RL steps), 128 prompts x 8 responses
  per step, 4 updates per rollout, responses up to 4096 tokens, 300 steps, sampling
  temperature 1.0, clip 0.2 on both sides, no KL term: the DAPO-style
  defaults of ``recipes.math_rl_config``;
* evaluation: the 500 MATH-500 problems, 8 samples each, every 20 steps.
"""

from rlvr_jax.recipes import TFDS_DATA_DIR, apply_variant, math_rl_config

VARIANTS = ("lens", "grpo")  # controlled: they differ only in advantage.*


def train_mixture() -> dict:
    """The options of the training ``mixture``: MATH and DAPO-Math, equal weights
    (``manual_dir`` is listed, empty, so that the command line can set it)."""
    files = {"data_dir": TFDS_DATA_DIR, "manual_dir": ""}
    return {
        "components": [
            {"name": "math", "weight": 1.0, "options": dict(files)},
            {"name": "dapo_math", "weight": 1.0, "options": dict(files)},
        ],
        "seed": 0,
    }


def get_config(variant: str = "lens"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; this recipe has {VARIANTS}")
    config = math_rl_config("qwen2.5-3b", "mixture", "math500", task_options=train_mixture())
    # Sized for a v5p-128 slice (v5p:4x4x4, 64 chips; launch/README.md): 256 rows per update in 4
    # micro-batches of 64, one sequence per chip (mesh: fsdp over all chips, full remat).
    config.batching.micro_batches = 4
    apply_variant(config, variant)
    if variant == "lens":  # the paper's per-sequence average on all-wrong groups
        config.advantage.options.all_wrong_weighting = "per_response"
    return config
