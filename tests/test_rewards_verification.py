"""Verification: one Status enum, rewards as float32 [N], counts, and clear errors."""

import numpy as np
import pytest

from rlvr_jax.rewards.verification import Status, Verification


def test_statuses_are_stored_as_the_enum_and_counted():
    verification = Verification([1, 0, 0, 0, 0], ("ok", "no_answer", "timeout", "crash", "crash"))
    assert verification.statuses == (
        Status.OK, Status.NO_ANSWER, Status.TIMEOUT, Status.CRASH, Status.CRASH)
    assert all(isinstance(status, Status) for status in verification.statuses)
    assert verification.statuses[0] == "ok"  # a StrEnum: equal to its value
    assert verification.rewards.dtype == np.float32 and verification.rewards.shape == (5,)
    assert (verification.timeouts, verification.crashes, verification.no_answer) == (1, 2, 1)
    assert verification.count(Status.OK) == 1


def test_empty_verification():
    empty = Verification.empty()
    assert empty.rewards.shape == (0,) and empty.statuses == ()


def test_bad_verifications_are_named():
    with pytest.raises(ValueError, match="'maybe' is not a valid Status"):
        Verification([1.0], ("maybe",))
    with pytest.raises(ValueError, match="2 rewards but 1 statuses"):
        Verification([1.0, 0.0], ("ok",))
