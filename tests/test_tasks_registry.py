"""Task registry: the built-in names, unknown names, and any reasoning-gym task by prefix."""

import pytest

from rlvr_jax import tasks


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
    assert required <= set(tasks.names())
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        tasks.get("nope")


def test_any_reasoning_gym_task_by_prefix():
    task = tasks.get("rg:basic_arithmetic", size=5)
    assert task.name == "basic_arithmetic" and len(task.source("train")) == 5
