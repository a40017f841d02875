"""Verifier throughput: verified answers per second for the math verifier and the code runner.

    python -m benchmarks.verify [--workers 2] [--math-items 400]

Math: completions in mixed forms (fractions, decimals, LaTeX, sets, intervals, wrong answers)
verified by ``math_verifier()`` after a warm-up call (worker start-up excluded). Code: the 164
HumanEval canonical solutions verified by ``CodeVerifier`` (one sandboxed process each).
Prints a table and writes ``benchmarks/results/verify.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from benchmarks import harness
from rlvr_jax.data.humaneval import HumanEvalSource
from rlvr_jax.rewards.code_verifier import CodeVerifier
from rlvr_jax.rewards.math_verifier import math_verifier
from rlvr_jax.rewards.sandbox import isolation

MATH_CASES = [
    (r"The answer is \boxed{\frac{1}{2}}.", "0.5"),
    (r"so \boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
    (r"\boxed{\{1, 2\}}", r"\{2,1\}"),
    (r"\boxed{(1, 2]}", "(1,2]"),
    (r"\boxed{50\%}", "50"),
    ("#### 72", "72"),
    (r"\boxed{x^2 + 2x + 1}", "(x+1)^2"),
    (r"\boxed{0.51}", r"\frac{1}{2}"),
    (r"\boxed{\frac{3}{7}}", r"\frac{6}{14}"),
]


def bench_math(workers: int, items: int) -> dict:
    verifier = math_verifier(num_workers=workers, timeout_s=5.0)
    cases = [MATH_CASES[i % len(MATH_CASES)] for i in range(items)]
    # distinct strings, so the per-worker parse cache does not make the benchmark trivial
    completions = [
        c.replace("\\boxed{", "\\boxed{ " * (i // len(MATH_CASES) % 3 + 1), 1)
        for i, (c, _) in enumerate(cases)
    ]
    golds = [g + " " * (i // len(MATH_CASES)) for i, (_, g) in enumerate(cases)]
    verifier.verify(completions[: workers * 2], golds[: workers * 2])  # start the workers
    start = time.perf_counter()
    report = verifier.verify(completions, golds)
    elapsed = time.perf_counter() - start
    verifier.close()
    return {
        "items": items,
        "seconds": elapsed,
        "per_second": items / elapsed,
        "reward_mean": float(report.rewards.mean()),
        "timeouts": report.timeouts,
    }


def bench_code(workers: int) -> dict:
    source = HumanEvalSource()
    problems = [source[i] for i in range(len(source))]
    verifier = CodeVerifier(num_workers=workers)
    start = time.perf_counter()
    report = verifier.verify([p["answer"] for p in problems], problems)
    elapsed = time.perf_counter() - start
    return {
        "items": len(problems),
        "seconds": elapsed,
        "per_second": len(problems) / elapsed,
        "reward_mean": float(report.rewards.mean()),
        "timeouts": report.timeouts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--math-items", type=int, default=400)
    args = parser.parse_args()
    results = {
        "math_verifier": bench_math(args.workers, args.math_items),
        "code_runner_humaneval": bench_code(args.workers),
    }
    harness.print_table(["verifier", "items", "seconds", "answers/s", "mean reward"], [
        [name, row["items"], f"{row['seconds']:.2f}", f"{row['per_second']:.1f}",
         f"{row['reward_mean']:.3f}"] for name, row in results.items()
    ])
    results["setup"] = {
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "sandbox_isolation": isolation(),
    }
    harness.write_result(results, harness.result_path("verify"))


if __name__ == "__main__":
    main()
