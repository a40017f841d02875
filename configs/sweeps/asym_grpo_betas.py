"""AsymGRPO β_pos × β_neg grid × 3 seeds on the SmolLM2 arithmetic recipe.

β_pos = β_neg = 0.5 is GRPO with population std (the grid's symmetric diagonal); the paper's
default is β_pos = 0.9, β_neg = 0.4.
``python -m launch.sweep --sweep=configs/sweeps/asym_grpo_betas.py --workdir=runs/asym_betas``
"""

from launch.sweep import product


def get_sweep() -> dict:
    return dict(
        name="asym_grpo_betas",
        config="configs/smollm2_arith.py:asym_grpo",
        overrides=product(
            **{
                "advantage.options.beta_pos": [0.5, 0.7, 0.9],
                "advantage.options.beta_neg": [0.2, 0.4, 0.5],
            },
            seed=[0, 1, 2],
        ),
    )
