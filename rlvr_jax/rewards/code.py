"""Unit-test rewards for Python code (HumanEval-style), run in the sandbox in parallel.

A completion's code is the last fenced block (```` ```python ... ``` ````) if it has one, else
the whole completion. If the code defines the entry-point function, the program is the
problem's prompt (its imports and the stub) followed by the code, so the code's definition
replaces the stub; otherwise the code is taken as the body that continues the prompt. The
problem's ``test`` (which defines ``check``) and ``check(<entry_point>)`` follow, so the tests
are always called. Reward 1.0 iff the sandboxed program passes (see ``sandbox.run_python``).
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Mapping, Sequence

import numpy as np

from rlvr_jax.rewards.pool import CRASH, OK, TIMEOUT
from rlvr_jax.rewards.report import NO_ANSWER, ScoreReport
from rlvr_jax.rewards.sandbox import PASSED, SandboxLimits, run_python
from rlvr_jax.rewards.sandbox import TIMEOUT as SANDBOX_TIMEOUT

_FENCED = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The code of a completion: its last fenced block, else the whole text; None if blank."""
    blocks = _FENCED.findall(completion)
    code = blocks[-1] if blocks else completion
    return code if code.strip() else None


def build_program(code: str, problem: Mapping[str, str]) -> str:
    """The complete test program for ``code`` on a HumanEval-style ``problem``."""
    entry_point = problem["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        solution = problem["prompt"] + "\n\n" + code
    else:
        solution = problem["prompt"] + code
    return f"{solution}\n\n{problem['test']}\n\ncheck({entry_point})\n"


class CodeVerifier:
    """Scores completions by running problem tests in ``num_workers`` parallel sandboxes."""

    def __init__(self, num_workers: int = 2, limits: SandboxLimits | None = None):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.limits = limits or SandboxLimits()
        self.num_workers = num_workers

    def score(
        self, completions: Sequence[str], problems: Sequence[Mapping[str, str]]
    ) -> ScoreReport:
        """Rewards ``[N]`` float32 in {0, 1}: 1 iff the completion passes its problem's tests."""
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions but {len(problems)} problems")
        codes = [extract_code(completion) for completion in completions]
        statuses = [NO_ANSWER] * len(completions)
        rewards = np.zeros(len(completions), np.float32)  # [N]

        def run(index: int) -> None:
            try:
                result = run_python(build_program(codes[index], problems[index]), self.limits)
                statuses[index] = TIMEOUT if result.status == SANDBOX_TIMEOUT else OK
                rewards[index] = float(result.status == PASSED)
            except Exception:  # a sandbox failure scores 0 and is counted, never raised
                statuses[index] = CRASH

        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as executor:
            list(executor.map(run, [i for i, code in enumerate(codes) if code is not None]))
        return ScoreReport(rewards, tuple(statuses))
