"""Seconds per RL step of rlvr_jax against TRL's `GRPOTrainer` on the same work, side by side.

Two long-lived worker processes (`benchmarks/peer_trl_workers.py`), one per side, each run one
RL step when told; this parent alternates them (A B A B ...) for `--steps` steps, so both see
the same background load, and reports medians over the steps after `--warmup` (the first
steps compile and warm up; the first step is reported on its own). Same work on both sides:
the main job's recipe `configs/smollm2_arith.py:grpo` (SmolLM2-135M-Instruct in float32 with
the same GGUF weights, 4 prompts x 4 samples, at most 24 new tokens, temperature 1, lr 1.5e-5,
one AdamW update per rollout, no KL, token-mean loss, no activation checkpointing), the same
chat-formatted prompts in the same order (checked at every step) and the project's verifier
as the reward. Before the first step the two sides' logits of one prompt must agree
(`--logit-atol`).

Reported per side: seconds per step (ours: the run's `time/step_seconds`; TRL's: from
`on_step_begin` to `on_step_end`), where the step's time goes, tokens generated per step,
cores kept busy (CPU seconds of the worker and of its child processes over wall seconds, over
the step for TRL and over the step plus its logging for ours), the worker's peak resident
memory (the worker process alone, its loading included), its largest resident memory at the
end of a step, and its live child processes' (the verifier's workers) at the end of a step.

Needs the `peers` extra (`pip install -e '.[peers]'`: TRL 1.16, torch). About 10 minutes
with the default 12 steps on a 2-core CPU with nothing else running:

    python -m benchmarks.peer_trl                  # 12 steps, medians over steps 3-12
    python -m benchmarks.peer_trl --steps 4        # a quick check (medians over steps 3-4)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import harness
from benchmarks.peer_trl_workers import READY, REPORT, SIDES, STEP, STOP

OURS, THEIRS = SIDES
WorkerCommand = Callable[[str, int, pathlib.Path], list[str]]


def worker_command(side: str, steps: int, workdir: pathlib.Path) -> list[str]:
    """The command line of one side's worker (this Python, the repository on the path)."""
    return [sys.executable, "-m", "benchmarks.peer_trl_workers", side, "--steps", str(steps),
            "--workdir", str(workdir)]


class Worker:
    """One side's worker process: commands on its stdin, events on its stdout, its standard
    error in ``<root>/<side>.log``."""

    def __init__(self, side: str, command: list[str], root: pathlib.Path) -> None:
        self.side = side
        self.log_path = root / f"{side}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        repo = str(pathlib.Path(__file__).resolve().parent.parent)
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._log, text=True, cwd=repo, env=env)

    def receive(self, event: str) -> dict[str, Any]:
        """The next event, which must be ``event``; RuntimeError with the log's tail when the
        worker ended instead."""
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"the {self.side} worker ended (exit {self._process.returncode}) "
                               f"instead of sending {event!r}; the end of {self.log_path}:\n{tail}")
        message = json.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"the {self.side} worker sent {message} instead of {event!r}")
        return message

    def send(self, command: str) -> None:
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()

    def step(self) -> dict[str, Any]:
        self.send(STEP)
        return self.receive(REPORT)

    def close(self, timeout_s: float = 60.0) -> None:
        """Says stop and waits for the exit (kills it after ``timeout_s``)."""
        if self._process.poll() is None:
            try:
                self.send(STOP)
                self._process.wait(timeout=timeout_s)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._log.close()


def compare_probes(ready: dict[str, dict[str, Any]], atol: float) -> dict[str, Any]:
    """Both sides' probe token ids must be equal and their float32 logits within ``atol``
    (AssertionError otherwise); returns the comparison."""
    import numpy as np

    probes = {side: np.load(message["probe"]) for side, message in ready.items()}
    ours, theirs = probes[OURS], probes[THEIRS]
    if not np.array_equal(ours["ids"], theirs["ids"]):
        raise AssertionError(f"the sides tokenized the probe differently: {ours['ids'].tolist()} "
                             f"vs {theirs['ids'].tolist()}")
    if ours["logits"].shape != theirs["logits"].shape:
        raise AssertionError(f"probe logits of shapes {ours['logits'].shape} and "
                             f"{theirs['logits'].shape}")
    difference = float(np.abs(ours["logits"] - theirs["logits"]).max())
    if not difference <= atol:
        raise AssertionError(f"the sides' probe logits differ by up to {difference:.3g} > "
                             f"--logit-atol {atol}: not the same weights")
    return {"tokens": int(ours["ids"].size), "max_abs_logit_difference": difference,
            "max_abs_logit": float(np.abs(ours["logits"]).max()), "atol": atol}


def check_same_prompts(reports: dict[str, dict[str, Any]], step: int) -> None:
    """AssertionError unless every question our side logged for ``step`` is among TRL's."""
    if not reports[OURS]["questions"]:
        raise AssertionError(f"{OURS} logged no sample question for step {step}")
    missing = set(reports[OURS]["questions"]) - set(reports[THEIRS]["questions"])
    if missing:
        raise AssertionError(f"step {step}: {OURS} trained on {sorted(missing)}, which TRL's "
                             f"step ({reports[THEIRS]['questions']}) did not")


