"""Math verifier: an adversarial table with a time bound; a timeout does not stop the batch.

Stated bound: the whole table (35 items, 3 of them parser explosions that hit the 3 s hard
timeout) scores within 60 s on a shared 2-core CPU, worker start-up included.
"""

import time

import numpy as np
import pytest

from rlvr_jax.rewards.math_verifier import math_verifier
from rlvr_jax.rewards.verification import Status

OK, NO_ANSWER, TIMEOUT = Status.OK, Status.NO_ANSWER, Status.TIMEOUT

TABLE_BOUND_S = 60.0
HALF = r"\frac{1}{2}"

# (completion, gold, expected reward, expected status)
TABLE = [
    # correct answers in many forms
    (r"\boxed{1/2}", HALF, 1.0, OK),
    (r"\boxed{0.5}", HALF, 1.0, OK),
    (r"\boxed{\frac12}", HALF, 1.0, OK),
    (r"\boxed{\dfrac{1}{2}}", HALF, 1.0, OK),
    (r"\boxed{\tfrac{1}{2}}", "0.5", 1.0, OK),
    (r"\boxed{$\frac{1}{2}$}", "1/2", 1.0, OK),
    ("The answer is 0.5.", HALF, 1.0, OK),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", 1.0, OK),
    (r"\boxed{1,234}", "1234", 1.0, OK),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0, OK),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}", 1.0, OK),
    (r"\boxed{(1, 2]}", "(1,2]", 1.0, OK),
    (r"\boxed{50\%}", "50", 1.0, OK),
    (r"\boxed{5 \text{ cm}}", "5", 1.0, OK),
    (r"\boxed{x + 1}", "1 + x", 1.0, OK),
    # wrong answers that look right
    (r"\boxed{0.51}", HALF, 0.0, OK),
    (r"\boxed{-\frac{1}{2}}", HALF, 0.0, OK),
    (r"\boxed{\frac{2}{1}}", HALF, 0.0, OK),
    (r"\boxed{[1, 2]}", "(1,2]", 0.0, OK),
    (r"\boxed{1.0000001}", "1", 0.0, OK),
    (r"\boxed{\{1, 2, 3\}}", r"\{1,2\}", 0.0, OK),
    # format-only outputs and no answer
    (r"\boxed{}", "3", 0.0, NO_ANSWER),
    (r"\boxed{\text{answer}}", "3", 0.0, OK),
    ("The final answer is", "3", 0.0, NO_ANSWER),
    ("I believe it is 3 but cannot box it", "3", 0.0, NO_ANSWER),
    ("", "3", 0.0, NO_ANSWER),
    # several boxed answers: the last one counts
    (r"\boxed{3} no wait \boxed{4}", "4", 1.0, OK),
    (r"\boxed{4} no wait \boxed{3}", "4", 0.0, OK),
    # a 1 MB completion, correct and wrong
    ("blah " * 200_000 + r"\boxed{\frac{1}{2}}", "0.5", 1.0, OK),
    ("blah " * 200_000 + r"\boxed{7}", "0.5", 0.0, OK),
    # deeply nested braces: extraction is fine, the LaTeX parser is exponential in depth
    (r"\boxed{" + "{" * 16 + "x" + "}" * 16 + "}", "1", 0.0, TIMEOUT),
    # LaTeX that makes parsers or SymPy explode
    (r"\boxed{10^{10^{10^{10}}}}", "1", 0.0, TIMEOUT),
    (r"\boxed{9^{9^{9^{9^{9}}}}}", "3", 0.0, TIMEOUT),
    (r"\boxed{\frac{\frac{\frac{", "1", 0.0, NO_ANSWER),
    (r"\boxed{\underbrace{\overbrace{\left(\right.}}}", "1", 0.0, OK),
]


@pytest.fixture(scope="module")
def verifier():
    verifier = math_verifier(num_workers=2, timeout_s=3.0)
    yield verifier
    verifier.close()


def test_adversarial_table_scores_and_bound(verifier):
    completions, golds, expected_rewards, expected_statuses = zip(*TABLE, strict=True)
    start = time.perf_counter()
    report = verifier.verify(completions, golds)
    elapsed = time.perf_counter() - start
    assert report.rewards.dtype == np.float32 and report.rewards.shape == (len(TABLE),)
    mismatches = [
        (completions[i][:60], golds[i], report.rewards[i], report.statuses[i])
        for i in range(len(TABLE))
        if (report.rewards[i], report.statuses[i]) != (expected_rewards[i], expected_statuses[i])
    ]
    assert not mismatches
    assert report.timeouts == 3 and report.crashes == 0 and report.no_answer == 5
    assert elapsed < TABLE_BOUND_S


def test_item_after_timeout_is_scored(verifier):
    report = verifier.verify(
        [r"\boxed{9^{9^{9^{9^{9}}}}}", r"\boxed{0.5}", r"\boxed{0.25}"], [HALF, HALF, HALF]
    )
    assert report.statuses == (TIMEOUT, OK, OK)
    np.testing.assert_array_equal(report.rewards, [0.0, 1.0, 0.0])


def test_length_mismatch_is_an_error(verifier):
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        verifier.verify(["a", "b"], ["1"])
