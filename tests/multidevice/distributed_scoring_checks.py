"""Two-process check of ``score_across_processes``; run by tests/test_distributed_scoring.py.

Each of two processes is started with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES=2`` and
``JAX_PROCESS_ID`` set and one CPU device; they join over Gloo, score the same items with a
task whose verifier records what it was given, and print one JSON object on the last stdout
line. The verifier rule (:func:`judge`) lives here so the test can score the same items
directly in one process.
"""

from __future__ import annotations

import json

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402

from rlvr_jax import sharding as sh  # noqa: E402
from rlvr_jax.data.prompts import PromptFormat  # noqa: E402
from rlvr_jax.rewards.distributed import score_across_processes  # noqa: E402
from rlvr_jax.rewards.report import ScoreReport  # noqa: E402
from rlvr_jax.rewards.tasks import Task  # noqa: E402

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


def recording_task(calls: list[list[str]]) -> Task:
    """A task whose verifier applies :func:`judge` and appends the ids it scored to ``calls``."""

    def verify(completions, exs):
        calls.append([ex["id"] for ex in exs])
        judged = [judge(c, ex["answer"]) for c, ex in zip(completions, exs, strict=True)]
        return ScoreReport(
            rewards=np.asarray([r for r, _ in judged], np.float32),
            statuses=tuple(s for _, s in judged),
        )

    return Task(
        name="recording", load_split=lambda split: [], verify=verify,
        answer_of=lambda completion: completion, prompt_format=PromptFormat(),
    )


def run_case(completions: list[str], exs: list[dict]) -> dict:
    calls: list[list[str]] = []
    task = recording_task(calls)
    report = score_across_processes(task, completions, exs)
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
