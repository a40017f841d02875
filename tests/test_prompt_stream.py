"""The prompt stream passes over unusable examples at their positions, counts them, warns
once per example and resumes exactly; a fixed set drops them."""

import numpy as np
import pytest

from rlvr_jax.prompt_stream import PromptStream, usable_examples
from rlvr_jax.tasks.order import epoch_order


class ListTask:
    """A task whose split is ``questions`` (examples ``{"id": i, "question": q}``)."""

    def __init__(self, questions):
        self.data = [{"id": i, "question": q} for i, q in enumerate(questions)]

    def source(self, split):
        return self.data


def test_prompt_stream_passes_over_rejected_examples_and_counts_them(caplog):
    """Examples 1 and 3 (of 5) are rejected: a stream keeps the epoch order of the others, at
    their own positions, counts every pass over a rejected one and warns once per example."""
    task = ListTask(["a", "too long", "b", "too long", "c"])
    reject = lambda example: "too long" if example["question"] == "too long" else None  # noqa: E731
    stream = PromptStream(task, "train", seed=3)
    order = [int(i) for e in range(4) for i in epoch_order(5, 3, e)]  # 4 epochs
    with caplog.at_level("WARNING", logger="rlvr_jax.prompt_stream"):
        examples, positions = stream.take(9, reject)
    usable = [p for p, i in enumerate(order) if i not in (1, 3)][:9]
    np.testing.assert_array_equal(positions, usable)
    assert [e["id"] for e in examples] == [order[p] for p in usable]
    assert stream.position == usable[-1] + 1
    assert stream.skipped == stream.position - 9
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"passing over example {i} of split 'train': too long" for i in (1, 3)]
    resumed = PromptStream(task, "train", seed=3, position=positions[4])
    np.testing.assert_array_equal(resumed.take(5, reject)[1], positions[4:])  # exact resume
    with pytest.raises(ValueError, match=r"no example of split 'train' can be used: all 5"):
        PromptStream(task, "train", seed=3).take(1, lambda example: "never")


def test_a_fixed_set_drops_the_rejected_examples_and_refuses_to_be_empty(caplog):
    examples = [{"id": i, "question": q} for i, q in enumerate(["a", "too long", "b"])]
    reject = lambda example: "too long" if example["question"] == "too long" else None  # noqa: E731
    with caplog.at_level("WARNING", logger="rlvr_jax.prompt_stream"):
        assert usable_examples(examples, reject, "evaluation") == [examples[0], examples[2]]
    assert [r.getMessage() for r in caplog.records] == [
        "leaving evaluation example 1 out: too long"]
    with pytest.raises(ValueError, match="none of the 1 evaluation examples can be used"):
        usable_examples(examples[1:2], reject, "evaluation")
