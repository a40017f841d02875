"""SLURM GPU clusters: write (and optionally ``sbatch``) a batch script for one training run.

The script starts one JAX process per node (default) or one per GPU with ``srun``; every
process runs the same ``python -m rlvr_jax.train`` command. It exports what
``rlvr_jax.sharding.initialize_distributed`` passes to ``jax.distributed.initialize``:

* ``JAX_COORDINATOR_ADDRESS``: the first host of ``$SLURM_JOB_NODELIST`` (expanded with
  ``scontrol show hostnames``) and a port derived from the job id, so two jobs sharing a node
  do not collide;
* ``JAX_NUM_PROCESSES`` = ``$SLURM_NTASKS`` and, per task, ``JAX_PROCESS_ID`` =
  ``$SLURM_PROCID``;
* ``JAX_LOCAL_DEVICE_IDS``: all GPUs of the node for one process per node, ``$SLURM_LOCALID``
  for one process per GPU. Setting it matters: with only the other three set, JAX's SLURM
  auto-detection would restrict every process to GPU ``$SLURM_LOCALID`` (i.e. GPU 0 when
  there is one task per node).

``--signal_seconds`` asks SLURM to send SIGTERM that long before the time limit, so the trainer
writes a checkpoint; resubmitting the same script resumes from it. Example::

    python -m launch.slurm --nodes=2 --gpus_per_node=8 --partition=gpu --time=24:00:00 \
        --setup='source ~/venvs/rlvr/bin/activate' \
        --config=configs/smollm2_arith.py:progrpo --workdir=/shared/runs/progrpo --dry_run
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.train_command import ENV_NAME, LaunchError, TrainCommand, parse_cli_override

_JOB_NAME = re.compile(r"[A-Za-z0-9._=-]+")
_TIME = re.compile(r"(\d+-)?\d+(:\d{2}){0,2}")
_SBATCH_VALUE = re.compile(r"[^\s'\"]+")


@dataclass(frozen=True)
class SlurmJob:
    """Resources and environment of one batch job.

    Attributes:
      nodes: number of nodes.
      gpus_per_node: GPUs requested on each node.
      per_gpu: one process per GPU (``nodes * gpus_per_node`` processes) instead of per node.
      cpus_per_task: CPU cores per process (host-side verifiers and tokenisation use them).
      partition, account, qos, time, mem: passed to ``#SBATCH`` when set.
      job_name: ``--job-name``; also names the log file ``<log_dir>/<job_name>-<jobid>.out``.
      log_dir: where SLURM writes stdout/stderr (created before submission).
      repo_dir: the checkout to ``cd`` into (relative config paths are resolved there).
      setup: shell lines run before ``srun`` (``module load ...``, ``source venv/bin/activate``).
      env: extra ``NAME=VALUE`` exported to the training processes.
      signal_seconds: send SIGTERM this long before the time limit (0: do not).
      port_base: coordinator port is ``port_base + SLURM_JOB_ID % 1000``.
      python: interpreter on the compute nodes.
    """

    nodes: int = 1
    gpus_per_node: int = 8
    per_gpu: bool = False
    cpus_per_task: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    mem: str | None = None
    job_name: str = "rlvr_jax"
    log_dir: str = "slurm_logs"
    repo_dir: str | None = None
    setup: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    signal_seconds: int = 300
    port_base: int = 20000
    python: str = "python3"

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LaunchError(f"--{name}={value!r}: must be a positive integer.")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise LaunchError(f"--cpus_per_task={self.cpus_per_task}: must be positive.")
        if self.time is not None and not _TIME.fullmatch(self.time):
            raise LaunchError(
                f"--time={self.time!r}: use SLURM's format, e.g. 30, 4:00:00 or 2-00:00:00."
            )
        if not _JOB_NAME.fullmatch(self.job_name):
            raise LaunchError(
                f"--job_name={self.job_name!r}: use letters, digits, '.', '_', '=', '-'."
            )
        for name in ("partition", "account", "qos", "mem", "log_dir"):
            value = getattr(self, name)
            if value is not None and not _SBATCH_VALUE.fullmatch(value):
                raise LaunchError(f"--{name}={value!r}: no spaces or quotes allowed.")
        for name, _ in self.env:
            if not ENV_NAME.fullmatch(name):
                raise LaunchError(f"--env {name!r}: not a shell variable name.")
        if not 0 <= self.signal_seconds <= 65535:
            raise LaunchError(f"--signal_seconds={self.signal_seconds}: must be in [0, 65535].")
        if not 1024 <= self.port_base <= 64535:
            raise LaunchError(f"--port_base={self.port_base}: must be in [1024, 64535].")

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_node if self.per_gpu else 1


def render_script(job: SlurmJob, command: TrainCommand) -> str:
    """The ``sbatch`` script (bash) that runs ``command`` on ``job``'s resources."""
    sbatch = [
        f"--job-name={job.job_name}",
        f"--nodes={job.nodes}",
        f"--ntasks-per-node={job.tasks_per_node}",
        f"--gpus-per-node={job.gpus_per_node}",
        f"--output={job.log_dir}/%x-%j.out",
    ]
    optional = {
        "cpus-per-task": job.cpus_per_task, "partition": job.partition,
        "account": job.account, "qos": job.qos, "time": job.time, "mem": job.mem,
    }
    sbatch += [f"--{key}={value}" for key, value in optional.items() if value is not None]
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
        f"export JAX_COORDINATOR_ADDRESS=\"$head_node:$(({job.port_base} + SLURM_JOB_ID % 1000))\"",
        'export JAX_NUM_PROCESSES="$SLURM_NTASKS"',
        'echo "job $SLURM_JOB_ID: $SLURM_NTASKS processes, coordinator $JAX_COORDINATOR_ADDRESS"',
        "",
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(task)}",
        "",
    ]
    return "\n".join(lines)


