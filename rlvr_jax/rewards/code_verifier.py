"""Unit-test rewards for Python code (HumanEval-style), judged outside the sandbox.

:class:`CodeVerifier` presents the verifier interface of ``verification.Verifier`` with its
own processes: each completion gets a fresh sandbox (``sandbox.run_tests``), started from a
thread of a small pool, so it needs no worker pool of its own.

A completion's code is the last fenced block (```` ```python ... ``` ````) if it has one, else
the whole completion. If the code defines the entry-point function, the program is the
problem's prompt (its imports and the stub) followed by the code, so the code's definition
replaces the stub; otherwise the code is taken as the body that continues the prompt. The
sandbox loads that program; the problem's ``test`` runs in the judge process, which calls the
function across the sandbox's boundary with plain data and always calls ``check``. Reward 1.0
iff ``check`` passes. The code shares no process with the tests, so it cannot skip, patch or
read them, and it can only return plain built-in values (an "always equal" object arrives as
an error). Constructing a verifier logs a warning once per process when the host cannot
confine the sandbox (``sandbox.warn_if_unconfined``).
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Mapping, Sequence

import numpy as np

from rlvr_jax.rewards import sandbox
from rlvr_jax.rewards.pool import DEFAULT_NUM_WORKERS
from rlvr_jax.rewards.sandbox import ERROR, PASSED, TIMEOUT, SandboxLimits, run_tests
from rlvr_jax.rewards.verification import Status, Verification

# A sandbox that could not run the program is a crash of the check, counted as such.
_STATUSES = {TIMEOUT: Status.TIMEOUT, ERROR: Status.CRASH}

_FENCED = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The code of a completion: its last fenced block, else the whole text; None if blank."""
    blocks = _FENCED.findall(completion)
    code = blocks[-1] if blocks else completion
    return code if code.strip() else None


def candidate_program(code: str, problem: Mapping[str, str]) -> str:
    """The program the sandbox loads for ``code`` on a HumanEval-style ``problem``: the
    problem's prompt (imports, helpers, the stub) with the code as the stub's replacement or
    body. The tests are not part of it: they run in the judge (``sandbox.run_tests``)."""
    entry_point = problem["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return problem["prompt"] + "\n\n" + code
    return problem["prompt"] + code


class CodeVerifier:
    """Verifies completions by running problem tests in ``num_workers`` parallel sandboxes.

    The references are the HumanEval-style problems (``prompt``, ``test``, ``entry_point``).
    """

    def __init__(
        self, num_workers: int = DEFAULT_NUM_WORKERS, limits: SandboxLimits | None = None
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.limits = limits or SandboxLimits()
        self.num_workers = num_workers
        sandbox.warn_if_unconfined()

    def isolation_metrics(self) -> dict[str, float]:
        """How confined the sandboxed programs are on this host (``sandbox.isolation_metrics``)."""
        return sandbox.isolation_metrics()

    def extract(self, completion: str) -> str | None:
        """The code of ``completion`` (see :func:`extract_code`)."""
        return extract_code(completion)

    def verify(
        self, completions: Sequence[str], problems: Sequence[Mapping[str, str]]
    ) -> Verification:
        """Rewards ``[N]`` float32 in {0, 1}: 1 iff the completion passes its problem's tests."""
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions but {len(problems)} problems")
        codes = [extract_code(completion) for completion in completions]
        statuses = [Status.NO_ANSWER] * len(completions)
        rewards = np.zeros(len(completions), np.float32)  # [N]

        def run(index: int) -> None:
            try:
                problem = problems[index]
                result = run_tests(
                    candidate_program(codes[index], problem), problem["entry_point"],
                    problem["test"], setup=problem["prompt"], limits=self.limits)
                statuses[index] = _STATUSES.get(result.status, Status.OK)
                rewards[index] = float(result.status == PASSED)
            except Exception:  # a sandbox failure scores 0 and is counted, never raised
                statuses[index] = Status.CRASH

        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as executor:
            list(executor.map(run, [i for i, code in enumerate(codes) if code is not None]))
        return Verification(rewards, tuple(statuses))

    def close(self) -> None:
        """Nothing to stop: each sandboxed program ends with its run."""
