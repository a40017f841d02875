"""One toy RL step through ``train.run`` on 8 CPU devices, recording how the rollout's
generations are laid out over the devices; run by tests/test_compile_check.py.

argv: model directory, workdir. Prints, on its last stdout line, for every
``sampling.generate`` call the train loop made: the global shape of the generated tokens and
the number of elements each device holds.
"""

from __future__ import annotations

import json
import math
import sys

import toy

from rlvr_jax import sampling, train

calls = []
original = sampling.generate


def recording_generate(*args, **kwargs):
    out = original(*args, **kwargs)
    shards = out.tokens.addressable_shards
    calls.append({"shape": list(out.tokens.shape), "devices": len(shards),
                  "per_device": [math.prod(s.data.shape) for s in shards]})
    return out


def main() -> None:
    model_dir, workdir = sys.argv[1:3]
    toy.register()
    config = toy.toy_config(model_dir)
    config.total_steps = 1
    config.rollout.prompts_per_step = 8  # divisible by the 8 devices: the rows can shard
    config.logging.tensorboard = False
    config.eval.num_prompts = config.eval.samples_per_prompt = 1
    sampling.generate = recording_generate  # the attribute rollout.Sampler calls
    train.run(config, workdir)
    print(json.dumps({"calls": calls}))


if __name__ == "__main__":
    main()
