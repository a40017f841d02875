"""Sharding and checkpoint checks on 8 fake CPU devices; run by tests/test_sharding.py.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python sharding_checks.py DIR``.
Prints one JSON object (check name -> result) on the last line of stdout; the pytest side
asserts on it. Expected values are computed here independently of rlvr_jax.sharding: shard
contents are compared with NumPy slices of the global array, and the sharded update with the
same update run on a single device.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import toy_train

from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import sharding as sh

jax.config.update("jax_default_matmul_precision", "highest")

RULES = sh.rules_from_config(None)


def spec_tree(shardings: Any) -> Any:
    return jax.tree.map(lambda s: str(s.spec), shardings)


def as_numpy(x: jax.Array) -> np.ndarray:
    """NumPy value of a leaf (PRNG keys as their raw key data)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def same_values(tree: Any, expected: list[np.ndarray]) -> bool:
    return all(
        np.array_equal(as_numpy(x), y)
        for x, y in zip(jax.tree.leaves(tree), expected, strict=True)
    )


def shards_match_global(array: jax.Array) -> bool:
    """Each device holds exactly the slice of the global value its index says."""
    full = np.asarray(array)
    return all(
        np.array_equal(np.asarray(shard.data), full[shard.index])
        for shard in array.addressable_shards
    )


def placement(mesh_config: dict[str, int]) -> dict[str, Any]:
    mesh = sh.make_mesh(mesh_config)
    abstract = jax.eval_shape(toy_train.init_state)
    shardings = sh.train_state_shardings(abstract, toy_train.PARAM_LOGICAL_AXES, mesh, RULES)
    state = jax.jit(toy_train.init_state, static_argnums=0, out_shardings=shardings)(0)
    up = state["params"]["mlp"]["up"]
    mu_up = state["opt_state"][0].mu["mlp"]["up"]
    tokens = jax.device_put(toy_train.make_batch(0), sh.batch_sharding(mesh, RULES))
    return {
        "mesh_shape": dict(mesh.shape),
        "specs": spec_tree(shardings),
        "up_shard_shape": list(up.addressable_shards[0].data.shape),
        "up_distinct_shards": len({str(shard.index) for shard in up.addressable_shards}),
        "mu_up_spec": str(mu_up.sharding.spec),
        "batch_shard_shape": list(tokens.addressable_shards[0].data.shape),
        "all_shards_match": all(
            shards_match_global(x) for x in [*jax.tree.leaves(state["params"]), tokens]
        ),
    }


def sharded_update_vs_single_device(mesh_config: dict[str, int], steps: int = 3) -> dict:
    """Max |sharded - single-device| over parameters and losses after ``steps`` updates."""
    mesh = sh.make_mesh(mesh_config)
    abstract = jax.eval_shape(toy_train.init_state)
    shardings = sh.train_state_shardings(abstract, toy_train.PARAM_LOGICAL_AXES, mesh, RULES)
    batch_sharding = sh.batch_sharding(mesh, RULES)
    sharded_update = jax.jit(
        toy_train.update,
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, sh.replicated(mesh)),
    )
    single_device = jax.devices()[0]
    single_update = jax.jit(toy_train.update)

    sharded = jax.device_put(toy_train.init_state(), shardings)
    single = jax.device_put(toy_train.init_state(), single_device)
    loss_diffs = []
    for position in range(steps):
        tokens = toy_train.make_batch(position)
        sharded, sharded_loss = sharded_update(sharded, tokens)
        single, single_loss = single_update(single, jax.device_put(tokens, single_device))
        loss_diffs.append(abs(float(sharded_loss) - float(single_loss)))
    param_diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(sharded["params"]), jax.tree.leaves(single["params"]), strict=True
        )
    )
    return {
        "max_loss_diff": max(loss_diffs),
        "max_param_diff": param_diff,
        "param_scale": float(max(np.max(np.abs(x)) for x in jax.tree.leaves(single["params"]))),
        "out_spec_up": str(sharded["params"]["mlp"]["up"].sharding.spec),
    }


