"""Train-step parity on 8 fake CPU devices; run by tests/test_train_step.py.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python train_step_parity.py``.
Runs the same train step (tiny model, fixed batch, SGD) on a 1-device mesh, on fsdp x tensor
(1 x 4 x 2) and on data x fsdp (2 x 4 x 1), and prints one JSON line with the largest
differences of the loss, grad norm and updated parameters against the 1-device run.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from rlvr_jax import models, sharding
from rlvr_jax import optimizer as optim
from rlvr_jax import train_step as ts
from rlvr_jax.config import base_config

jax.config.update("jax_default_matmul_precision", "highest")

CONFIG = models.ModelConfig(family="qwen2", vocab_size=96, hidden_size=32, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, qkv_bias=True)
N, P, L = 16, 6, 8


def make_batch() -> dict:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CONFIG.vocab_size, size=(N, P + L)).astype(np.int32)
    mask = np.ones((N, P + L), bool)
    mask[::3, :2] = False  # left padding
    response = np.ones((N, L), np.float32)
    response[::2, 5:] = 0.0
    return {
        "tokens": tokens, "attention_mask": mask, "response_mask": response,
        "old_logp": -rng.exponential(size=(N, L)).astype(np.float32),
        "advantages": rng.normal(size=(N,)).astype(np.float32),
    }


def run(mesh_config: dict) -> dict:
    devices = jax.devices()[: int(np.prod([v for v in mesh_config.values() if v > 0]))]
    mesh = sharding.make_mesh(mesh_config, devices)
    rules = sharding.rules_from_config(None)
    tx, _ = optim.make_optimizer(name="sgd", learning_rate=0.5, grad_clip_norm=0)
    state, shardings = ts.create_train_state(CONFIG, tx, jax.random.key(1), mesh, rules)
    config = base_config()
    config.batching.micro_batches = 2
    step = ts.make_train_step(config, CONFIG, tx, mesh, rules, shardings)
    batch = jax.device_put(make_batch(), sharding.batch_sharding(mesh, rules))
    state, metrics, _ = step(state, batch)
    params = jax.tree.map(np.asarray, state.params)
    return {"params": params, "loss": float(metrics["loss"]),
            "grad_norm": float(metrics["grad_norm"]),
            "sharded": any(len(s.device_set) > 1 for s in jax.tree.leaves(shardings.params))}


def main() -> None:
    reference = run({"data": 1, "fsdp": 1, "tensor": 1})
    out = {}
    for name, mesh in {"fsdp_tensor": {"data": 1, "fsdp": 4, "tensor": 2},
                       "data_fsdp": {"data": 2, "fsdp": 4, "tensor": 1}}.items():
        result = run(mesh)
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), result["params"],
                             reference["params"])
        out[name] = {
            "loss_diff": abs(result["loss"] - reference["loss"]),
            "grad_norm_diff": abs(result["grad_norm"] - reference["grad_norm"]),
            "param_diff": max(jax.tree.leaves(diffs)),
            "param_change": max(jax.tree.leaves(jax.tree.map(
                lambda a, b: float(np.max(np.abs(a - b))), result["params"],
                run_init_params()))),
            "sharded": result["sharded"],
        }
    print(json.dumps(out))


def run_init_params() -> dict:
    return jax.tree.map(np.asarray, models.init_params(CONFIG, jax.random.split(
        jax.random.key(1))[0]))


if __name__ == "__main__":
    main()