def alternate(workers: dict[str, Worker], steps: int,
              on_step: Callable[[int, dict[str, dict[str, Any]]], None] | None = None,
              ) -> dict[str, list[dict[str, Any]]]:
    """``steps`` rounds of one step per worker, in the order of ``workers``: each side's
    reports in step order."""
    reports: dict[str, list[dict[str, Any]]] = {side: [] for side in workers}
    for step in range(1, steps + 1):
        this_step = {}
        for side, worker in workers.items():
            report = worker.step()
            if report["step"] != step:
                raise RuntimeError(f"the {side} worker reported step {report['step']} for {step}")
            this_step[side] = report
            reports[side].append(report)
        check_same_prompts(this_step, step)
        if on_step is not None:
            on_step(step, this_step)
    return reports


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values given (None when none is)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(reports: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """One side's figures: the first step, medians over the steps after ``warmup``, the
    split of the step (``other``: the step less its timed parts) and memory peaks."""
    measured = reports[warmup:]
    if not measured:
        raise ValueError(f"{len(reports)} steps leave none after the {warmup} warm-up steps")
    parts = list(measured[0]["split"])
    other = [r["step_s"] - sum(v for v in r["split"].values() if v is not None) for r in measured]
    return {
        "first_step_s": reports[0]["step_s"],
        "step_s": median([r["step_s"] for r in measured]),
        "step_s_min": min(r["step_s"] for r in measured),
        "step_s_max": max(r["step_s"] for r in measured),
        "split_s": {**{part: median([r["split"][part] for r in measured]) for part in parts},
                    "other": median(other)},
        "tokens_per_step": median([r["tokens"] for r in measured]),
        "cores_busy": median([(r["cpu_s"] + r["children_cpu_s"]) / r["window_s"]
                              for r in measured]),
        "cores_busy_worker_only": median([r["cpu_s"] / r["window_s"] for r in measured]),
        "window_s": median([r["window_s"] for r in measured]),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in reports),
        "step_end_rss_bytes": max(r["rss_bytes"] for r in reports),
        "children_rss_bytes": max(r["children_rss_bytes"] for r in reports),
        "measured_steps": [warmup + 1, len(reports)],
    }


def print_tables(summary: dict[str, dict[str, Any]], speedup: float) -> None:
    fmt = lambda x, spec=".2f": "-" if x is None else format(x, spec)  # noqa: E731
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    harness.print_table(
        ["side", "s/step", "first step s", "tokens/step", "cores busy", "peak RSS GiB",
         "step-end RSS GiB", "children RSS GiB"],
        [[side, fmt(s["step_s"]), fmt(s["first_step_s"]), fmt(s["tokens_per_step"], ".0f"),
          fmt(s["cores_busy"]), gib(s["peak_rss_bytes"]), gib(s["step_end_rss_bytes"]),
          gib(s["children_rss_bytes"])]
         for side, s in summary.items()])
    print(f"speed-up of {OURS} (TRL s/step / {OURS} s/step): {speedup:.2f}")
    parts = list(dict.fromkeys(p for s in summary.values() for p in s["split_s"]))
    harness.print_table(
        ["side", *parts],
        [[side, *[fmt(s["split_s"].get(p)) if p in s["split_s"] else "" for p in parts]]
         for side, s in summary.items()])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Figures under CPU contention (other processes running) favour neither side "
               "reliably: measure with nothing else running.")
    parser.add_argument("--steps", type=int, default=12, help="steps per side")
    parser.add_argument("--warmup", type=int, default=2,
                        help="first steps left out of the medians (compilation, warm-up)")
    parser.add_argument("--logit-atol", type=float, default=1e-3,
                        help="largest allowed difference of the sides' probe logits")
    parser.add_argument("--workdir", default=None,
                        help="where the workers run and log (default: a temporary directory)")
    parser.add_argument("--note", default="", help="stored with the result, e.g. 'contended'")
    parser.add_argument("--out", default=harness.result_path("peer_trl"))
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup} (>= 0)")
    return args


def main(argv: Sequence[str] | None = None,
         command: WorkerCommand = worker_command) -> dict[str, Any]:
    """Runs the pair and writes the result; ``command`` builds a worker's command line."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="peer_trl_") as scratch:
        root = pathlib.Path(args.workdir or scratch)
        if root.exists() and any(root.iterdir()):
            sys.exit(f"--workdir {root} is not empty (a run there would resume)")
        root.mkdir(parents=True, exist_ok=True)
        workers = {side: Worker(side, command(side, args.steps, root / side), root)
                   for side in SIDES}
        try:
            print(f"loading both sides (logs in {root})", flush=True)
            ready = {side: worker.receive(READY) for side, worker in workers.items()}
            probe = compare_probes(ready, args.logit_atol)
            print(f"probe logits agree to {probe['max_abs_logit_difference']:.2g}", flush=True)

            def show(step: int, reports: dict[str, dict[str, Any]]) -> None:
                times = ", ".join(f"{side} {r['step_s']:.1f} s" for side, r in reports.items())
                print(f"step {step}/{args.steps}: {times}", flush=True)

            reports = alternate(workers, args.steps, show)
        finally:
            for worker in workers.values():
                worker.close()
    summary = {side: summarise(reports[side], args.warmup) for side in SIDES}
    speedup = summary[THEIRS]["step_s"] / summary[OURS]["step_s"]
    record = harness.machine(**{k: str(v) for k, v in ready[THEIRS]["versions"].items()})
    print(f"{args.steps} steps per side, medians over steps {args.warmup + 1}-{args.steps}, "
          f"{record['cpu_count']} cores, load average {record['load_average_at_end'][0]:.1f}"
          + (f" ({args.note})" if args.note else ""))
    print_tables(summary, speedup)
    result = {
        "work": "configs/smollm2_arith.py:grpo (benchmarks/peer_trl_workers.py)",
        "note": args.note,
        **record,
        "config": {k: v for k, v in vars(args).items() if k != "workdir"},
        "probe": probe,
        "settings": {side: message.get("settings") for side, message in ready.items()},
        "speedup_of_ours": speedup,
        "sides": summary,
        "steps": reports,
    }
    harness.write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
