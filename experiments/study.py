"""An exploration study: every run of a sweep (methods x seeds), trained in one process.

    python -m experiments.study --sweep=configs/sweeps/exploration_smollm2.py \\
        --workdir=studies/exploration_smollm2
    python -m experiments.study_report --study=studies/exploration_smollm2 \\
        --out=experiments/results/exploration_smollm2

The study description is a sweep file (``launch/sweep.py``: ``get_sweep()`` with a name, a
recipe and one override entry per run). A run's *method* is everything its entry sets except
the seed (``config=progrpo`` in the estimators sweep reads ``progrpo``); runs of one method differ
only in the seed. Each run trains with :func:`rlvr_jax.train.run` in ``<workdir>/<run name>``.

Resumable: a run whose final evaluation is recorded is finished and skipped; an unfinished run
resumes from its checkpoint; SIGINT / SIGTERM make the current run save at its next step
boundary, and the study stops there (the same command continues it); between runs, or while
a run is starting, they stop the study at once. Runs go seed by seed (every
method of seed 0 first), so a partial study holds complete paired seeds. ``study.json`` records
the plan; a workdir holding another study's plan is refused. ``study_log.jsonl`` records when
each run started, finished or was interrupted.

Paired: every run must share the task, model, number of steps and evaluation settings, and every
method the same seeds; runs of one seed then see the same prompt stream and the same rollout
randomness at every step (``rollout.collect``) and every run is evaluated on the same prompts
with the same key (``eval.seed``). What else differs between methods (for a controlled
estimator study: only ``advantage.*``) is written to ``study.json`` and to the report.

Shared between runs: loaded weights and tokenizer (``models.ModelStore``), compiled programs
(JAX's persistent compilation cache in ``<workdir>/compile_cache``, which also serves a
resumed study and cluster jobs sharing the directory) and the base model's evaluation: only
the first run evaluates before training (the same prompts, key and weights give every run the
same step-0 evaluation), the others set ``eval.at_start = False``.

On a cluster, ``--plan_only`` writes ``study.json`` without training, and the same file launches
one job per run into the same run directories (``python -m launch.slurm --sweep=<file>
--workdir=<dir>``, likewise ``launch.tpu_pod``); every job then evaluates the base model itself,
and the report reads the workdir the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

STUDY_FILE = "study.json"
LOG_FILE = "study_log.jsonl"
COMPILE_CACHE = "compile_cache"
SEED_KEY = "seed"
PAIRED_SECTIONS = ("task", "model", "eval", "total_steps")
"""Config entries every run of a study must share (``eval.at_start`` aside)."""


@dataclasses.dataclass(frozen=True)
class StudyRun:
    name: str
    method: str
    seed: int
    workdir: str
    config: Any  # locked ConfigDict


def method_name(run_name: str) -> str:
    """The run name without its seed: ``config=lens__seed=2`` -> ``lens``; ``base`` if empty."""
    parts = [part for part in run_name.split("__") if not part.startswith(f"{SEED_KEY}=")]
    return "__".join(part.removeprefix("config=") for part in parts) or "base"


def plan(sweep_path: str, workdir: str) -> tuple[str, list[StudyRun]]:
    """The study's name and runs, seed by seed; raises ValueError when the runs are not paired.

    Resolves every run's recipe and overrides and validates the result
    (``launch.sweep.check_runs``) before anything is trained.
    """
    from launch import sweep as sweep_lib
    from rlvr_jax import config as config_lib

    description = sweep_lib.load_function(sweep_path, "get_sweep")()
    commands = sweep_lib.expand(description, workdir)
    sweep_lib.check_runs(commands)
    configs = sweep_lib.resolve_runs(commands)
    runs = [StudyRun(c.name, method_name(c.name), int(config.seed), c.workdir, config)
            for c, config in zip(commands, configs, strict=True)]
    methods = list(dict.fromkeys(run.method for run in runs))
    seeds = {m: sorted(r.seed for r in runs if r.method == m) for m in methods}
    if any(seeds[m] != seeds[methods[0]] for m in methods):
        raise ValueError(f"every method needs the same seeds for paired comparisons: {seeds}")
    if any(len(set(s)) != len(s) for s in seeds.values()):
        raise ValueError(f"a method repeats a seed: {seeds}")
    reference = config_lib.flatten(runs[0].config)
    for run in runs[1:]:
        other = config_lib.flatten(run.config)
        unpaired = sorted(key for key in reference.keys() | other.keys()
                          if key.split(".")[0] in PAIRED_SECTIONS and key != "eval.at_start"
                          and reference.get(key) != other.get(key))
        if unpaired:
            raise ValueError(f"run {run.name} differs from {runs[0].name} in {unpaired}: the runs "
                             "of a study must share the task, model, steps and evaluation")
    order = {m: i for i, m in enumerate(methods)}
    return description["name"], sorted(runs, key=lambda r: (r.seed, order[r.method]))


def differences(runs: Sequence[StudyRun]) -> dict[str, dict[str, Any]]:
    """For each method, the config entries (seed aside) whose value differs from the first
    method's, with that method's value."""
    from rlvr_jax import config as config_lib

    first: dict[str, dict[str, Any]] = {}
    for run in runs:
        first.setdefault(run.method, config_lib.flatten(run.config))
    base = first[runs[0].method]
    ignored = {SEED_KEY, "eval.at_start"}
    return {method: {key: values.get(key) for key in sorted(base.keys() | values.keys())
                     if key not in ignored and base.get(key) != values.get(key)}
            for method, values in first.items()}


def final_evaluation_recorded(run: StudyRun) -> bool:
    """Whether ``run`` finished: its records hold the evaluation after the last step."""
    from rlvr_jax import evaluation

    return evaluation.recorded(run.workdir, run.config.total_steps)


def steps_done(run: StudyRun) -> int:
    """Training steps ``run`` has logged (for the progress bar)."""
    from rlvr_jax import metric_writer

    path = os.path.join(run.workdir, metric_writer.METRICS_FILE)
    if not os.path.exists(path):
        return 0
    steps = [r["step"] for r in metric_writer.read_metrics(path) if "train/reward_mean" in r]
    return max(steps, default=0)


def _write_plan(workdir: str, name: str, runs: Sequence[StudyRun]) -> None:
    plan_record = {
        "study": name,
        "runs": [{"name": r.name, "method": r.method, "seed": r.seed} for r in runs],
        "methods": list(dict.fromkeys(r.method for r in runs)),
        "differences": differences(runs),
    }
    path = os.path.join(workdir, STUDY_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
        if {k: existing.get(k) for k in ("study", "runs")} != {
                k: plan_record[k] for k in ("study", "runs")}:
            raise ValueError(f"{path} describes another study ({existing.get('study')!r}, "
                             f"{len(existing.get('runs', []))} runs); use a new --workdir")
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(plan_record, f, indent=2, default=repr)
        f.write("\n")


def _log(workdir: str, event: str, run: StudyRun | None = None) -> None:
    with open(os.path.join(workdir, LOG_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.time(), "event": event,
                            **({"run": run.name} if run else {})}) + "\n")


def run_study(name: str, runs: Sequence[StudyRun], workdir: str) -> bool:
    """Trains every unfinished run of the study :func:`plan` made; True when all are
    finished."""
    import jax
    from tqdm import tqdm

    from rlvr_jax import models, train

    _write_plan(workdir, name, runs)
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, COMPILE_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    store = models.ModelStore()
    finished = {r.name for r in runs if final_evaluation_recorded(r)}
    total = sum(r.config.total_steps for r in runs)
    done = sum(r.config.total_steps if r.name in finished else steps_done(r) for r in runs)
    print(f"study {name}: {len(runs)} runs ({len(finished)} finished) in {workdir}",
          file=sys.stderr)
    _log(workdir, "study_started")
    with tqdm(total=total, initial=done, unit="step", dynamic_ncols=True) as bar:
        for index, run in enumerate(runs):
            if run.name in finished:
                continue
            bar.set_description(f"run {index + 1}/{len(runs)} {run.name}")
            config = run.config.copy_and_resolve_references()
            config.eval.at_start = config.eval.at_start and index == 0
            _log(workdir, "run_started", run)
            train.run(config, run.workdir, model_store=store, progress=bar)
            if not final_evaluation_recorded(run):
                _log(workdir, "interrupted", run)
                print(f"study {name} stopped in {run.name}; run the same command to continue",
                      file=sys.stderr)
                return False
            _log(workdir, "run_finished", run)
    _log(workdir, "study_finished")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", required=True, help="the study: a sweep file with get_sweep()")
    parser.add_argument("--workdir", required=True, help="the study's directory (one per study)")
    parser.add_argument("--plan_only", action="store_true",
                        help="write study.json and stop (the runs are launched elsewhere)")
    args = parser.parse_args(argv)
    from absl import logging as absl_logging

    from launch.train_command import LaunchError

    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        name, runs = plan(args.sweep, args.workdir)
        _write_plan(args.workdir, name, runs)
    except (LaunchError, ValueError) as error:
        parser.error(str(error))
    if args.plan_only:
        print(f"study {name}: {len(runs)} runs planned in {args.workdir}", file=sys.stderr)
        return 0
    previous = signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C outside a run's loop
    try:
        return 0 if run_study(name, runs, args.workdir) else 1
    except KeyboardInterrupt:  # between two runs, or while one was starting
        _log(args.workdir, "interrupted")
        print(f"study {name} interrupted; run the same command to continue", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
