"""Tests for rlvr_jax.checkpoint: exact resume, orbax's save policy and retention, one fallback past
a broken step, preemption."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlvr_jax import checkpoint as ckpt_lib

TOY_DIR = Path(__file__).parent / "multidevice"
sys.path.insert(0, str(TOY_DIR))
import toy_train  # noqa: E402

init_state = jax.jit(toy_train.init_state, static_argnums=0)  # one compile, not one per op
update = jax.jit(toy_train.update)
# The training loops donate the state, as a real train step does: an async save must have
# copied the arrays it writes before the next step deletes them.
update_donating = jax.jit(toy_train.update, donate_argnums=0)


def _abstract_state():
    return jax.eval_shape(toy_train.init_state)


def _restore(ckpt):
    """Restores onto this process's first device."""
    abstract = _abstract_state()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return ckpt.restore(abstract, jax.tree.map(lambda _: device, abstract))


def _leaves_as_numpy(state):
    """Every leaf as NumPy (PRNG keys as their raw key data), for bitwise comparison."""

    def to_numpy(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree.leaves(jax.tree.map(to_numpy, state))


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves_as_numpy(a), _leaves_as_numpy(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), "restored/continued state differs"


def _host_state(position, rng, config):
    return {
        "data_position": position,
        "host_rng": rng.bit_generator.state,
        "config": config.to_dict(),
        "counters": {"samples_seen": position * toy_train.BATCH},
    }


def _train(state, position, rng, steps):
    """``steps`` toy updates; the host RNG draws once per step (as a data shuffler would)."""
    for _ in range(steps):
        tokens = toy_train.make_batch(position + int(rng.integers(1000)))
        state, _ = update_donating(state, tokens)
        position += 1
    return state, position


@pytest.fixture
def config():
    return ml_collections.ConfigDict({"lr": 1e-2, "model": {"name": "toy"}})


def test_save_restore_continue_is_bitwise_identical_to_uninterrupted(tmp_path, config):
    total, saved_at, crashed_at = 7, 3, 5
    reference, _ = _train(init_state(0), 0, np.random.default_rng(1), total)

    rng = np.random.default_rng(1)
    state, position = init_state(0), 0
    with ckpt_lib.Checkpointer(tmp_path, save_every_steps=saved_at, async_save=True) as ckpt:
        for step in range(1, crashed_at + 1):
            state, position = _train(state, position, rng, 1)
            ckpt.save(step, state, _host_state(position, rng, config))
    del state, rng  # the "crash": everything after step 3 is lost

    with ckpt_lib.Checkpointer(tmp_path, save_every_steps=saved_at) as ckpt:
        restored = _restore(ckpt)
    assert restored.step == saved_at
    host = restored.host_state
    assert host["data_position"] == saved_at
    assert host["counters"] == {"samples_seen": saved_at * toy_train.BATCH}
    assert ml_collections.ConfigDict(host["config"]) == config
    rng = np.random.default_rng()
    rng.bit_generator.state = host["host_rng"]
    continued, _ = _train(restored.state, host["data_position"], rng, total - saved_at)

    assert int(continued["step"]) == total
    _assert_bitwise_equal(continued, reference)


def test_keeps_only_the_last_k_steps(tmp_path):
    state = init_state(0)
    with ckpt_lib.Checkpointer(tmp_path, save_every_steps=1, keep_last=2) as ckpt:
        for step in range(1, 6):
            assert ckpt.save(step, state, {"step": step})
        ckpt.manager.wait_until_finished()
        assert ckpt.manager.all_steps() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["4", "5"]


def test_save_schedule_and_no_double_save(tmp_path):
    state = init_state(0)
    with ckpt_lib.Checkpointer(tmp_path, save_every_steps=4, async_save=False) as ckpt:
        assert not ckpt.save(1, state, {})  # orbax's default policy would save a first step
        assert not ckpt.save(3, state, {})
        assert ckpt.save(3, state, {}, force=True)
        assert ckpt.save(4, state, {})
        assert not ckpt.save(4, state, {})  # already saved
        assert ckpt.manager.all_steps() == [3, 4] and ckpt.latest_step() == 4


def _truncate_files(step_dir: Path):
    for path in (step_dir / "state").rglob("*"):
        if path.is_file():
            os.truncate(path, path.stat().st_size // 2)


def _delete_commit_metadata(step_dir: Path):
    (step_dir / "_CHECKPOINT_METADATA").unlink()


def _delete_state_item(step_dir: Path):
    for path in sorted((step_dir / "state").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (step_dir / "state").rmdir()


@pytest.mark.parametrize(
    "damage", [_truncate_files, _delete_commit_metadata, _delete_state_item],
    ids=["truncated-files", "no-commit-metadata", "missing-item"],
)
def test_damaged_latest_step_is_skipped_with_a_warning(tmp_path, caplog, damage):
    states = {0: init_state(0)}
    for step in (1, 2):
        states[step], _ = update(states[step - 1], toy_train.make_batch(step))
    with ckpt_lib.Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, states[step], {"data_position": step})
    damage(tmp_path / "2")

    with caplog.at_level(logging.WARNING, logger="rlvr_jax.checkpoint"):
        ckpt = ckpt_lib.Checkpointer(tmp_path, save_every_steps=1, async_save=False)
        restored = _restore(ckpt)
    assert restored.step == 1
    assert restored.host_state == {"data_position": 1}
    _assert_bitwise_equal(restored.state, states[1])
    assert any("step 2" in r.getMessage() and "unreadable" in r.getMessage()
               for r in caplog.records)

    # The broken step was moved aside, so training can write step 2 again.
    assert ckpt.manager.all_steps() == [1]
    assert len(list((tmp_path / "corrupt").iterdir())) == 1
    assert ckpt.save(2, states[2], {"data_position": 2})
    ckpt.close()
    assert _restore(ckpt_lib.Checkpointer(tmp_path)).step == 2


def test_only_one_step_is_skipped(tmp_path):
    with ckpt_lib.Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, init_state(0), {})
    _delete_commit_metadata(tmp_path / "3")
    _delete_commit_metadata(tmp_path / "2")
    with pytest.raises(ValueError, match="step 2 was never committed"):
        _restore(ckpt_lib.Checkpointer(tmp_path))

    with ckpt_lib.Checkpointer(tmp_path / "lone", async_save=False) as ckpt:
        ckpt.save(1, init_state(0), {}, force=True)
    _delete_commit_metadata(tmp_path / "lone" / "1")
    with pytest.raises(ValueError, match="step 1 was never committed"):
        _restore(ckpt_lib.Checkpointer(tmp_path / "lone"))  # nothing to fall back to


def test_empty_directory_and_bad_settings_are_clear_errors(tmp_path):
    empty = ckpt_lib.Checkpointer(tmp_path / "empty")
    assert empty.latest_step() is None
    with pytest.raises(FileNotFoundError, match="No checkpoint steps found"):
        _restore(empty)
    with pytest.raises(ValueError, match=r"checkpoint\.keep_last must be a non-negative"):
        ckpt_lib.Checkpointer(tmp_path, keep_last=-1)
    with pytest.raises(ValueError, match=r"checkpoint\.save_every_steps.*got 1\.5"):
        ckpt_lib.Checkpointer(tmp_path, save_every_steps=1.5)


def test_host_state_must_be_json(tmp_path):
    with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ckpt:
        with pytest.raises(TypeError, match=r"host_state must be JSON-serialisable.*object"):
            ckpt.save(1, init_state(0), {"opaque": object()}, force=True)
        ckpt.save(1, init_state(0), {"n": 3, "v": [0, 1], "config": {"lr": 0.1}}, force=True)
        assert _restore(ckpt).host_state == {"n": 3, "v": [0, 1], "config": {"lr": 0.1}}


_PREEMPTION_CHILD = textwrap.dedent(
    """
    import sys, time
    import jax
    import toy_train
    from rlvr_jax import checkpoint as ckpt_lib

    update = jax.jit(toy_train.update)
    state = jax.jit(toy_train.init_state, static_argnums=0)(0)
    with ckpt_lib.Checkpointer(sys.argv[1], save_every_steps=1000) as ckpt, \\
            ckpt_lib.PreemptionGuard(ckpt) as guard:
        for step in range(1, 100000):
            state, _ = update(state, toy_train.make_batch(step))
            stop = guard.should_stop(step)
            ckpt.save(step, state, {"data_position": step}, force=stop)
            if stop:
                print("SAVED", step, flush=True)
                break
            print("STEP", step, flush=True)
            time.sleep(0.02)
    """
)


def test_sigterm_saves_at_step_boundary_and_exits_cleanly(tmp_path):
    ckpt_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TOY_DIR), *sys.path]))
    child = subprocess.Popen(
        [sys.executable, "-c", _PREEMPTION_CHILD, str(ckpt_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 120
    for line in child.stdout:
        if line.startswith("STEP 5"):
            break
        assert time.monotonic() < deadline, "child made no progress"
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr[-3000:]
    saved_step = int(stdout.split("SAVED")[1].split()[0])
    assert saved_step >= 5
    assert "Received SIGTERM" in stderr

    entries = sorted(p.name for p in ckpt_dir.iterdir())
    assert entries == [str(saved_step)], f"unexpected files: {entries}"
    assert not [p for p in ckpt_dir.rglob("*") if "tmp" in p.name]

    expected = init_state(0)
    for step in range(1, saved_step + 1):
        expected, _ = update(expected, toy_train.make_batch(step))
    restored = _restore(ckpt_lib.Checkpointer(ckpt_dir))
    assert restored.step == saved_step
    assert restored.host_state == {"data_position": saved_step}
    _assert_bitwise_equal(restored.state, expected)


def _norm_resized(state, size):
    """``state`` with ``params/norm`` (and its AdamW moments) of ``size`` entries."""
    params = {**state["params"], "norm": jnp.ones((size,))}
    return {**state, "params": params, "opt_state": toy_train.OPTIMIZER.init(params)}


def test_a_checkpoint_of_another_model_names_the_arrays_and_moves_nothing(tmp_path):
    with ckpt_lib.Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, init_state(0), {"data_position": step})
    abstract = jax.eval_shape(lambda: _norm_resized(toy_train.init_state(0), 9))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ckpt_lib.IncompatibleCheckpointError) as raised:
        ckpt_lib.Checkpointer(tmp_path).restore(abstract, jax.tree.map(lambda _: device, abstract))
    message = str(raised.value)
    assert message.startswith(f"checkpoint step 2 in {tmp_path} was written for another model "
                              "or optimizer than this run's (3 arrays differ): ")
    for path in ("params/norm", "opt_state/0/mu/norm", "opt_state/0/nu/norm"):
        assert f"{path}: (8,) in the checkpoint, (9,) in this run" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]  # nothing moved aside
    assert _restore(ckpt_lib.Checkpointer(tmp_path)).step == 2  # the right run still resumes


