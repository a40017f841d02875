"""The recorded exploration study: GRPO, ProGRPO (ARM), AsymGRPO and LENS x 3 paired seeds on
SmolLM2-135M-Instruct learning one- and two-digit addition, evaluated on held-out questions.

    python -m experiments.study --sweep=configs/sweeps/exploration_smollm2.py \\
        --workdir=studies/exploration_smollm2
    python -m experiments.study_report --study=studies/exploration_smollm2 \\
        --out=experiments/results/exploration_smollm2

Every arm is a controlled variant of ``configs/smollm2_arith.py`` (``rlvr_jax.recipes.CONTROLLED``):
runs differ only in ``advantage.*`` and the seed. The study changes the recipe in the same way
for every arm:

- ``optim.learning_rate = 3e-5`` (the recipe's 1.5e-5 doubled) so that GRPO's entropy collapses
  within the study's 12 steps. Chosen from one GRPO pilot run at seed 99 (not a study seed) on
  its training entropy alone (1.75 at step 1, 0.34 at step 10); no evaluation figure was looked
  at, and no method's own hyper-parameters were changed from the controlled variants' defaults.
- ``total_steps = 12`` (4 prompts x 4 samples per step), sized so the 12 runs finish in about
  two hours on a 2-core CPU.
- Evaluation on the recipe's 32 held-out prompts (``eval.seed = 0``): 32 samples per prompt
  before and after training (pass@k up to k = 32), 4 per prompt at steps 4 and 8 (the pass@1
  curve).
- Checkpoints every 4 steps, only the last one kept (a finished run needs none for the report).
"""

from launch.sweep import product

RECIPE = "configs/smollm2_arith.py"
METHODS = ("grpo", "progrpo", "asym_grpo", "lens")


def get_sweep() -> dict:
    return dict(
        name="exploration_smollm2",
        config=f"{RECIPE}:grpo",
        overrides=product(
            config=[f"{RECIPE}:{method}" for method in METHODS],
            seed=[0, 1, 2],
            **{
                "optim.learning_rate": [3e-5],
                "total_steps": [12],
                "eval.every_steps": [4],
                "eval.samples_per_prompt": [4],
                "eval.samples_per_prompt_at_ends": [32],
                "checkpoint.save_every_steps": [4],
                "checkpoint.keep_last": [1],
                "rollout.prompt_bucket": [32],  # the recorded study's padding (the main job
                # now pads to 16; padding changes only the float rounding)
            },
        ),
    )
