"""Estimator comparison × 3 seeds on the SmolLM2 arithmetic recipe.

Every run starts from a controlled variant of the recipe (``rlvr_jax.recipes.CONTROLLED``), so
two runs differ only in ``advantage.*`` (the estimator and its options) and the seed: the loss,
clip range, sampling, data and optimizer are the recipe's for all of them (a test checks it).
Paper recipes such as ``dapo_recipe`` change more than the estimator and are not in it. The run
names read ``config=<variant>__seed=<s>``.
``python -m launch.sweep --sweep=configs/sweeps/estimators.py --workdir=runs/estimators``
"""

from launch.sweep import product
from rlvr_jax.recipes import CONTROLLED

RECIPE = "configs/smollm2_arith.py"


def get_sweep() -> dict:
    return dict(
        name="estimators",
        config=f"{RECIPE}:grpo",
        overrides=product(config=[f"{RECIPE}:{v}" for v in CONTROLLED], seed=[0, 1, 2]),
    )
