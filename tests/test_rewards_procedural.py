"""reasoning-gym tasks: seeded generation, binary rewards, partial credit is 0, no eval of code."""

import os

import numpy as np
import pytest
import reasoning_gym

from rlvr_jax.data.procedural import PROCEDURAL_TASKS, ProceduralSource
from rlvr_jax.rewards.procedural import ProceduralVerifier


@pytest.fixture(scope="module")
def verifier():
    verifier = ProceduralVerifier(num_workers=2, timeout_s=5.0)
    yield verifier
    verifier.close()


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_generation_is_deterministic_and_seeded(name):
    first, again = ProceduralSource(name, seed=5, size=20), ProceduralSource(name, seed=5, size=20)
    other = ProceduralSource(name, seed=6, size=20)
    assert [first[i]["question"] for i in range(20)] == [again[i]["question"] for i in range(20)]
    assert [first[i]["question"] for i in range(20)] != [other[i]["question"] for i in range(20)]
    example = first[3]
    assert example["id"] == f"{name}/5/3" and example["answer"] == str(example["entry"]["answer"])


def test_source_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'no_such_task'"):
        ProceduralSource("no_such_task")
    with pytest.raises(IndexError):
        ProceduralSource("chain_sum", size=3)[3]


def test_reference_answers_score_one(verifier):
    examples = [
        ProceduralSource(name, seed=1, size=6)[i] for name in PROCEDURAL_TASKS for i in range(6)
    ]
    completions = [f"Reasoning...\n\\boxed{{{example['answer']}}}" for example in examples]
    report = verifier.score(completions, [example["entry"] for example in examples])
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
    report = verifier.score(
        [f"\\boxed{{{wrong_but_uses_numbers}}}", f"\\boxed{{{superstring}}}"],
        [countdown, arithmetic],
    )
    np.testing.assert_array_equal(report.rewards, [0.0, 0.0])


def test_answers_must_have_the_shape_of_an_answer(verifier, tmp_path):
    marker = tmp_path / "pwned"
    countdown = ProceduralSource("countdown", seed=2, size=1)[0]["entry"]
    gsm = ProceduralSource("gsm_symbolic", seed=2, size=1)[0]["entry"]
    injected = f"__import__('os').mkdir('{marker}')"
    report = verifier.score(
        [f"\\boxed{{{injected}}}", f"\\boxed{{{gsm['answer']} or 5}}", "no boxed answer"],
        [countdown, gsm, gsm],
    )
    np.testing.assert_array_equal(report.rewards, [0.0, 0.0, 0.0])
    assert report.statuses == ("ok", "ok", "no_answer")
    assert not os.path.exists(marker)


def test_last_number_answer_format():
    from rlvr_jax.rewards import get_task

    task = get_task("basic_arithmetic", answer_format="last_number", min_terms=2, max_terms=2,
                    min_digits=1, max_digits=1, operators=("+",), allow_negation=False,
                    allow_parentheses=False, size=50)
    try:
        example = task.examples("train", seed=0, n=1)[0]
        answer = example["answer"]
        completions = [f"3 + 4 = 7 so {answer}", f"{answer}. I think {int(answer) + 1}",
                       "no digits here", f"The answer is {answer}."]
        report = task.score_report(completions, [example] * 4)
        np.testing.assert_array_equal(report.rewards, [1.0, 0.0, 0.0, 1.0])
        assert report.no_answer == 1
        assert "number only" in task.format_prompt(example)
        assert task.extract_answer("x = 12, y = -3.5") == "-3.5"
    finally:
        task.close()
    with pytest.raises(ValueError, match="answer_format='words'"):
        get_task("basic_arithmetic", answer_format="words")
