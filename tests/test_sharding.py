"""Tests for rlvr_jax.sharding: config errors, rule semantics, state/batch shardings.

Single-process tests run on the 1 CPU device of the pytest process (AbstractMesh stands in for
larger meshes where only the mesh shape matters). The 8-device checks run in a subprocess
(tests/multidevice/sharding_checks.py) with XLA_FLAGS set before JAX is imported there; the
multi-host checks run two such processes joined by jax.distributed over Gloo
(tests/multidevice/multiprocess_checks.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import pytest
import toy_train
from jax.sharding import AbstractMesh, AxisType, PartitionSpec
from processes import run_processes

from rlvr_jax import sharding as sh

TOY_DIR = Path(__file__).parent / "multidevice"

RULES = sh.rules_from_config(None)


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), sh.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


# ---- mesh config -------------------------------------------------------------


@pytest.mark.parametrize(
    "config, devices, expected",
    [
        ({"data": 1, "fsdp": -1, "tensor": 1}, 8, {"data": 1, "fsdp": 8, "tensor": 1}),
        ({"data": 2, "fsdp": -1, "tensor": 2}, 8, {"data": 2, "fsdp": 2, "tensor": 2}),
        ({"tensor": -1}, 4, {"data": 1, "fsdp": 1, "tensor": 4}),
        ({"data": 2, "fsdp": 4, "tensor": 1}, 8, {"data": 2, "fsdp": 4, "tensor": 1}),
        ({}, 1, {"data": 1, "fsdp": 1, "tensor": 1}),
    ],
)
def test_mesh_shape_resolves_the_rest(config, devices, expected):
    assert sh.mesh_shape(config, devices) == expected


@pytest.mark.parametrize(
    "config, devices, message",
    [
        ({"data": 3, "fsdp": -1}, 8, r"mesh\.fsdp = -1 cannot be resolved.*3.*8 devices"),
        ({"data": 2, "fsdp": 2, "tensor": 1}, 8, r"mesh\.data=2, mesh\.fsdp=2.*8 devices"),
        ({"data": -1, "fsdp": -1}, 8, r"mesh\.data, mesh\.fsdp"),
        ({"data": 1, "pipeline": 2}, 8, r"mesh\.pipeline"),
        ({"fsdp": 0}, 8, r"mesh\.fsdp must be a positive integer or -1"),
        ({"tensor": 2.0}, 8, r"mesh\.tensor must be an integer"),
    ],
)
def test_mesh_config_errors_name_the_key(config, devices, message):
    with pytest.raises(ValueError, match=message):
        sh.mesh_shape(config, devices)


def test_make_mesh_from_config_dict_has_auto_axes():
    mesh = sh.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1}))
    assert mesh.axis_names == sh.MESH_AXES
    assert dict(mesh.shape) == {"data": 1, "fsdp": jax.device_count(), "tensor": 1}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match=r"mesh\.tensor"):
        sh.make_mesh({"tensor": 2 * jax.device_count() + 1})


# ---- rules -------------------------------------------------------------------


def test_rules_from_config_normalises_lists():
    config = ml_collections.ConfigDict(
        {"logical_axis_rules": [["batch", ["data", "fsdp"]], ["embed", ["fsdp"]], ["mlp", None]]}
    )
    assert sh.rules_from_config(config) == (
        ("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", None),
    )
    assert sh.rules_from_config(ml_collections.ConfigDict()) == sh.DEFAULT_LOGICAL_AXIS_RULES


@pytest.mark.parametrize(
    "rules, message",
    [
        ([("embed", "fsdp"), ("embd", "fsdp"), ("hidden", None)], r"\['embd', 'hidden'\]"),
        ([("embed", "model")], r"rule for 'embed' maps to unknown mesh axis \['model'\]"),
        ([("embed", ("fsdp", "tp"))], r"unknown mesh axis \['tp'\]"),
        ([("embed",)], r"logical_axis_rules\[0\] must be a \(logical_name, mesh_axes\) pair"),
    ],
)
def test_bad_rules_fail_naming_the_problem(rules, message):
    with pytest.raises(ValueError, match=message):
        sh.validate_rules(rules)


def test_default_rules_follow_flax_semantics():
    mesh = abstract_mesh(2, 4, 2)
    spec = sh.logical_to_partition_spec
    # Parameters: FSDP on embed, tensor parallelism on mlp / heads / vocab.
    assert spec(("embed", "mlp"), RULES, mesh) == PartitionSpec("fsdp", "tensor")
    assert spec(("vocab", "embed"), RULES, mesh) == PartitionSpec("tensor", "fsdp")
    assert spec(("layers", "embed", "kv_heads", "head_dim"), RULES, mesh) == PartitionSpec(
        None, "fsdp", "tensor", None
    )
    # Activations: batch takes (data, fsdp), so embed (which wants fsdp) stays replicated.
    assert spec(("batch", "length", "embed"), RULES, mesh) == PartitionSpec(
        ("data", "fsdp"), None, None
    )
    assert spec(("batch", "length", "heads", "head_dim"), RULES, mesh) == PartitionSpec(
        ("data", "fsdp"), None, "tensor", None
    )
    assert spec((), RULES, mesh) == PartitionSpec()


def test_indivisible_dimension_is_replicated_with_a_warning(caplog):
    mesh = abstract_mesh(1, 4, 2)
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.sharding"):
        got = sh.logical_to_partition_spec(
            ("vocab", "embed"), RULES, mesh, shape=(49155, 64), where="['embedding']"
        )
    assert got == PartitionSpec(None, "fsdp")
    assert "['embedding']: dimension 0 ('vocab', size 49155) is not divisible" in caplog.text


def test_axis_names_without_rules_and_rank_mismatch_fail():
    mesh = abstract_mesh(1, 1, 1)
    with pytest.raises(ValueError, match=r"\['hiden'\] on \['w'\] have no entry"):
        sh.logical_to_partition_spec(("embed", "hiden"), RULES, mesh, where="['w']")
    with pytest.raises(ValueError, match=r"\['w'\]: logical axes \('embed',\) have 1 entries"):
        sh.logical_to_partition_spec(("embed",), RULES, mesh, shape=(4, 4), where="['w']")


# ---- state and batch shardings on the local device ---------------------------


def test_train_state_shardings_follow_params_and_replicate_the_rest():
    mesh = sh.make_mesh({"fsdp": -1})
    abstract = jax.eval_shape(toy_train.init_state)
    shardings = sh.train_state_shardings(abstract, toy_train.PARAM_LOGICAL_AXES, mesh, RULES)
    specs = jax.tree.map(lambda s: s.spec, shardings)
    expected_params = {
        "embedding": PartitionSpec("tensor", "fsdp"),
        "mlp": {"up": PartitionSpec("fsdp", "tensor"), "down": PartitionSpec("tensor", "fsdp")},
        "attn": {"query": PartitionSpec("fsdp", "tensor", None)},
        "norm": PartitionSpec("fsdp"),
    }
    adam = specs["opt_state"][0]
    assert specs["params"] == expected_params
    assert adam.mu == expected_params and adam.nu == expected_params
    assert adam.count == PartitionSpec()
    assert specs["step"] == PartitionSpec() and specs["key"] == PartitionSpec()
    assert jax.tree.structure(shardings) == jax.tree.structure(abstract)

    wrong_axes = {"embedding": ("vocab", "embed")}
    with pytest.raises(ValueError, match="no subtree of the state matches"):
        sh.train_state_shardings(abstract, wrong_axes, mesh, RULES)


def test_logical_to_sharding_tree_with_unannotated_and_partition_spec_leaves():
    mesh = sh.make_mesh({"fsdp": -1})
    axes = {"a": None, "b": ("embed",), "c": PartitionSpec("vocab", None), "d": ()}
    shapes = {
        "a": jax.ShapeDtypeStruct((2, 3), "float32"),
        "b": jax.ShapeDtypeStruct((4,), "float32"),
        "c": jax.ShapeDtypeStruct((6, 5), "float32"),
        "d": jax.ShapeDtypeStruct((), "float32"),
    }
    expected = {
        "a": PartitionSpec(), "b": PartitionSpec("fsdp"),
        "c": PartitionSpec("tensor", None), "d": PartitionSpec(),
    }
    for tree in (sh.logical_to_sharding(axes, mesh, RULES, shapes),
                 sh.logical_to_sharding(axes, mesh, RULES)):
        assert jax.tree.map(lambda s: s.spec, tree) == expected


def test_host_local_batch_slice_single_process():
    mesh = sh.make_mesh({"fsdp": -1})
    assert sh.host_local_batch_slice(12, mesh, RULES) == slice(0, 12)
    with pytest.raises(ValueError, match=r"local_batch\['x'\]: expected leading size 12"):
        sh.make_global_batch({"x": jax.numpy.zeros((6, 2))}, 12, mesh, RULES)


# ---- multi-host start-up -----------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, False),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    ],
)
def test_multiprocess_environment_detection(env, expected):
    assert sh.is_multiprocess_environment(env) is expected


def test_initialize_distributed_is_a_no_op_on_one_process():
    assert sh.initialize_distributed({}) is False
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1


# ---- 8 fake devices ----------------------------------------------------------


@pytest.fixture(scope="module")
def eight_device_results(tmp_path_factory):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    completed = subprocess.run(
        [sys.executable, str(TOY_DIR / "sharding_checks.py"), str(tmp_path_factory.mktemp("md"))],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.multidevice
def test_eight_devices_placement(eight_device_results):
    results = eight_device_results
    assert results["device_count"] == 8

    fsdp_tensor = results["placement_fsdp_tensor"]
    assert fsdp_tensor["specs"]["params"]["mlp"]["up"] == "P('fsdp', 'tensor')"
    assert fsdp_tensor["up_shard_shape"] == [8 // 4, 12 // 2]
    assert fsdp_tensor["up_distinct_shards"] == 8
    assert fsdp_tensor["mu_up_spec"] == "P('fsdp', 'tensor')"
    assert fsdp_tensor["batch_shard_shape"] == [toy_train.BATCH // 4, 4]  # data=1, fsdp=4
    assert fsdp_tensor["all_shards_match"]

    data_fsdp = results["placement_data_fsdp"]
    assert data_fsdp["up_shard_shape"] == [8 // 4, 12]  # replicated over data and tensor=1
    assert data_fsdp["up_distinct_shards"] == 4
    assert data_fsdp["batch_shard_shape"] == [toy_train.BATCH // 8, 4]
    assert data_fsdp["all_shards_match"]
    for placement in (fsdp_tensor, data_fsdp):
        assert placement["specs"]["step"] == "P()" and placement["specs"]["key"] == "P()"


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("layout", ["update_fsdp_tensor", "update_data_fsdp"])
def test_eight_devices_update_matches_one_device(eight_device_results, layout):
    result = eight_device_results[layout]
    assert result["max_param_diff"] <= 1e-6 * result["param_scale"]
    assert result["max_loss_diff"] <= 1e-6
    assert result["out_spec_up"] == "P('fsdp', 'tensor')"


@pytest.mark.slow
@pytest.mark.multidevice
def test_eight_devices_activation_constraint_and_global_batch(eight_device_results):
    assert eight_device_results["activation"]["inside"] == "P(('data', 'fsdp'),)"
    assert eight_device_results["activation"]["outside_num_devices"] == 1
    batch = eight_device_results["global_batch"]
    assert batch["rows"] == [0, 16]
    assert batch["spec"] == "P(('data', 'fsdp'),)"
    assert batch["shard_shape"] == [2, 3]
    assert batch["values_ok"]
    assert "batch['tokens']: leading size 6 is not divisible by the 8 devices" in (
        batch["indivisible_error"]
    )


@pytest.mark.slow
@pytest.mark.multidevice
def test_eight_devices_restore_onto_other_meshes(eight_device_results):
    restore = eight_device_results["restore"]
    for name in ("data2_fsdp2_tensor2", "fsdp8", "tensor4_data2", "tensor8"):
        assert restore[name]["equal"], name
        assert restore[name]["shardings_as_requested"], name
    assert restore["tensor4_data2"]["up_spec"] == "P('fsdp', 'tensor')"
    assert restore["tensor8"]["up_spec"] == "P('fsdp', None)"  # mlp=12 does not divide 8
    assert restore["single_device"] == {"equal": True, "devices": [3]}


@pytest.mark.slow
@pytest.mark.multidevice
def test_two_processes_feed_shard_checkpoint_and_stop_together(tmp_path):
    results = run_processes("multiprocess_checks.py", str(tmp_path / "ckpt"),
                            devices_per_process=4)

    for process_id, result in enumerate(results):
        assert result["initialized"] and result["initialize_again"]
        assert (result["process_index"], result["process_count"]) == (process_id, 2)
        assert result["device_count"] == 8
        assert result["rows"] == [8 * process_id, 8 * process_id + 8]
        assert result["global_sum"] == result["expected_sum"] == 480
        assert result["max_param_diff"] <= 1e-6 and result["loss_diff"] <= 1e-6
        assert result["restored_host_state"] == {"data_position": 16}
        assert result["restored_equal"]
        assert result["restored_spec"] == "P('fsdp', 'tensor')"
        assert result["stop_step"] == results[0]["stop_step"] > 3
        assert result["saved_steps"] == [result["stop_step"]]
