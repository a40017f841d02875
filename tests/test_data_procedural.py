"""reasoning-gym sources: seeded, deterministic generation; clear errors on bad input."""

import pytest

from rlvr_jax.data.procedural import PROCEDURAL_TASKS, ProceduralSource


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_generation_is_deterministic_and_seeded(name):
    first, again = ProceduralSource(name, seed=5, size=20), ProceduralSource(name, seed=5, size=20)
    other = ProceduralSource(name, seed=6, size=20)
    assert [first[i]["question"] for i in range(20)] == [again[i]["question"] for i in range(20)]
    assert [first[i]["question"] for i in range(20)] != [other[i]["question"] for i in range(20)]
    example = first[3]
    assert example["id"] == f"{name}/5/3" and example["answer"] == str(example["entry"]["answer"])


def test_source_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown reasoning-gym task 'no_such_task'"):
        ProceduralSource("no_such_task")
    with pytest.raises(IndexError):
        ProceduralSource("chain_sum", size=3)[3]
