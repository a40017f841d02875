"""The pebble-based timeout pool: real hanging, crashing, raising and memory-hungry items are
contained, the batch goes on, the pool restarts after close or breakage, and a broken setup
raises instead of looping."""

import os
import signal
import subprocess
import sys
import textwrap
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


def _state(pid):
    """The process state letter of ``pid`` ("Z": a zombie), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


_PARENT = textwrap.dedent(
    """
    import os
    from rlvr_jax.rewards.pool import TimeoutPool

    if __name__ == "__main__":
        pool = TimeoutPool(num_workers=1, timeout_s=300.0)
        print(pool.map(os.getpid, [()])[0].value, flush=True)
        pool.map(pow, [(9, 10**9)])  # minutes of one C call in the worker
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    worker = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while _state(worker) != "R":  # busy with the power
            assert time.monotonic() < deadline, _state(worker)
            time.sleep(0.1)
        parent.kill()  # SIGKILL: the pool cannot stop its workers
        parent.wait()
        deadline = time.monotonic() + 10
        while _state(worker) not in (None, "Z"):
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.1)
    finally:
        if _state(worker) not in (None, "Z"):
            os.kill(worker, signal.SIGKILL)


def test_an_item_over_its_cpu_limit_ends_as_a_crash():
    with TimeoutPool(num_workers=1, timeout_s=60.0, cpu_limit_s=1.0) as pool:
        start = time.perf_counter()
        outcomes = pool.map(pow, [(9, 10**9), (2, 5)])  # a long C call: only SIGXCPU stops it
        assert time.perf_counter() - start < 30.0  # far below the 60 s timeout
    assert outcomes[0].status == Status.CRASH
    assert f"exit code {-signal.SIGXCPU}" in outcomes[0].error
    assert (outcomes[1].status, outcomes[1].value) == (Status.OK, 32)
    with pytest.raises(ValueError, match="cpu_limit_s"):
        TimeoutPool(cpu_limit_s=0)