def activation_constraint() -> dict[str, str]:
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})

    def f(x):
        return nn.with_logical_constraint(x * 2.0, ("batch", "length", "embed"))

    x = np.ones((8, 3, 4), np.float32)
    with sh.activate(mesh, RULES):
        constrained = jax.jit(f)(x)
    unconstrained = jax.jit(f)(x)
    return {
        "inside": str(constrained.sharding.spec),
        "outside_num_devices": len(unconstrained.sharding.device_set),
    }


def global_batch() -> dict[str, Any]:
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    rows = sh.host_local_batch_slice(16, mesh, RULES)
    local = {"tokens": np.arange(16 * 3).reshape(16, 3)[rows], "mask": np.ones((16,), bool)}
    batch = sh.make_global_batch(local, 16, mesh, RULES)
    try:
        sh.batch_shardings({"tokens": np.zeros((6, 2))}, mesh, RULES)
        error = ""
    except ValueError as e:
        error = str(e)
    return {
        "rows": [rows.start, rows.stop],
        "spec": str(batch["tokens"].sharding.spec),
        "values_ok": bool(np.array_equal(np.asarray(batch["tokens"]), local["tokens"])),
        "shard_shape": list(batch["tokens"].addressable_shards[0].data.shape),
        "indivisible_error": error,
    }


def restore_on_other_meshes(directory: str) -> dict[str, Any]:
    """Save sharded as fsdp x tensor, restore onto other meshes and onto one device."""
    abstract = jax.eval_shape(toy_train.init_state)
    save_mesh = sh.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    save_shardings = sh.train_state_shardings(
        abstract, toy_train.PARAM_LOGICAL_AXES, save_mesh, RULES
    )
    state = jax.device_put(toy_train.init_state(), save_shardings)
    state, _ = jax.jit(toy_train.update)(state, toy_train.make_batch(0))
    expected = [as_numpy(x) for x in jax.tree.leaves(state)]
    with ckpt_lib.Checkpointer(directory, async_save=True) as ckpt:
        ckpt.save(1, state, {"data_position": 1}, force=True)

    results = {}
    for name, mesh_config in {
        "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
        "fsdp8": {"fsdp": -1},
        "tensor4_data2": {"data": 2, "tensor": 4},
        "tensor8": {"tensor": 8},  # mlp=12 and heads=4 do not divide: replicated instead
    }.items():
        mesh = sh.make_mesh(mesh_config)
        shardings = sh.train_state_shardings(
            abstract, toy_train.PARAM_LOGICAL_AXES, mesh, RULES
        )
        restored = ckpt_lib.Checkpointer(directory).restore(abstract, shardings)
        leaves = jax.tree.leaves(restored.state)
        results[name] = {
            "equal": same_values(restored.state, expected),
            "shardings_as_requested": all(
                x.sharding == s for x, s in zip(leaves, jax.tree.leaves(shardings), strict=True)
            ),
            "up_spec": str(restored.state["params"]["mlp"]["up"].sharding.spec),
        }
    single = jax.tree.map(
        lambda x: jax.sharding.SingleDeviceSharding(jax.devices()[3]), abstract
    )
    restored = ckpt_lib.Checkpointer(directory).restore(abstract, single)
    results["single_device"] = {
        "equal": same_values(restored.state, expected),
        "devices": sorted(
            {d.id for x in jax.tree.leaves(restored.state) for d in x.sharding.device_set}
        ),
    }
    return results


def main() -> None:
    directory = sys.argv[1]
    assert jax.device_count() == 8, f"expected 8 fake devices, got {jax.device_count()}"
    results = {
        "device_count": jax.device_count(),
        "placement_fsdp_tensor": placement({"data": 1, "fsdp": 4, "tensor": 2}),
        "placement_data_fsdp": placement({"data": 2, "fsdp": 4, "tensor": 1}),
        "update_fsdp_tensor": sharded_update_vs_single_device({"fsdp": 4, "tensor": 2}),
        "update_data_fsdp": sharded_update_vs_single_device({"data": 2, "fsdp": 4}),
        "activation": activation_constraint(),
        "global_batch": global_batch(),
        "restore": restore_on_other_meshes(os.path.join(directory, "ckpt")),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
