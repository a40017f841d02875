"""Tests for rlvr_jax.rewards.distributed: the split arithmetic, the one-process identity, and a
real two-process run (tests/multidevice/distributed_verification_checks.py) over
jax.distributed."""

from __future__ import annotations

from pathlib import Path

import distributed_verification_checks as checks
import numpy as np
import pytest
from processes import run_processes

from rlvr_jax.rewards.distributed import encode_statuses, process_slice, verify_across_processes

SCRIPT_DIR = Path(__file__).parent / "multidevice"

# ---- split arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_items", "count", "expected"),
    [
        (7, 2, [(0, 4), (4, 7)]),
        (8, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
        (10, 4, [(0, 3), (3, 6), (6, 8), (8, 10)]),
        (2, 3, [(0, 1), (1, 2), (2, 2)]),
        (0, 3, [(0, 0), (0, 0), (0, 0)]),
        (5, 1, [(0, 5)]),
    ],
)
def test_process_slice_hand_worked_cases(num_items, count, expected):
    slices = [process_slice(num_items, p, count) for p in range(count)]
    assert [(s.start, s.stop) for s in slices] == expected


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_process_slices_partition_the_items_evenly(count):
    for num_items in range(0, 40):
        sizes, covered = [], []
        for p in range(count):
            rows = process_slice(num_items, p, count)
            sizes.append(rows.stop - rows.start)
            covered.extend(range(num_items)[rows])
        assert covered == list(range(num_items))  # disjoint, contiguous, in process order
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)  # the larger shares come first


@pytest.mark.parametrize(
    ("args", "message"),
    [((4, 2, 2), "process_index=2"), ((4, -1, 2), "process_index=-1"),
     ((4, 0, 0), "process_count=0"), ((-1, 0, 2), "num_items=-1")],
)
def test_process_slice_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        process_slice(*args)


def test_encode_statuses_round_trip_and_unknown_status():
    statuses = ("ok", "timeout", "no_answer", "crash", "ok")
    codes = encode_statuses(statuses)
    assert codes.dtype == np.int32 and codes.shape == (5,)
    assert len(set(codes.tolist())) == 4
    with pytest.raises(ValueError, match=r"unknown verification statuses.*'maybe'"):
        encode_statuses(("ok", "maybe"))


# What checks.judge gives the seven items of checks.COMPLETIONS / checks.ANSWERS, by hand.
HAND_REWARDS = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
HAND_STATUSES = ("ok", "ok", "timeout", "ok", "no_answer", "crash", "ok")

# ---- one process -------------------------------------------------------------------------


def test_one_process_is_exactly_task_verify():
    calls: list[list[str]] = []
    task = checks.recording_task(calls)
    report = verify_across_processes(task, list(checks.COMPLETIONS), checks.examples())
    assert calls == [[f"item{i}" for i in range(7)]]  # one verifier call over every item
    np.testing.assert_array_equal(report.rewards, HAND_REWARDS)
    assert report.statuses == HAND_STATUSES
    assert (report.timeouts, report.crashes, report.no_answer) == (1, 1, 1)
    assert (task.timeouts, task.crashes) == (1, 1)


def test_mismatched_lengths_are_rejected():
    task = checks.recording_task([])
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        verify_across_processes(task, ["a", "b"], checks.examples()[:1])


# ---- two processes -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 4], ids=["1_device_each", "4_devices_each"])
def two_process_results(request):
    """The JSON results of both processes, each with ``request.param`` CPU devices."""
    return run_processes("distributed_verification_checks.py", devices_per_process=request.param,
                         timeout=300)


@pytest.mark.multidevice
def test_two_processes_verify_disjoint_slices_and_share_the_full_result(two_process_results):
    direct = checks.recording_task([]).verify(list(checks.COMPLETIONS), checks.examples())
    np.testing.assert_array_equal(direct.rewards, HAND_REWARDS)
    ids = [f"item{i}" for i in range(7)]
    for process_id, result in enumerate(two_process_results):
        assert result["initialized"]
        assert (result["process_index"], result["process_count"]) == (process_id, 2)
    seven = [result["seven"] for result in two_process_results]
    assert seven[0]["calls"] == [ids[:4]]  # 7 items: process 0 verifies 4, process 1 verifies 3
    assert seven[1]["calls"] == [ids[4:]]
    for case in seven:
        np.testing.assert_array_equal(np.asarray(case["rewards"], np.float32), direct.rewards)
        assert tuple(case["statuses"]) == direct.statuses
        assert case["report_counts"] == [1, 1, 1]  # global counts in the returned result
    # The task totals count each process's own items: the timeout is item 2, the crash item 5.
    assert seven[0]["task_totals"] == [1, 0]
    assert seven[1]["task_totals"] == [0, 1]


@pytest.mark.multidevice
def test_two_processes_with_fewer_items_than_processes(two_process_results):
    one = [result["one"] for result in two_process_results]
    assert one[0]["calls"] == [["item0"]]
    assert one[1]["calls"] == []  # an empty share never reaches the verifier
    for case in one:
        assert case["rewards"] == [1.0] and case["statuses"] == ["ok"]
    for result in two_process_results:
        assert result["zero"]["calls"] == [] and result["zero"]["rewards"] == []
