"""reasoning-gym verifier: binary rewards, partial credit is 0, no eval of code."""

import os

import numpy as np
import pytest
import reasoning_gym

from rlvr_jax.data.procedural import PROCEDURAL_TASKS, ProceduralSource
from rlvr_jax.rewards.procedural_verifier import procedural_verifier


@pytest.fixture(scope="module")
def verifier():
    verifier = procedural_verifier(num_workers=2, timeout_s=5.0)
    yield verifier
    verifier.close()


def test_reference_answers_score_one(verifier):
    examples = [
        ProceduralSource(name, seed=1, size=6)[i] for name in PROCEDURAL_TASKS for i in range(6)
    ]
    completions = [f"Reasoning...\n\\boxed{{{example['answer']}}}" for example in examples]
    report = verifier.verify(completions, [example["entry"] for example in examples])
    np.testing.assert_array_equal(report.rewards, np.ones(len(examples), np.float32))


def test_partial_credit_is_not_correct(verifier):
    countdown = ProceduralSource("countdown", seed=1, size=1)[0]["entry"]
    numbers = countdown["metadata"]["numbers"]
    wrong_but_uses_numbers = " + ".join(str(n) for n in numbers)
    assert sum(numbers) != countdown["metadata"]["target"]
    arithmetic = ProceduralSource("basic_arithmetic", seed=1, size=1)[0]["entry"]
    superstring = f"{arithmetic['answer']}0"
    # reasoning-gym's own scores are partial credit, strictly between 0 and 1:
    for answer, entry in [(wrong_but_uses_numbers, countdown), (superstring, arithmetic)]:
        assert (
            0.0
            < reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])(answer, entry)
            < 1.0
        )
    report = verifier.verify(
        [f"\\boxed{{{wrong_but_uses_numbers}}}", f"\\boxed{{{superstring}}}"],
        [countdown, arithmetic],
    )
    np.testing.assert_array_equal(report.rewards, [0.0, 0.0])


def test_answers_must_have_the_shape_of_an_answer(verifier, tmp_path):
    marker = tmp_path / "pwned"
    countdown = ProceduralSource("countdown", seed=2, size=1)[0]["entry"]
    gsm = ProceduralSource("gsm_symbolic", seed=2, size=1)[0]["entry"]
    injected = f"__import__('os').mkdir('{marker}')"
    report = verifier.verify(
        [f"\\boxed{{{injected}}}", f"\\boxed{{{gsm['answer']} or 5}}", "no boxed answer"],
        [countdown, gsm, gsm],
    )
    np.testing.assert_array_equal(report.rewards, [0.0, 0.0, 0.0])
    assert report.statuses == ("ok", "ok", "no_answer")
    assert not os.path.exists(marker)
