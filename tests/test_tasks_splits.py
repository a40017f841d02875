"""Held-out splits by question: canonical texts, the hash rule, QuestionSplit's choice of
candidates, its errors, and the overlap report of an evaluation set."""

import hashlib
import math
import subprocess
import sys

import pytest

from rlvr_jax import tasks
from rlvr_jax.tasks import splits
from rlvr_jax.tasks.prompts import PromptFormat


def expected_fraction(canonical: str) -> float:
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big") / 2**64


def test_canonical_question_ignores_case_whitespace_and_compatibility_forms():
    assert splits.canonical_question("Calculate 3 + 4.") == "calculate3+4."
    assert splits.canonical_question(" calculate\t3+4.\n") == "calculate3+4."
    assert splits.canonical_question("Ｃalculate ３＋４．") == "calculate3+4."  # full width
    assert splits.canonical_question("STRASSE") == splits.canonical_question("straße")


def test_the_split_is_the_sha256_of_the_canonical_text():
    for question in ("Calculate 3 + 4.", "What is 12 * 7?", "x"):
        fraction = expected_fraction(splits.canonical_question(question))
        assert splits.question_fraction(question) == fraction
        for test_fraction in (0.1, 0.5, 0.9):
            assert splits.split_of(question, test_fraction) == (
                "test" if fraction < test_fraction else "train")


def test_the_split_does_not_change_with_the_python_hash_seed():
    code = ("from rlvr_jax.tasks import splits; print(splits.question_fraction('Calculate 3 "
            "+ 4.'))")
    values = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
                             check=True).stdout for seed in ("1", "2")}
    assert values == {f"{splits.question_fraction('Calculate 3 + 4.')}\n"}


def test_block_length_bounds_the_miss_probability():
    assert splits.block_length(0.2) == 300
    for test_fraction in (0.01, 0.2, 0.5, 0.9):
        share = min(test_fraction, 1 - test_fraction)
        block = splits.block_length(test_fraction)
        assert (1 - share) ** block <= math.exp(-60) and block <= 60 / share + 2
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction must be in"):
            splits.block_length(bad)


def candidate_list(count: int, distinct: int) -> list[dict]:
    return [{"id": f"c/{i}", "question": f"question {i % distinct}"} for i in range(count)]


def test_each_example_is_the_first_candidate_of_its_block_in_the_split():
    block = splits.block_length(0.5)
    candidates = candidate_list(10 * block, distinct=1000)
    for split in splits.SPLITS:
        source = splits.QuestionSplit(candidates, split, 0.5, 10, "toy")
        assert len(source) == 10
        for k in range(10):
            expected = next(c for c in candidates[k * block:(k + 1) * block]
                            if splits.split_of(c["question"], 0.5) == split)
            assert source[k] == expected
            assert source[k] == expected  # remembered
        with pytest.raises(IndexError):
            source[10]
    test = splits.QuestionSplit(candidates, "test", 0.5, 10, "toy")
    train = splits.QuestionSplit(candidates, "train", 0.5, 10, "toy")
    assert not {test[k]["question"] for k in range(10)} & {train[k]["question"] for k in range(10)}


def test_question_split_rejects_bad_splits_and_too_few_candidates():
    candidates = candidate_list(2 * splits.block_length(0.5), distinct=1000)
    with pytest.raises(ValueError, match=r"task toy has splits \('train', 'test'\), not 'dev'"):
        splits.QuestionSplit(candidates, "dev", 0.5, 2, "toy")
    with pytest.raises(ValueError, match="cannot fill 3 examples"):
        splits.QuestionSplit(candidates, "train", 0.5, 3, "toy")
    with pytest.raises(ValueError, match="size must be >= 1"):
        splits.QuestionSplit(candidates, "train", 0.5, 0, "toy")


def test_a_question_space_too_small_for_a_split_is_named_with_counts():
    """Three distinct questions: at most three hash values, so some split of a suitable
    test_fraction gets none of them."""
    fractions = sorted(splits.question_fraction(f"question {i}") for i in range(3))
    test_fraction = fractions[0] / 2  # below every question: the test split is empty
    candidates = candidate_list(splits.block_length(test_fraction), distinct=3)
    with pytest.raises(ValueError, match=r"task toy: only 0 of the first \d+ generated "
                                         r"questions \(3 distinct\) belong to split 'test'"):
        splits.QuestionSplit(candidates, "test", test_fraction, 1, "toy")
    assert splits.QuestionSplit(candidates, "train", test_fraction, 1, "toy")[0]["id"] == "c/0"


def listed_task(name: str, questions: list[str]) -> tasks.Task:
    data = [{"id": f"{name}/{i}", "question": q, "answer": ""} for i, q in enumerate(questions)]
    return tasks.Task(name=name, load_split=lambda split: data, verifier=None,
                      prompt_format=PromptFormat())


def test_overlap_report_counts_prompts_distinct_questions_and_training_questions():
    train = listed_task("listed", ["What is 2 + 2?", "Name a colour.", "What is 3 + 3?"])
    examples = [{"question": q} for q in ("what is 2+2?", "What is 5 + 5?", "WHAT IS 2 + 2 ?",
                                          "What is 3 + 3?", "What is 5 + 5?")]
    report = splits.overlap_report(examples, train, "train")
    assert (report.prompts, report.distinct, report.in_train) == (5, 3, 3)
    assert report.shown == ("what is 2+2?", "WHAT IS 2 + 2 ?", "What is 3 + 3?")
    assert report.train == "listed/train"
    assert str(report).startswith("evaluation set: 5 prompts, 3 distinct questions, 3 of the "
                                  "prompts in the training split listed/train, e.g.")
    clean = splits.overlap_report(examples[1:2], train, "train")
    assert (clean.in_train, clean.shown) == (0, ())
    assert str(clean) == ("evaluation set: 1 prompts, 1 distinct questions, 0 of the prompts "
                          "in the training split listed/train")


def test_a_mixture_finds_questions_in_each_component():
    tasks.register("listed_a", lambda: listed_task("a", ["alpha", "beta"]))
    tasks.register("listed_b", lambda: listed_task("b", ["gamma"]))
    mixture = tasks.get("mixture", components=[{"name": "listed_a", "weight": 1.0},
                                               {"name": "listed_b", "weight": 1.0}])
    assert mixture.questions_in("train", ["Alpha", "gamma", "delta"]) == {"Alpha", "gamma"}
