"""Unit-test rewards for Python code (HumanEval-style), run in the sandbox in parallel.

:class:`CodeVerifier` presents the verifier interface of ``verification.Verifier`` with its
own processes: each program runs in a fresh sandboxed interpreter (``sandbox.run_python``),
started from a thread of a small pool, so it needs no worker pool of its own.

A completion's code is the last fenced block (```` ```python ... ``` ````) if it has one, else
the whole completion. If the code defines the entry-point function, the program is the
problem's prompt (its imports and the stub) followed by the code, so the code's definition
replaces the stub; otherwise the code is taken as the body that continues the prompt. The
problem's ``test`` (which defines ``check``) and ``check(<entry_point>)`` follow, so the tests
are always called, on the solution wrapped so that it must return plain built-in values (an
"always equal" object is a known reward hack). Reward 1.0 iff the sandboxed program passes
(see ``sandbox.run_python``). Not defended: a solution that monkey-patches built-ins or
modules the tests use (``math.isclose``, ``abs``) before the tests run.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Mapping, Sequence

import numpy as np

from rlvr_jax.rewards.pool import DEFAULT_NUM_WORKERS
from rlvr_jax.rewards.sandbox import PASSED, SandboxLimits, run_python
from rlvr_jax.rewards.sandbox import TIMEOUT as SANDBOX_TIMEOUT
from rlvr_jax.rewards.verification import Status, Verification

_FENCED = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The code of a completion: its last fenced block, else the whole text; None if blank."""
    blocks = _FENCED.findall(completion)
    code = blocks[-1] if blocks else completion
    return code if code.strip() else None


# Defined before the solution runs, so it holds the real built-ins. The tests see the solution
# through it: every return value must be built of plain built-in types (checked by identity),
# so an object whose ``__eq__`` always returns True cannot pass ``assert f(x) == y``.
_PLAIN_VALUES_GUARD = """
def _rlvr_plain_values(function, _type=type, _any=any, _error=TypeError):
    plain = (int, float, complex, str, bytes, bool, type(None))
    containers = (list, tuple, set, frozenset)

    def check_value(value, depth=0):
        kind = _type(value)
        if _any(kind is t for t in plain):
            return
        if depth < 32 and _any(kind is t for t in containers):
            for item in value:
                check_value(item, depth + 1)
            return
        if depth < 32 and kind is dict:
            for key, item in dict.items(value):
                check_value(key, depth + 1)
                check_value(item, depth + 1)
            return
        raise _error("the solution returned a non-built-in value")

    def guarded(*args, **kwargs):
        value = function(*args, **kwargs)
        check_value(value)
        return value

    return guarded
"""


def build_program(code: str, problem: Mapping[str, str]) -> str:
    """The complete test program for ``code`` on a HumanEval-style ``problem``."""
    entry_point = problem["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        solution = problem["prompt"] + "\n\n" + code
    else:
        solution = problem["prompt"] + code
    return (
        f"{_PLAIN_VALUES_GUARD}\n{solution}\n\n{problem['test']}\n\n"
        f"check(_rlvr_plain_values({entry_point}))\n"
    )


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
                result = run_python(build_program(codes[index], problems[index]), self.limits)
                statuses[index] = Status.TIMEOUT if result.status == SANDBOX_TIMEOUT else Status.OK
                rewards[index] = float(result.status == PASSED)
            except Exception:  # a sandbox failure scores 0 and is counted, never raised
                statuses[index] = Status.CRASH

        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as executor:
            list(executor.map(run, [i for i, code in enumerate(codes) if code is not None]))
        return Verification(rewards, tuple(statuses))

    def close(self) -> None:
        """Nothing to stop: each sandboxed program ends with its run."""
