"""Two-process (multi-host) checks on CPU; run by tests/test_sharding.py.

Each of two processes is started with 4 fake CPU devices and ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES=2`` and ``JAX_PROCESS_ID`` set, so together they form one 8-device job
whose collectives run over Gloo. Each process prints one JSON object on its last stdout line.
References are independent of rlvr_jax: closed-form sums, and the toy update run unsharded on
the process's first local device.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")

import numpy as np  # noqa: E402
import toy_train  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from rlvr_jax import checkpoint as ckpt_lib  # noqa: E402
from rlvr_jax import sharding as sh  # noqa: E402

RULES = sh.rules_from_config(None)


def gathered(tree):
    """Global values of (possibly non-addressable) arrays, as NumPy, on every process."""
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def main() -> None:
    directory = sys.argv[1]
    results: dict = {"initialized": sh.initialize_distributed()}
    results["initialize_again"] = sh.initialize_distributed()  # idempotent
    results["process_index"] = jax.process_index()
    results["process_count"] = jax.process_count()
    results["device_count"] = jax.device_count()

    # Each host feeds its own rows of the global batch.
    mesh = sh.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rows = sh.host_local_batch_slice(16, mesh, RULES)
    results["rows"] = [rows.start, rows.stop]
    global_tokens = np.arange(16 * 4, dtype=np.int32).reshape(16, 4) % toy_train.VOCAB
    batch = sh.make_global_batch({"tokens": global_tokens[rows]}, 16, mesh, RULES)
    total = jax.jit(lambda b: b["tokens"].sum(), out_shardings=sh.replicated(mesh))(batch)
    results["global_sum"] = int(total)
    results["expected_sum"] = int(global_tokens.sum())

    # Sharded update across both processes versus an unsharded update on one local device.
    abstract = jax.eval_shape(toy_train.init_state)
    shardings = sh.train_state_shardings(abstract, toy_train.PARAM_LOGICAL_AXES, mesh, RULES)
    init = jax.jit(toy_train.init_state, static_argnums=0, out_shardings=shardings)
    update = jax.jit(
        toy_train.update,
        in_shardings=(shardings, sh.batch_sharding(mesh, RULES)),
        out_shardings=(shardings, sh.replicated(mesh)),
    )
    state, loss = update(init(0), batch["tokens"])
    local = jax.local_devices()[0]
    reference, reference_loss = jax.jit(toy_train.update)(
        jax.device_put(toy_train.init_state(0), local), jax.device_put(global_tokens, local)
    )
    params = gathered(state["params"])
    results["max_param_diff"] = max(
        float(np.max(np.abs(a - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(params), jax.tree.leaves(reference["params"]), strict=True
        )
    )
    results["loss_diff"] = abs(float(loss) - float(reference_loss))

    # Checkpoint written by both processes, restored onto another mesh shape.
    with ckpt_lib.Checkpointer(directory, async_save=True) as ckpt:
        ckpt.save(1, state, {"data_position": 16}, force=True)
    other_mesh = sh.make_mesh({"fsdp": -1})
    other = sh.train_state_shardings(abstract, toy_train.PARAM_LOGICAL_AXES, other_mesh, RULES)
    restored = ckpt_lib.Checkpointer(directory).restore(abstract, other)
    results["restored_host_state"] = restored.host_state
    results["restored_equal"] = all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(gathered(restored.state["params"])), jax.tree.leaves(params),
            strict=True,
        )
    )
    results["restored_spec"] = str(restored.state["params"]["mlp"]["up"].sharding.spec)

    # Ctrl-C on one process (passed to JAX's preemption service as SIGTERM) stops every
    # process at the same step, which they save together.
    with ckpt_lib.Checkpointer(directory + "_preempted", async_save=False) as ckpt, \
            ckpt_lib.PreemptionGuard(ckpt) as guard:
        for step in range(1, 1000):
            if jax.process_index() == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGINT)
            stop = guard.should_stop(step)
            ckpt.save(step, state, {"data_position": step}, force=stop)
            if stop:
                results["stop_step"] = step
                break
            time.sleep(0.05)
        results["saved_steps"] = ckpt.manager.all_steps()

    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
