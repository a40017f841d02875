"""The RL loop across processes: ``train.run`` as 2 processes x 4 CPU devices (``jax.distributed``
on localhost, collectives over Gloo) against 1 process x 8 devices with the same seed.

The two-process run is stopped by a SIGTERM to one of its processes after its first step,
which makes both save the same step and exit cleanly, and is then resumed on 2 processes to
the end. Every step's metrics and the final parameters must match the one-process run's: the
rollout's generations and scores are gathered across processes (``rollout.to_host``), each
process verifies its share, and the checkpoint is written and read by both.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import toy
from processes import SCRIPT_DIR, finish_processes, run_processes, start_processes

from rlvr_jax import checkpoint, models, sharding, train_step
from rlvr_jax import optimizer as optimizer_lib

STEPS = 4


def metrics_by_step(workdir) -> dict[int, dict]:
    """``metrics.jsonl`` merged per step: the training figures (``train/``, ``update/``)."""
    rows: dict[int, dict] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for row in map(json.loads, f):
            figures = {k: v for k, v in row.items() if k.startswith(("train/", "update/"))}
            rows.setdefault(row["step"], {}).update(figures)
    return {step: figures for step, figures in rows.items() if figures}


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in pathlib.Path(workdir, "checkpoints").iterdir()
                  if p.name.isdigit())


def final_params(workdir, model_dir) -> list[np.ndarray]:
    """The parameters of the run's last checkpoint, read on this process's one device."""
    config = toy.toy_config(model_dir)  # train_run.py changes no optimizer setting
    model_config, params = models.load(model_dir)
    tx, _ = optimizer_lib.make_optimizer(optimizer_lib.updates_per_rl_step(config.batching),
                                         **config.optim)
    mesh = sharding.make_mesh({"fsdp": 1}, jax.devices()[:1])
    state, shardings = train_step.create_train_state(
        model_config, tx, jax.random.key(0), mesh, sharding.rules_from_config(None), params)
    with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.latest_step() == STEPS
        restored = ckpt.restore(jax.eval_shape(lambda: state), shardings)
    return [np.asarray(x) for x in jax.tree.leaves(restored.state.params)]


@pytest.mark.slow
@pytest.mark.multidevice
def test_two_processes_stop_resume_and_train_like_one_process_with_eight_devices(tmp_path):
    model_dir = toy.write_model(str(tmp_path / "model"))
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    single = subprocess.Popen([sys.executable, str(SCRIPT_DIR / "train_run.py"), model_dir, one,
                               str(STEPS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)

    children = start_processes("train_run.py", model_dir, two, str(STEPS), devices_per_process=4)
    deadline = time.time() + 600
    while not os.path.exists(os.path.join(two, "metrics.jsonl")) or not metrics_by_step(two):
        assert time.time() < deadline and all(c.poll() is None for c in children)
        time.sleep(0.2)
    children[1].send_signal(signal.SIGTERM)  # one process only: both stop at the same step
    stopped = finish_processes(children)
    saved = checkpoint_steps(two)
    assert len(saved) == 1 and 1 <= saved[0] < STEPS, saved
    assert max(metrics_by_step(two)) == saved[0]
    assert [r["process_index"] for r in stopped] == [0, 1]

    resumed = run_processes("train_run.py", model_dir, two, str(STEPS), devices_per_process=4)
    stdout, stderr = single.communicate(timeout=600)
    assert single.returncode == 0, stderr[-5000:]
    reference = json.loads(stdout.strip().splitlines()[-1])["metrics"]

    for result in resumed:  # every process returns the whole run's figures
        assert result["metrics"].keys() == reference.keys()
        for key, value in reference.items():
            if not key.startswith("time/"):
                np.testing.assert_allclose(result["metrics"][key], value, rtol=1e-5, atol=1e-6,
                                           err_msg=key)
    expected, got = metrics_by_step(one), metrics_by_step(two)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step, figures in expected.items():
        assert got[step].keys() == figures.keys()
        for key, value in figures.items():
            if not key.startswith("train/time"):
                np.testing.assert_allclose(got[step][key], value, rtol=1e-5, atol=1e-6,
                                           err_msg=f"step {step} {key}")
    for a, b in zip(final_params(two, model_dir), final_params(one, model_dir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
