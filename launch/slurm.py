"""SLURM GPU clusters: write (and ``sbatch``) a batch script per training run.

The script starts one JAX process per node (default) or one per GPU with ``srun``; every
process runs the same ``python -m rlvr_jax.train`` command with what
``jax.distributed.initialize`` reads: ``JAX_COORDINATOR_ADDRESS`` (the job's first host, a port
derived from the job id so two jobs on one node do not collide), ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID`` and ``JAX_LOCAL_DEVICE_IDS``. The last matters: without it JAX's SLURM
auto-detection gives every process only GPU ``$SLURM_LOCALID``, i.e. GPU 0 with one process per
node. Queue, logs and cancelling are plain SLURM commands: see launch/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

from launch.sweep import add_run_arguments, runs_from_args
from launch.train_command import ENV_NAME, LaunchError, TrainCommand, check_name, parse_pairs

PORT_BASE = 20000
"""The coordinator listens on ``PORT_BASE + SLURM_JOB_ID % 1000``."""
_SBATCH_OPTION = re.compile(r"--?[A-Za-z][-A-Za-z]*(=[^\s'\"]+)?")


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """Resources and environment of one batch job.

    Attributes:
      nodes: number of nodes.
      gpus_per_node: GPUs requested on each node.
      per_gpu: one process per GPU (``nodes * gpus_per_node`` processes) instead of per node.
      job_name: ``--job-name``; also names the log file ``<log_dir>/<job_name>-<jobid>.out``.
      log_dir: where SLURM writes stdout/stderr (created before submission).
      sbatch: further ``#SBATCH`` options, e.g. ``("--partition=gpu", "--time=24:00:00")``.
      setup: shell lines run before ``srun`` (``module load ...``, ``source venv/bin/activate``).
      repo_dir: the checkout to ``cd`` into (relative config paths are resolved there).
      env: extra ``NAME=VALUE`` exported to the training processes.
      signal_seconds: send SIGTERM this long before the time limit, so the trainer checkpoints
        (0: do not).
      python: interpreter on the compute nodes.
    """

    nodes: int = 1
    gpus_per_node: int = 8
    per_gpu: bool = False
    job_name: str = "rlvr_jax"
    log_dir: str = "slurm_logs"
    sbatch: Sequence[str] = ()
    setup: Sequence[str] = ()
    repo_dir: str | None = None
    env: Sequence[tuple[str, str]] = ()
    signal_seconds: int = 300
    python: str = "python3"

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            if getattr(self, name) < 1:
                raise LaunchError(f"--{name}={getattr(self, name)}: must be a positive integer.")
        check_name("--job_name", self.job_name)
        if not re.fullmatch(r"[^\s'\"]+", self.log_dir):
            raise LaunchError(f"--log_dir={self.log_dir!r}: no spaces or quotes allowed.")
        for option in self.sbatch:
            if not _SBATCH_OPTION.fullmatch(option):
                raise LaunchError(
                    f"--sbatch={option!r}: expected one sbatch option such as --partition=gpu "
                    "(no spaces or quotes)."
                )
        bad_names = [name for name, _ in self.env if not ENV_NAME.fullmatch(name)]
        if bad_names:
            raise LaunchError(f"--env: {bad_names} are not shell variable names.")
        if not 0 <= self.signal_seconds <= 65535:
            raise LaunchError(f"--signal_seconds={self.signal_seconds}: must be in [0, 65535].")


def render_script(job: SlurmJob, command: TrainCommand) -> str:
    """The ``sbatch`` script (bash) that runs ``command`` on ``job``'s resources."""
    tasks_per_node = job.gpus_per_node if job.per_gpu else 1
    sbatch = [
        f"--job-name={job.job_name}", f"--nodes={job.nodes}",
        f"--ntasks-per-node={tasks_per_node}", f"--gpus-per-node={job.gpus_per_node}",
        f"--output={job.log_dir}/%x-%j.out", *job.sbatch,
    ]
    if job.signal_seconds:
        sbatch.append(f"--signal=TERM@{job.signal_seconds}")
    local_ids = (
        '"$SLURM_LOCALID"' if job.per_gpu
        else shlex.quote(",".join(str(i) for i in range(job.gpus_per_node)))
    )
    task = (
        f"export JAX_PROCESS_ID=$SLURM_PROCID JAX_LOCAL_DEVICE_IDS={local_ids}; "
        f"exec {shlex.join(command.argv((job.python, '-m', 'rlvr_jax.train')))}"
    )
    lines = ["#!/bin/bash", *(f"#SBATCH {flag}" for flag in sbatch), "", "set -eo pipefail"]
    lines += list(job.setup)
    if job.repo_dir:
        lines.append(f"cd {shlex.quote(job.repo_dir)}")
    lines += [f"export {name}={shlex.quote(value)}" for name, value in job.env]
    lines += [
        "",
        "# One coordinator for jax.distributed: the job's first node. (sed reads every line;",
        "# 'head -n 1' could SIGPIPE scontrol and fail the pipeline under pipefail.)",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        '[ -n "$head_node" ] || { echo "no host in SLURM_JOB_NODELIST" >&2; exit 1; }',
        f"export JAX_COORDINATOR_ADDRESS=\"$head_node:$(({PORT_BASE} + SLURM_JOB_ID % 1000))\"",
        'export JAX_NUM_PROCESSES="$SLURM_NTASKS"',
        'echo "job $SLURM_JOB_ID: $SLURM_NTASKS processes, coordinator $JAX_COORDINATOR_ADDRESS"',
        "",
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(task)}",
        "",
    ]
    return "\n".join(lines)


