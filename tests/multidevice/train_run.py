"""Two RL steps of the toy recipe through ``train.run`` on every process of a job; run by
tests/test_rollout.py as 2 processes x 4 CPU devices and as 1 process x 8.

argv: model directory, workdir. Prints, on its last stdout line, the metrics ``train.run``
returned on this process (the last step's and the final evaluation's).
"""

from __future__ import annotations

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")

import toy  # noqa: E402

from rlvr_jax import train  # noqa: E402


def main() -> None:
    model_dir, workdir = sys.argv[1:3]
    toy.register()
    config = toy.toy_config(model_dir)
    config.total_steps = 2
    config.rollout.prompts_per_step = 4  # N = 32 rows over 8 devices
    config.logging.tensorboard = False
    config.eval.num_prompts = 8
    last = train.run(config, workdir)
    print(json.dumps({"process_index": jax.process_index(), "metrics": last}))


if __name__ == "__main__":
    main()
