"""AnswerVerifier: extraction here, equivalence in the pool; a completion without an answer
never reaches a worker; a hang, a crash and an exception score 0 and are counted; the pool
starts lazily and restarts after close."""

import os
import time

import numpy as np
import pytest

from rlvr_jax.rewards.answer_verifier import AnswerVerifier
from rlvr_jax.rewards.verification import Status


def judge(answer: str, reference: str) -> float:
    """Runs in a worker: misbehaves on request, else exact match."""
    if answer == "die":
        os._exit(7)
    if answer == "hang":
        time.sleep(60)
    if answer == "raise":
        raise ValueError("bad answer")
    return float(answer == reference)


def after_colon(completion: str) -> str | None:
    """The text after ``answer:``, or None when there is no such marker."""
    return completion.split("answer:", 1)[1] if "answer:" in completion else None


@pytest.fixture(scope="module")
def verifier():
    verifier = AnswerVerifier(judge, after_colon, num_workers=2, timeout_s=1.0)
    yield verifier
    verifier.close()


def test_statuses_rewards_and_counts(verifier):
    completions = ["answer:4", "die", "answer:die", "answer:hang", "answer:raise", "answer:5", ""]
    verification = verifier.verify(completions, ["4"] * 7)
    # "die" without the marker has no answer: it is never sent, so it cannot crash a worker.
    assert verification.statuses == (
        Status.OK, Status.NO_ANSWER, Status.CRASH, Status.TIMEOUT, Status.CRASH, Status.OK,
        Status.NO_ANSWER,
    )
    np.testing.assert_array_equal(verification.rewards, [1, 0, 0, 0, 0, 0, 0])
    assert verification.rewards.dtype == np.float32
    assert (verification.timeouts, verification.crashes, verification.no_answer) == (1, 2, 2)
    assert verifier.extract("so answer:12") == "12" and verifier.extract("12") is None


def test_no_answers_start_no_pool_and_close_restarts():
    verifier = AnswerVerifier(judge, after_colon, num_workers=1, timeout_s=5.0)
    assert verifier.verify(["die", "hang"], ["1", "2"]).statuses == (Status.NO_ANSWER,) * 2
    assert not verifier._pool.started
    assert verifier.verify(["answer:1"], ["1"]).rewards.tolist() == [1.0]
    verifier.close()
    assert not verifier._pool.started
    assert verifier.verify(["answer:1", "answer:2"], ["1", "1"]).rewards.tolist() == [1.0, 0.0]
    verifier.close()


def test_length_mismatch_is_an_error(verifier):
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        verifier.verify(["answer:1", "answer:2"], ["1"])
