"""The humaneval task: problems, code prompt, sandboxed verification, code extraction."""

import numpy as np
import pytest

from rlvr_jax import tasks
from rlvr_jax.rewards.sandbox import isolation_metrics


def test_humaneval_task():
    task = tasks.get("humaneval", num_workers=2)
    examples = task.examples("test", seed=0, n=3)
    assert all(e["id"].startswith("HumanEval/") for e in examples)
    assert "```python" in task.format_prompt(examples[0])
    completions = [f"```python\n{e['prompt']}{e['answer']}```" for e in examples]
    completions[2] = "```python\ndef nope():\n    pass\n```"
    np.testing.assert_array_equal(task.verify(completions, examples).rewards, [1, 1, 0])
    assert task.extract_answer(completions[0]).startswith(examples[0]["prompt"][:10])
    with pytest.raises(ValueError, match="only the split 'test'"):
        task.source("train")


def test_humaneval_steps_report_how_confined_the_sandbox_is():
    task = tasks.get("humaneval", num_workers=1)
    metrics = task.group_metrics(task.examples("test", seed=0, n=1), np.ones((1, 2)))
    missing = isolation_metrics()["sandbox_layers_missing"]
    assert metrics == {"sandbox_confined": float(missing == 0), "sandbox_layers_missing": missing}
