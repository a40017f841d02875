"""Two-process check of ``verify_across_processes``; run by tests/test_rewards_distributed.py.

Each of two processes is started with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES=2`` and
``JAX_PROCESS_ID`` set and one CPU device; they join over Gloo, verify the same items with a
task whose verifier records what it was given, and print one JSON object on the last stdout
line. The verifier rule (:func:`judge`) lives here so the test can verify the same items
directly in one process.
"""

from __future__ import annotations

import json

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402

from rlvr_jax import sharding as sh  # noqa: E402
from rlvr_jax.rewards.distributed import verify_across_processes  # noqa: E402
from rlvr_jax.rewards.verification import Verification  # noqa: E402
from rlvr_jax.tasks import PromptFormat, Task  # noqa: E402

# Item i: completion COMPLETIONS[i] for an example whose reference answer is ANSWERS[i].
COMPLETIONS = ("4", "5", "<hang>", "x", "", "<boom>", "9")
ANSWERS = ("4", "6", "1", "x", "2", "3", "9")


def judge(completion: str, answer: str) -> tuple[float, str]:
    """Reward and status of one item: a stand-in verifier with every outcome kind."""
    if completion == "<hang>":
        return 0.0, "timeout"
    if completion == "<boom>":
        return 0.0, "crash"
    if not completion:
        return 0.0, "no_answer"
    return float(completion == answer), "ok"


def examples() -> list[dict]:
    return [{"id": f"item{i}", "question": "q", "answer": a} for i, a in enumerate(ANSWERS)]


class RecordingVerifier:
    """Applies :func:`judge` to whole examples and appends the ids it verified to ``calls``."""

    def __init__(self, calls: list[list[str]]):
        self.calls = calls

    def extract(self, completion: str) -> str | None:
        return completion or None

    def verify(self, completions, exs) -> Verification:
        self.calls.append([ex["id"] for ex in exs])
        judged = [judge(c, ex["answer"]) for c, ex in zip(completions, exs, strict=True)]
        return Verification(
            rewards=np.asarray([r for r, _ in judged], np.float32),
            statuses=tuple(s for _, s in judged),
        )

    def close(self) -> None:
        pass


def recording_task(calls: list[list[str]]) -> Task:
    """A task whose verifier is a :class:`RecordingVerifier` that gets the whole examples."""
    return Task(
        name="recording", load_split=lambda split: [], verifier=RecordingVerifier(calls),
        prompt_format=PromptFormat(), reference=lambda example: example,
    )


def run_case(completions: list[str], exs: list[dict]) -> dict:
    calls: list[list[str]] = []
    task = recording_task(calls)
    report = verify_across_processes(task, completions, exs)
    return {
        "calls": calls,
        "rewards": report.rewards.tolist(),
        "statuses": list(report.statuses),
        "report_counts": [report.timeouts, report.crashes, report.no_answer],
        "task_totals": [task.timeouts, task.crashes],
    }


def main() -> None:
    results: dict = {"initialized": sh.initialize_distributed()}
    results["process_index"] = jax.process_index()
    results["process_count"] = jax.process_count()
    results["seven"] = run_case(list(COMPLETIONS), examples())
    results["one"] = run_case(list(COMPLETIONS[:1]), examples()[:1])
    results["zero"] = run_case([], [])
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
