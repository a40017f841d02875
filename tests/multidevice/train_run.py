"""RL steps of the toy recipe through ``train.run`` on every process of a job; run by
tests/test_train_multiprocess.py as 2 processes x 4 CPU devices and as 1 process x 8.

argv: model directory, workdir, total steps. Prints, on its last stdout line, the metrics
``train.run`` returned on this process (the last step's and the final evaluation's). A
SIGTERM to any process stops every process at the same step boundary, with a checkpoint;
run again with the same workdir, it resumes there.
"""

from __future__ import annotations

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")

import toy  # noqa: E402

from rlvr_jax import train  # noqa: E402


def config(model_dir: str, total_steps: int):
    """The toy recipe with 8 prompts x 8 samples (64 rows over 8 devices), no TensorBoard."""
    run = toy.toy_config(model_dir)
    run.total_steps = total_steps
    run.rollout.prompts_per_step = 8
    run.logging.tensorboard = False
    run.eval.num_prompts = 8
    run.checkpoint.save_every_steps = 100  # only the forced saves: at the end, on SIGTERM
    return run


def main() -> None:
    model_dir, workdir, total_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    toy.register()
    last = train.run(config(model_dir, total_steps), workdir)
    print(json.dumps({"process_index": jax.process_index(), "metrics": last}))


if __name__ == "__main__":
    main()
