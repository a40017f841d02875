"""Two kinds of named variants: controlled estimator and loss variants, and papers' full recipes.

A recipe config calls ``apply_variant(config, name)`` to turn its base setup into one run.

**Controlled variants** (:data:`CONTROLLED`, named by the method) change ``advantage.*`` and
nothing else: the estimator and its options (the defaults of its signature,
:func:`estimator_options`). Every other setting (loss aggregation ``token_mean``, clip 0.2 /
0.2, sampling, data, optimizer) is the recipe's own, shared by all of them, so a difference
between two controlled runs of one recipe is the estimator's. Comparison sweeps use these.
**Controlled loss variants** (:data:`CONTROLLED_LOSSES`) keep GRPO's estimator and change only
``loss.objective`` (:mod:`rlvr_jax.policy_losses`); each objective's own options
(``loss.gspo_clip_*``, ``loss.clip_cov_*``, ``loss.kl_cov_*``) keep their values, the defaults of
``losses.policy_loss`` unless the recipe sets them. The shared clip range, aggregation and
everything else stay the recipe's (GMPO's paper clips wider, ``clip_low = clip_high = 0.4``,
and GSPO's aggregates ``seq_mean_token_mean``: paper settings, not the objective's).

**Paper recipes** (:data:`PAPER_RECIPES`, names ending in ``_recipe``) reproduce a paper's whole
algorithm: its estimator *and* its loss aggregation, clip range or sampling filter. A
difference between ``dapo_recipe`` and ``grpo`` is DAPO's, not an estimator's.

================== ======================= ===============================================
variant            estimator               other settings
================== ======================= ===============================================
grpo               grpo                    the recipe's
dr_grpo            dr_grpo                 the recipe's
rloo               rloo                    the recipe's
reinforce_pp       reinforce_pp_baseline   the recipe's
progrpo            progrpo (ARM, alpha 1)  the recipe's
asym_grpo          asym_grpo               the recipe's
lens               lens                    the recipe's
grpo_passk         grpo_passk              the recipe's
psr                psr                     the recipe's
nsr                nsr                     the recipe's
w_reinforce        w_reinforce             the recipe's
entropy_advantage  entropy_advantage       the recipe's
gspo               grpo                    loss.objective gspo (the recipe's otherwise)
cispo              grpo                    loss.objective cispo
gmpo               grpo                    loss.objective gmpo
clip_cov           grpo                    loss.objective clip_cov
kl_cov             grpo                    loss.objective kl_cov
grpo_recipe        grpo                    seq_mean_token_mean (the GRPO paper's normalisation)
dr_grpo_recipe     dr_grpo                 seq_sum_over_max_len (Dr. GRPO's constant normaliser)
dapo_recipe        grpo                    token_mean, clip_high 0.28, dynamic sampling,
                                           overlong penalty over the last quarter of
                                           max_new_tokens
progrpo_recipe     progrpo                 dapo_recipe's settings (ProGRPO builds on DAPO)
================== ======================= ===============================================

Every choice is an ordinary config key, so a command line can still override it, e.g.
``--config.advantage.options.alpha=0.5``.
"""

from __future__ import annotations

from typing import Any

from rlvr_jax import advantages
from rlvr_jax.config import base_config, keyword_defaults

CONTROLLED: dict[str, str] = {
    "grpo": "grpo",
    "dr_grpo": "dr_grpo",
    "rloo": "rloo",
    "reinforce_pp": "reinforce_pp_baseline",
    "progrpo": "progrpo",
    "asym_grpo": "asym_grpo",
    "lens": "lens",
    "grpo_passk": "grpo_passk",
    "psr": "psr",
    "nsr": "nsr",
    "w_reinforce": "w_reinforce",
    "entropy_advantage": "entropy_advantage",
}
"""Controlled variant name -> the estimator it sets (and nothing else)."""

CONTROLLED_LOSSES: dict[str, str] = {
    "gspo": "gspo", "cispo": "cispo", "gmpo": "gmpo", "clip_cov": "clip_cov", "kl_cov": "kl_cov",
}
"""Controlled loss variant name -> the ``loss.objective`` it sets (with GRPO's estimator)."""

DAPO_SETTINGS: dict[str, Any] = {
    "loss.aggregation": "token_mean", "loss.clip_high": 0.28, "rollout.dynamic_sampling": True,
    "rollout.overlong_buffer": "quarter",
}
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "grpo_recipe": {"advantage.estimator": "grpo", "loss.aggregation": "seq_mean_token_mean"},
    "dr_grpo_recipe": {"advantage.estimator": "dr_grpo",
                       "loss.aggregation": "seq_sum_over_max_len"},
    "dapo_recipe": {"advantage.estimator": "grpo", **DAPO_SETTINGS},
    "progrpo_recipe": {"advantage.estimator": "progrpo", **DAPO_SETTINGS},
}
"""Paper recipe name -> every setting it changes (``"quarter"``: a quarter of
``rollout.max_new_tokens``)."""

VARIANTS: tuple[str, ...] = (*CONTROLLED, *CONTROLLED_LOSSES, *PAPER_RECIPES)


def estimator_options(estimator: str) -> dict[str, Any]:
    """The options of ``estimator`` with the defaults of its signature."""
    entry = advantages.spec(estimator)
    return keyword_defaults(entry.fn, exclude=entry.inputs)


def apply_variant(config: Any, variant: str | None) -> Any:
    """Applies the settings of ``variant`` (default ``grpo``) to ``config`` in place."""
    variant = variant or "grpo"
    if variant in CONTROLLED:
        settings = {"advantage.estimator": CONTROLLED[variant]}
    elif variant in CONTROLLED_LOSSES:
        settings = {"advantage.estimator": "grpo", "loss.objective": CONTROLLED_LOSSES[variant]}
    elif variant in PAPER_RECIPES:
        settings = PAPER_RECIPES[variant]
    else:
        raise ValueError(
            f"unknown variant {variant!r}; controlled variants (only the estimator changes): "
            f"{', '.join(CONTROLLED)}; controlled loss variants (only loss.objective changes): "
            f"{', '.join(CONTROLLED_LOSSES)}; paper recipes: {', '.join(PAPER_RECIPES)}"
        )
    for path, value in settings.items():
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
