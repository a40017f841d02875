"""Final-answer extraction: boxed (nested, last, truncated), ####, "the answer is", adversarial."""

import time

import pytest

from rlvr_jax.rewards.extraction import MAX_ANSWER_CHARS, extract_answer


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left\{1, \{2\}\right\}}", r"\left\{1, \{2\}\right\}"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "3"),
        (r"\boxed {7}", "7"),
        (r"\fbox{8}", "8"),
        (r"done: \boxed{5} and a truncated \boxed{\frac{1", "5"),
        ("Natalia sold 72 clips.\n#### 72", "72"),
        ("#### 1,234\n", "1234"),
        ("#### (1,2)", "(1,2)"),
        ("So the answer is 17.", "17"),
        ("Thus, the final answer is: $\\frac{3}{4}$. I hope", "\\frac{3}{4}"),
        ("The answer is 3.5 meters", "3.5 meters"),
        ("The answer is 7. Wait, the answer is 8.", "8"),
        (r"The answer is 9 but \boxed{10}", "10"),
    ],
)
def test_extracts_final_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion",
    ["", "I think it is 42 but I am not sure", r"\boxed{}", r"\boxed{   }", "#### ", r"\boxed{1"],
)
def test_no_answer(completion):
    assert extract_answer(completion) is None


def test_overlong_answer_is_rejected():
    assert extract_answer(r"\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}") is None
    assert extract_answer(r"\boxed{" + "1" * MAX_ANSWER_CHARS + "}") == "1" * MAX_ANSWER_CHARS


@pytest.mark.parametrize(
    "completion",
    [
        "x" * 1_000_000 + r"\boxed{5}",
        r"\boxed{" * 200_000,
        r"\boxed{a}" + "{" * 1_000_000,
        "The answer is " * 70_000,
    ],
)
def test_megabyte_inputs_are_linear(completion):
    start = time.perf_counter()
    extract_answer(completion)
    assert time.perf_counter() - start < 2.0
