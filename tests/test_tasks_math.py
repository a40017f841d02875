"""A math task from TFDS files end to end: prompts, verification, timeout counters, errors."""

import json

import numpy as np
import pytest

from rlvr_jax import tasks


def test_math_task_from_tfds_counts_timeouts(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(4)]
    for split in ("train", "test"):
        (manual / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tasks.get(
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
        report = task.verify(completions, examples)
        np.testing.assert_array_equal(report.rewards, [0, 1, 1, 1])
        assert (task.timeouts, task.crashes) == (1, 0)
        task.verify(completions[:1], examples[:1])
        assert task.timeouts == 2
        with pytest.raises(ValueError, match="2 completions but 1 examples"):
            task.verify(completions[:2], examples[:1])
    finally:
        task.close()
