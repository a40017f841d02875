"""Procedural tasks end to end: seeded orders, splits held out by question, prompts,
verification, answer extraction, and the last-number answer format."""

import hashlib
import itertools

import numpy as np
import pytest

from rlvr_jax import tasks

SINGLE_DIGIT_SUMS = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+",),
                         allow_negation=False, allow_parentheses=False)


def test_procedural_task_end_to_end():
    task = tasks.get("chain_sum", seed=3, size=40, num_workers=1)
    try:
        examples = task.examples("train", seed=0, n=6)
        assert [e["id"] for e in examples] == [e["id"] for e in task.examples("train", 0, 6)]
        assert [e["id"] for e in examples] != [e["id"] for e in task.examples("train", 1, 6)]
        test_ids = {e["id"] for e in task.examples("test", seed=0)}
        assert all(i.startswith("chain_sum/3/") for i in test_ids)
        assert not test_ids & {e["id"] for e in task.examples("train", seed=0)}
        prompt = task.format_prompt(examples[0])
        assert prompt.startswith(examples[0]["question"]) and "\\boxed{}" in prompt
        completions = [f"\\boxed{{{e['answer']}}}" for e in examples]
        completions[1] = f"\\boxed{{{int(examples[1]['answer']) + 1}}}"
        completions[2] = "no answer here"
        rewards_ = task.verify(completions, examples).rewards
        assert rewards_.dtype == np.float32
        np.testing.assert_array_equal(rewards_, [1, 0, 0, 1, 1, 1])
        assert task.extract_answer(completions[0]) == examples[0]["answer"]
        shard = task.examples("train", seed=0, process_index=1, process_count=2)
        assert len(shard) == 20
    finally:
        task.close()
    with pytest.raises(ValueError, match=r"splits \('train', 'test'\), not 'validation'"):
        task.source("validation")


def hash_fraction(question):
    """The split rule re-derived: SHA-256 of the text without whitespace, lower-cased."""
    canonical = "".join(question.lower().split()).encode()
    return int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big") / 2**64


def questions_of(task, split):
    source = task.source(split)
    return {source[i]["question"] for i in range(len(source))}


def test_single_digit_sums_are_split_by_question_with_no_test_question_in_train():
    """All 121 questions ``a + b`` (0 <= a, b <= 10) of a small space: every test question
    is one whose hash falls below test_fraction, and none of them is in train (with a test
    split generated from another seed, almost every test question was in train)."""
    everything = {f"Calculate {a} + {b}." for a, b in itertools.product(range(11), repeat=2)}
    held_out = {q for q in everything if hash_fraction(q) < 0.2}
    assert 10 < len(held_out) < 40
    task = tasks.get("basic_arithmetic", size=2000, num_workers=1, **SINGLE_DIGIT_SUMS)
    train, test = questions_of(task, "train"), questions_of(task, "test")
    assert not train & test
    assert test == held_out  # 2000 draws from ~25 questions: each one is drawn
    assert train == everything - held_out
    other_seed = tasks.get("basic_arithmetic", seed=7, size=2000, num_workers=1,
                           **SINGLE_DIGIT_SUMS)
    assert questions_of(other_seed, "test") == held_out  # a question's split is its own
    assert [e["question"] for e in other_seed.examples("test", n=8)] != [
        e["question"] for e in task.examples("test", n=8)]


def test_a_split_the_options_cannot_fill_fails_with_counts():
    lowest = min(hash_fraction(f"Calculate {a} + {b}.")
                 for a, b in itertools.product(range(11), repeat=2))
    task = tasks.get("basic_arithmetic", size=100, num_workers=1, test_fraction=lowest / 2,
                     **SINGLE_DIGIT_SUMS)
    with pytest.raises(ValueError, match=r"only 0 of the first \d+ generated questions \(121 "
                                         r"distinct\) belong to split 'test'"):
        task.source("test")
    assert len(task.source("train")) == 100
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        tasks.get("chain_sum", test_fraction=1.0)


def test_questions_in_compares_canonical_texts_and_reads_only_the_matching_split():
    task = tasks.get("basic_arithmetic", size=300, num_workers=1, **SINGLE_DIGIT_SUMS)
    train = sorted(questions_of(task, "train"))
    test = sorted(questions_of(task, "test"))
    spaced = [q.replace(" ", "  ").upper() for q in train[:3]]
    assert task.questions_in("train", [*spaced, test[0], "Calculate 11 + 11."]) == set(spaced)
    assert task.questions_in("test", [*train, *test]) == set(test)
    unread = tasks.get("basic_arithmetic", size=300, num_workers=1, **SINGLE_DIGIT_SUMS)
    assert unread.questions_in("train", test) == set()
    assert "train" not in unread._sources  # test questions cannot be train questions


def test_last_number_answer_format():
    task = tasks.get("basic_arithmetic", answer_format="last_number", min_terms=2, max_terms=2,
                    min_digits=1, max_digits=1, operators=("+",), allow_negation=False,
                    allow_parentheses=False, size=50)
    try:
        example = task.examples("train", seed=0, n=1)[0]
        answer = example["answer"]
        completions = [f"3 + 4 = 7 so {answer}", f"{answer}. I think {int(answer) + 1}",
                       "no digits here", f"The answer is {answer}."]
        report = task.verify(completions, [example] * 4)
        np.testing.assert_array_equal(report.rewards, [1.0, 0.0, 0.0, 1.0])
        assert report.no_answer == 1
        assert "number only" in task.format_prompt(example)
        assert task.extract_answer("x = 12, y = -3.5") == "-3.5"
    finally:
        task.close()
    with pytest.raises(ValueError, match="answer_format='words'"):
        tasks.get("basic_arithmetic", answer_format="words")
