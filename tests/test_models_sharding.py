"""Logical axis names drive real sharding: load straight into shards on 8 fake CPU devices and
run the forward pass under a (data, tensor) mesh; logits equal the single-device ones."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from rlvr_jax import models

    directory = sys.argv[1]
    config = models.ModelConfig(family="qwen2", vocab_size=64, hidden_size=32, num_layers=2,
                                num_heads=8, num_kv_heads=4, head_dim=8, mlp_dim=64,
                                qkv_bias=True)
    params = models.init_params(config, jax.random.key(0))
    models.save_hf(config, params, directory)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 6)), jnp.int32)
    expected = np.asarray(models.forward(config, params, tokens))

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "tensor"))
    rules = (("batch", "data"), ("vocab", "tensor"), ("mlp", "tensor"), ("heads", "tensor"),
             ("kv_heads", "tensor"))
    is_names = lambda x: isinstance(x, tuple)
    shardings = jax.tree.map(
        lambda names: NamedSharding(mesh, nn.logical_to_mesh_axes(names, rules)),
        models.param_logical_axes(config), is_leaf=is_names)
    _, loaded = models.load(directory, shardings=shardings)
    kernel = loaded["layers"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec(None, None, "tensor"), kernel.sharding
    assert len(kernel.addressable_shards) == 8
    assert kernel.addressable_shards[0].data.shape == (2, 32, 16)

    @jax.jit
    def sharded_forward(params, tokens):
        with nn.logical_axis_rules(rules):
            return models.forward(config, params, tokens)

    with jax.set_mesh(mesh):
        tokens = jax.device_put(tokens, NamedSharding(mesh, PartitionSpec("data")))
        logits = sharded_forward(loaded, tokens)
    # The activation annotation ("batch", "length", "vocab") placed the logits.
    assert logits.sharding.spec == PartitionSpec("data", None, "tensor"), logits.sharding
    got = np.asarray(logits)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    print("OK")
""")


@pytest.mark.multidevice
def test_load_into_shards_and_forward_on_eight_devices(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt")],
                            capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