def submit(script: str, script_path: str, log_dir: str, dry_run: bool) -> str | None:
    """Writes ``script`` to ``script_path`` and runs ``sbatch`` on it; returns sbatch's output.

    With ``dry_run`` prints the script and the sbatch command instead, and writes nothing.
    """
    sbatch = ["sbatch", script_path]
    if dry_run:
        print(script)
        print(f"# submit with: {shlex.join(sbatch)}")
        return None
    os.makedirs(os.path.dirname(os.path.abspath(script_path)), exist_ok=True)
    os.makedirs(log_dir, exist_ok=True)
    with open(script_path, "w") as f:
        f.write(script)
    try:
        result = subprocess.run(sbatch, capture_output=True, text=True)
    except FileNotFoundError:
        raise LaunchError(f"sbatch is not on PATH; the script is in {script_path}.") from None
    if result.returncode != 0:
        raise LaunchError(
            f"sbatch {script_path} failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    print(result.stdout.strip(), flush=True)
    return result.stdout.strip()


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The SlurmJob fields as flags (shared with ``launch.sweep``)."""
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--per_gpu", action="store_true",
                        help="One process per GPU instead of one per node.")
    parser.add_argument("--cpus_per_task", type=int)
    for name in ("partition", "account", "qos", "time", "mem"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--log_dir", default="slurm_logs")
    parser.add_argument("--repo_dir", help="Checkout to cd into (default: sbatch's cwd).")
    parser.add_argument("--setup", action="append", default=[], metavar="SHELL_LINE",
                        help="Shell line run before srun (repeatable).")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--signal_seconds", type=int, default=300)
    parser.add_argument("--port_base", type=int, default=20000)
    parser.add_argument("--python", default="python3")
    parser.add_argument("--script_dir", default="slurm_scripts")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print the script and the sbatch command; submit nothing.")


def job_from_args(args: argparse.Namespace, job_name: str) -> SlurmJob:
    env = []
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise LaunchError(f"--env={item!r}: expected NAME=VALUE.")
        env.append((name, value))
    return SlurmJob(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, per_gpu=args.per_gpu,
        cpus_per_task=args.cpus_per_task, partition=args.partition, account=args.account,
        qos=args.qos, time=args.time, mem=args.mem, job_name=job_name, log_dir=args.log_dir,
        repo_dir=args.repo_dir, setup=tuple(args.setup), env=tuple(env),
        signal_seconds=args.signal_seconds, port_base=args.port_base, python=args.python,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch.slurm", description=__doc__.split("\n\n")[0],
    )
    add_job_arguments(parser)
    parser.add_argument("--job_name", default="rlvr_jax")
    parser.add_argument("--config", required=True, help="configs/<recipe>.py[:variant]")
    parser.add_argument("--workdir", required=True, help="Shared-filesystem or gs:// path.")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="Config override (repeatable).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        job = job_from_args(args, args.job_name)
        command = TrainCommand(
            config=args.config, workdir=args.workdir,
            overrides=dict(parse_cli_override(item) for item in args.overrides),
        )
    except ValueError as error:
        parser.error(str(error))
    script_path = os.path.join(args.script_dir, f"{job.job_name}.sbatch")
    try:
        submit(render_script(job, command), script_path, job.log_dir, args.dry_run)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
