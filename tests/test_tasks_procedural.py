"""Procedural tasks end to end: seeded splits, prompts, verification, answer extraction, and
the last-number answer format."""

import numpy as np
import pytest

from rlvr_jax import tasks
from rlvr_jax.tasks.procedural_tasks import TEST_SEED_OFFSET


def test_procedural_task_end_to_end():
    task = tasks.get("chain_sum", seed=3, size=40, num_workers=1)
    try:
        examples = task.examples("train", seed=0, n=6)
        assert [e["id"] for e in examples] == [e["id"] for e in task.examples("train", 0, 6)]
        assert [e["id"] for e in examples] != [e["id"] for e in task.examples("train", 1, 6)]
        test_ids = {e["id"] for e in task.examples("test", seed=0)}
        assert all(i.startswith(f"chain_sum/{3 + TEST_SEED_OFFSET}/") for i in test_ids)
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
    with pytest.raises(ValueError, match="splits train/test"):
        task.source("validation")


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
