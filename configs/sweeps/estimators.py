"""Estimator comparison × 3 seeds on the SmolLM2 arithmetic recipe.

Each estimator is a variant of the recipe (DAPO is a recipe, not only an estimator: clip-higher,
dynamic sampling, token-level loss, overlong shaping), so each run starts from its own variant
and the run names read ``config=<variant>__seed=<s>``.
``python -m launch.sweep --sweep=configs/sweeps/estimators.py --workdir=runs/estimators``
"""

from launch.sweep import product

RECIPE = "configs/smollm2_arith.py"
VARIANTS = ("grpo", "dr_grpo", "dapo", "progrpo", "asym_grpo", "lens")


def get_sweep() -> dict:
    return dict(
        name="estimators",
        config=f"{RECIPE}:grpo",
        overrides=product(config=[f"{RECIPE}:{v}" for v in VARIANTS], seed=[0, 1, 2]),
    )