def submit(job: SlurmJob, command: TrainCommand, script_path: str, dry_run: bool) -> None:
    """Writes the script to ``script_path`` and ``sbatch``-es it (``dry_run``: prints it)."""
    script = render_script(job, command)
    if dry_run:
        print(script)
        print(f"# submit with: sbatch {shlex.quote(script_path)}")
        return
    os.makedirs(os.path.dirname(os.path.abspath(script_path)), exist_ok=True)
    os.makedirs(job.log_dir, exist_ok=True)
    with open(script_path, "w") as f:
        f.write(script)
    try:
        result = subprocess.run(["sbatch", script_path], capture_output=True, text=True)
    except FileNotFoundError:
        raise LaunchError(f"sbatch is not on PATH; the script is in {script_path}.") from None
    if result.returncode != 0:
        raise LaunchError(
            f"sbatch {script_path} failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    print(result.stdout.strip(), flush=True)


def build_parser() -> argparse.ArgumentParser:
    """Flags: the SlurmJob fields (defaults from SlurmJob), the runs, the script directory."""
    parser = argparse.ArgumentParser(
        prog="python -m launch.slurm", description=__doc__.split("\n\n")[0]
    )
    job = parser.add_argument_group("the job (SlurmJob)", argument_default=argparse.SUPPRESS)
    job.add_argument("--nodes", type=int, help=f"Nodes (default {SlurmJob.nodes}).")
    job.add_argument("--gpus_per_node", type=int,
                     help=f"GPUs of each node (default {SlurmJob.gpus_per_node}).")
    job.add_argument("--per_gpu", action="store_true", help="One process per GPU, not per node.")
    job.add_argument("--sbatch", action="append", metavar="OPTION",
                     help="An #SBATCH option, e.g. --sbatch=--partition=gpu (repeatable).")
    job.add_argument("--log_dir", help=f"SLURM's output directory (default {SlurmJob.log_dir}).")
    job.add_argument("--setup", action="append", metavar="SHELL_LINE",
                     help="Shell line run before srun (repeatable).")
    job.add_argument("--repo_dir", help="Checkout to cd into (default: sbatch's cwd).")
    job.add_argument("--env", action="append", metavar="NAME=VALUE",
                     help="Exported to the training processes (repeatable).")
    job.add_argument("--signal_seconds", type=int, help="SIGTERM this long before the time "
                     f"limit, so the trainer checkpoints (default {SlurmJob.signal_seconds}).")
    job.add_argument("--python", help=f"Interpreter on the nodes (default {SlurmJob.python}).")
    add_run_arguments(parser)
    parser.add_argument("--job_name", default=SlurmJob.job_name,
                        help="With --config: the job's name (a sweep: <sweep>-<run>).")
    parser.add_argument("--script_dir", default="slurm_scripts",
                        help="<dir>/<job>.sbatch; a sweep: <dir>/<sweep>/<run>.sbatch.")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the script and the sbatch command; submit nothing.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SlurmJob)
             if hasattr(args, f.name)}
    try:
        sweep, runs = runs_from_args(args, check_name("--job_name", args.job_name))
        given["env"] = parse_pairs(given.get("env", ()), "--env")
        jobs = [(run, SlurmJob(**{**given, "job_name": f"{sweep}-{run.name}" if sweep
                                  else run.name})) for run in runs]
    except (LaunchError, re.error) as error:
        parser.error(str(error))
    failed = 0
    for run, job in jobs:
        script_path = os.path.join(args.script_dir, sweep or "", f"{run.name}.sbatch")
        try:
            submit(job, run, script_path, args.dry_run)
        except LaunchError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
