"""Math tasks from TFDS builders over the user's files, verified by ``math-verify``.

``gsm8k``, ``math`` (splits train/test/math500), ``dapo_math`` and ``aime`` read the data set of
that name (``rlvr_jax.data.tfds_builders``) from ``data_dir``, building it first from
``manual_dir`` when given (None or empty: ``data_dir`` holds it already). ``math500`` is
``math`` with ``test`` meaning MATH-500.
"""

from __future__ import annotations

from rlvr_jax.rewards.math_verifier import math_verifier
from rlvr_jax.rewards.pool import DEFAULT_NUM_WORKERS, DEFAULT_TIMEOUT_S
from rlvr_jax.tasks.order import RandomAccessSource
from rlvr_jax.tasks.prompts import BOXED_INSTRUCTION, task_prompt_format
from rlvr_jax.tasks.task import Task

MATH_DATASETS = ("gsm8k", "math", "dapo_math", "aime")


def math_task(
    dataset: str,
    *,
    data_dir: str,
    manual_dir: str | None = None,
    task_name: str | None = None,
    split_alias: dict[str, str] | None = None,
    num_workers: int = DEFAULT_NUM_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    system_prompt: str | None = None,
    instruction: str | None = None,
) -> Task:
    """The math task over TFDS data set ``dataset``; ``split_alias`` renames splits and
    ``instruction`` (default: the boxed-answer instruction) ends each prompt."""
    from rlvr_jax.data import tfds_builders

    if manual_dir:
        tfds_builders.prepare(dataset, manual_dir, data_dir)
    aliases = split_alias or {}

    def load_split(split: str) -> RandomAccessSource:
        return tfds_builders.load_source(dataset, aliases.get(split, split), data_dir)

    return Task(
        name=task_name or dataset,
        load_split=load_split,
        verifier=math_verifier(num_workers=num_workers, timeout_s=timeout_s),
        prompt_format=task_prompt_format(instruction, system_prompt, BOXED_INSTRUCTION),
    )
