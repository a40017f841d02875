"""reasoning-gym verifier: binary rewards, partial credit is 0, no model answer reaches eval on
any task the ``rg:<name>`` route can build."""

import contextlib
import io
import os

import numpy as np
import pytest
import reasoning_gym
import reasoning_gym.factory

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


ALWAYS_EQUAL = "type('E', (), {'__eq__': lambda s, o: True, '__ne__': lambda s, o: False})()"


@pytest.fixture(scope="module")
def raw_verifier():
    """The verifier on bare answers (no extraction), so any text reaches the scorers."""
    verifier = procedural_verifier(str.strip, num_workers=2, timeout_s=10.0)
    yield verifier
    verifier.close()


@pytest.fixture(scope="module")
def every_entry():
    """One example of every data set reasoning-gym (and so the ``rg:<name>`` route) builds."""
    entries = {}
    for name in sorted(reasoning_gym.factory.DATASETS):
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                entries[name] = ProceduralSource(name, seed=0, size=1)[0]["entry"]
            except (ValueError, AssertionError):  # "composite" needs a list of data sets
                continue
    assert len(entries) >= 100
    return entries


def test_every_reasoning_gym_task_is_guarded(every_entry, raw_verifier, tmp_path):
    """On every task: code in the answer (a call, a list of calls, an always-equal object, a
    nested ``eval``) neither runs in the verifier worker nor scores, a plainly wrong answer
    does not score, and the reference answer scores exactly when reasoning-gym's own scorer
    gives it full credit (the guard takes nothing from correct answers)."""
    payloads = [
        lambda marker: f"__import__('os').mkdir({marker!r})",
        lambda marker: f"[__import__('os').mkdir({marker!r})]",
        lambda marker: f"{ALWAYS_EQUAL} if __import__('os').mkdir({marker!r}) is None else 0",
        lambda marker: f"eval({f'__import__(chr(111) + chr(115)).mkdir({marker!r})'!r})",
        lambda marker: "certainly not the answer",
    ]
    answers, entries, rows = [], [], []
    for name, entry in every_entry.items():
        for index, payload in enumerate(payloads):
            marker = str(tmp_path / f"{name}-{index}")
            rows.append((name, marker, 0.0))
            answers.append(payload(marker))
            entries.append(entry)
        reference = str(entry["answer"])
        full_credit = reasoning_gym.get_score_answer_fn(name)(reference, entry) >= 1.0
        rows.append((name, "", float(full_credit)))
        answers.append(reference)
        entries.append(entry)
    rewards = raw_verifier.verify(answers, entries).rewards
    ran = sorted({name for name, marker, _ in rows if marker and os.path.exists(marker)})
    assert not ran, f"answers ran code in the verifier for {ran}"
    wrong = sorted({name for (name, _, want), reward in zip(rows, rewards, strict=True)
                    if reward != want})
    assert not wrong, f"wrong rewards on {wrong}"
    assert sum(want for _, marker, want in rows if not marker) >= 90