def _position(host_state):
    position = host_state["data_position"]
    if not isinstance(position, int):
        raise ValueError(f"data_position={position!r} is not an integer")


def test_a_bad_host_state_names_its_file_and_falls_back(tmp_path, caplog):
    with ckpt_lib.Checkpointer(tmp_path, save_every_steps=1, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, init_state(step), {"data_position": step})
    host_file = tmp_path / "2" / "host" / "metadata"
    host_file.write_text('{"data_position": "two"}')
    abstract = _abstract_state()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with caplog.at_level(logging.WARNING, logger="rlvr_jax.checkpoint"):
        restored = ckpt_lib.Checkpointer(tmp_path).restore(
            abstract, jax.tree.map(lambda _: device, abstract), check_host=_position)
    assert (restored.step, restored.host_state) == (1, {"data_position": 1})
    _assert_bitwise_equal(restored.state, init_state(1))
    assert any(f"host state {host_file} of checkpoint step 2 is unusable: data_position='two' "
               "is not an integer" in r.getMessage() for r in caplog.records)
    host_file = tmp_path / "1" / "host" / "metadata"
    host_file.write_text("{}")  # no fallback left: the error names the file
    with pytest.raises(ValueError, match=rf"host state {host_file} of checkpoint step 1 is "
                                         "unusable: 'data_position'"):
        ckpt_lib.Checkpointer(tmp_path).restore(
            abstract, jax.tree.map(lambda _: device, abstract), check_host=_position)
