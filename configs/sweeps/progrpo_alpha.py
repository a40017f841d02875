"""ProGRPO ARM strength α × 3 seeds on the SmolLM2 arithmetic recipe.

α = 0 is GRPO exactly (the ARM term vanishes), so the sweep contains its own baseline.
``python -m launch.sweep --sweep=configs/sweeps/progrpo_alpha.py --workdir=runs/progrpo_alpha``
"""

from launch.sweep import product


def get_sweep() -> dict:
    return dict(
        name="progrpo_alpha",
        config="configs/smollm2_arith.py:progrpo",
        overrides=product(
            **{"advantage.options.alpha": [0.0, 0.25, 0.5, 1.0, 2.0]},
            seed=[0, 1, 2],
        ),
    )
