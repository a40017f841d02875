"""The last balanced box: nesting, truncation, and linear cost on adversarial input."""

import time

from rlvr_jax.boxed import extract_boxed


def test_deep_nesting_is_balanced():
    depth = 200
    completion = r"\boxed{" + "{" * depth + "x" + "}" * depth + "}"
    assert extract_boxed(completion) == "{" * depth + "x" + "}" * depth


def test_truncated_last_box_falls_back_to_the_last_balanced_one():
    assert extract_boxed(r"\boxed{1} and \fbox{\frac{2}{3}} then \boxed{\frac{1") == r"\frac{2}{3}"
    assert extract_boxed("no box") is None


def test_adversarial_nesting_is_linear():
    start = time.perf_counter()
    assert extract_boxed(r"\boxed{" * 200_000) is None
    assert time.perf_counter() - start < 2.0
