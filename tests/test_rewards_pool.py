"""The pebble-based timeout pool: real hanging, crashing, raising and memory-hungry items are
contained, the batch goes on, the pool restarts after close or breakage, and a broken setup
raises instead of looping."""

import os
import signal
import time

import pytest

from rlvr_jax.rewards.pool import TimeoutPool
from rlvr_jax.rewards.verification import Status


@pytest.fixture(scope="module")
def pool():
    with TimeoutPool(num_workers=2, timeout_s=1.0, memory_limit_bytes=1 << 30) as pool:
        yield pool


def test_pool_contains_timeouts_crashes_and_memory(pool):
    outcomes = pool.map(pow, [(2, 10), (3, 2)])
    assert [(o.status, o.value) for o in outcomes] == [(Status.OK, 1024), (Status.OK, 9)]
    start = time.perf_counter()
    outcomes = pool.map(time.sleep, [(30,), (0,)])  # really hangs: stopped after 1 s
    assert [o.status for o in outcomes] == [Status.TIMEOUT, Status.OK]
    assert time.perf_counter() - start < 10.0
    outcomes = pool.map(os._exit, [(3,)])  # the worker process really dies
    assert outcomes[0].status == Status.CRASH and "exit code 3" in outcomes[0].error
    outcomes = pool.map(int, [("not a number",), ("12",)])
    assert outcomes[0].status == Status.CRASH and "ValueError" in outcomes[0].error
    assert outcomes[1] == outcomes[1].__class__(Status.OK, 12, "")
    outcomes = pool.map(bytearray, [(10 << 30,), (4,)])  # 10 GB under a 1 GB RLIMIT_AS
    assert outcomes[0].status == Status.CRASH and "MemoryError" in outcomes[0].error
    assert outcomes[1].value == bytearray(4)


def test_a_timeout_inside_a_long_c_call_stops_the_worker_at_once(pool):
    start = time.perf_counter()
    outcomes = pool.map(pow, [(9, 10**9), (2, 5)])  # a huge integer power: one C call
    assert [o.status for o in outcomes] == [Status.TIMEOUT, Status.OK]
    assert time.perf_counter() - start < 2.9  # no SIGTERM grace period (pebble's is 3 s)


def test_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_workers"):
        TimeoutPool(num_workers=0, timeout_s=1.0)
    with pytest.raises(ValueError, match="timeout_s"):
        TimeoutPool(num_workers=1, timeout_s=0)


def test_pool_starts_lazily_and_restarts_after_close():
    pool = TimeoutPool(num_workers=1, timeout_s=5.0)
    assert pool.map(pow, []) == [] and not pool.started  # nothing to run: no processes
    first = pool.map(os.getpid, [()])[0].value
    pool.close()
    assert not pool.started
    second = pool.map(os.getpid, [()])[0].value
    pool.close()
    assert first != second != os.getpid()


def test_pool_replaces_workers_that_died_while_idle(pool):
    pids = {o.value for o in pool.map(os.getpid, [(), (), (), ()])}
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    outcomes = pool.map(pow, [(2, 5), (3, 3)])
    assert [(o.status, o.value) for o in outcomes] == [(Status.OK, 32), (Status.OK, 27)]


def test_pool_with_broken_setup_raises_instead_of_looping():
    with (
        TimeoutPool(num_workers=1, timeout_s=1.0, preload=("no_such_module_for_rlvr",)) as pool,
        pytest.raises(RuntimeError, match="keep dying while starting"),
    ):
        pool.map(pow, [(2, 2)])
