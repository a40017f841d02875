"""Task registry end to end: data, prompts, scoring, answer extraction and counters."""

import json

import numpy as np
import pytest

from rlvr_jax import rewards
from rlvr_jax.rewards.tasks import TEST_SEED_OFFSET


def test_registry_lists_the_required_tasks():
    required = {
        "gsm8k",
        "math",
        "math500",
        "dapo_math",
        "aime",
        "countdown",
        "basic_arithmetic",
        "chain_sum",
        "gsm_symbolic",
        "humaneval",
    }
    assert required <= set(rewards.list_tasks())
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        rewards.get_task("nope")


def test_procedural_task_end_to_end():
    task = rewards.get_task("chain_sum", seed=3, size=40, num_workers=1)
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
        rewards_ = task.score(completions, examples)
        assert rewards_.dtype == np.float32
        np.testing.assert_array_equal(rewards_, [1, 0, 0, 1, 1, 1])
        assert task.extract_answer(completions[0]) == examples[0]["answer"]
        shard = task.examples("train", seed=0, process_index=1, process_count=2)
        assert len(shard) == 20
    finally:
        task.close()
    with pytest.raises(ValueError, match="splits train/test"):
        task.source("validation")


def test_any_reasoning_gym_task_by_prefix():
    task = rewards.get_task("rg:basic_arithmetic", size=5)
    assert task.name == "basic_arithmetic" and len(task.source("train")) == 5


def test_math_task_from_tfds_counts_timeouts(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(4)]
    for split in ("train", "test"):
        (manual / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = rewards.get_task(
        "gsm8k",
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(manual),
        timeout_s=2.0,
        system_prompt="Be brief.",
    )
    try:
        examples = task.examples("test", seed=0)
        assert sorted(e["answer"] for e in examples) == ["0", "2", "4", "6"]
        assert task.format_prompt(examples[0]).startswith("Be brief.\n\nWhat is")
        completions = [f"#### {e['answer']}" for e in examples]
        completions[0] = r"\boxed{9^{9^{9^{9^{9}}}}}"
        report = task.score_report(completions, examples)
        np.testing.assert_array_equal(report.rewards, [0, 1, 1, 1])
        assert (task.timeouts, task.crashes) == (1, 0)
        task.score(completions[:1], examples[:1])
        assert task.timeouts == 2
        with pytest.raises(ValueError, match="2 completions but 1 examples"):
            task.score(completions[:2], examples[:1])
    finally:
        task.close()


def test_humaneval_task():
    task = rewards.get_task("humaneval", num_workers=2)
    examples = task.examples("test", seed=0, n=3)
    assert all(e["id"].startswith("HumanEval/") for e in examples)
    assert "```python" in task.format_prompt(examples[0])
    completions = [f"```python\n{e['prompt']}{e['answer']}```" for e in examples]
    completions[2] = "```python\ndef nope():\n    pass\n```"
    np.testing.assert_array_equal(task.score(completions, examples), [1, 1, 0])
    assert task.extract_answer(completions[0]).startswith(examples[0]["prompt"][:10])
    with pytest.raises(ValueError, match="only the split 'test'"):
        task.source("train")
