"""Cloud TPU pod slices: start and stop training on every worker of an existing slice.

Multi-controller JAX runs the *same* command on every worker of a slice; ``run`` does that with
``gcloud compute tpus tpu-vm ssh NAME --worker=all --command=SCRIPT``. The script starts
training in the background (``setsid nohup``) so it outlives the ssh session, refuses to start
a job that is still running, logs to ``~/rlvr_jax_logs/<job>/<run>.log`` on each worker and
keeps the job's process-group id in ``~/rlvr_jax_logs/<job>/pid``. ``stop`` sends SIGTERM to
that group (the trainer checkpoints on SIGTERM); ``run`` again resumes. The workdir must be on
GCS: every worker writes its part of each checkpoint there.

Creating, inspecting and deleting the slice are plain gcloud commands: see launch/README.md.
Example (``--dry_run`` prints the gcloud command and runs nothing)::

    python -m launch.tpu_pod run --name=rl-v5e --zone=us-west4-a \
        --config=configs/smollm2_arith.py:progrpo --workdir=gs://my-bucket/runs/progrpo \
        --set=seed=1 --job_name=progrpo --dry_run
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from launch.sweep import add_run_arguments, runs_from_args
from launch.train_command import (
    TRAIN_PROGRAM,
    LaunchError,
    TrainCommand,
    check_name,
    execute,
    parse_pairs,
)

LOG_DIR = "rlvr_jax_logs"
"""Per-worker log directory, relative to the ssh user's home."""
REMOTE_DIR = "rlvr_jax"
"""The project's checkout on every worker, relative to the home directory."""

_TPU_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Slice:
    """Where the slice lives. ``project``/``zone`` fall back to the gcloud defaults if None."""

    name: str
    zone: str | None = None
    project: str | None = None

    def __post_init__(self) -> None:
        if not _TPU_NAME.fullmatch(self.name or ""):
            raise LaunchError(
                f"--name={self.name!r}: a TPU name is 1-63 lowercase letters, digits or '-', "
                "starting with a letter and not ending with '-'."
            )

    def ssh(self, remote_script: str) -> list[str]:
        """``gcloud ... ssh`` that runs ``remote_script`` in every worker's login shell."""
        where = [f"--zone={self.zone}"] if self.zone else []
        where += [f"--project={self.project}"] if self.project else []
        return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name, *where,
                "--worker=all", f"--command={remote_script}"]


def start_script(
    runs: Sequence[TrainCommand],
    job_name: str,
    remote_dir: str = REMOTE_DIR,
    env: Sequence[tuple[str, str]] = (),
    program: Sequence[str] = TRAIN_PROGRAM,
) -> str:
    """Remote shell script that starts ``runs`` one after another, detached from ssh.

    Run ``r`` logs to ``~/rlvr_jax_logs/<job_name>/<r>.log``; a run that fails does not stop
    the ones after it. Workdirs must be on GCS.
    """
    check_name("job name", job_name)
    if check_name("--remote_dir", remote_dir) in (".", ".."):
        raise LaunchError("--remote_dir must name a directory under the home directory.")
    if not runs:
        raise LaunchError("nothing to run.")
    for run in runs:
        if not run.workdir.startswith("gs://") or run.workdir == "gs://":
            raise LaunchError(
                f"--workdir={run.workdir!r}: on a TPU slice the workdir must be a GCS path "
                "(gs://bucket/path) that every worker can write."
            )
    log_dir = f"$HOME/{LOG_DIR}/{job_name}"
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in env)
    steps = [f"{shlex.join(run.argv(program))} > {log_dir}/{run.name}.log 2>&1" for run in runs]
    chain = f"{exports}cd $HOME/{remote_dir} && " + "; ".join(steps)
    return (
        f'mkdir -p "{log_dir}" && '
        f'if [ -f "{log_dir}/pid" ] && kill -0 -- "-$(cat "{log_dir}/pid")" 2>/dev/null; '
        f'then echo "job {job_name} is already running" >&2; exit 1; fi && '
        f"(setsid nohup bash -c {shlex.quote(chain)} > /dev/null 2>&1 < /dev/null & "
        f'echo $! > "{log_dir}/pid")'
    )


def stop_script(job_name: str) -> str:
    """Remote shell script that sends SIGTERM to the job's process group and forgets its pid."""
    pid = f"$HOME/{LOG_DIR}/{check_name('job name', job_name)}/pid"
    return (f'if [ -f "{pid}" ]; then kill -TERM -- "-$(cat "{pid}")" 2>/dev/null; '
            f'rm -f "{pid}"; fi; true')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch.tpu_pod", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Start training on every worker.")
    stop = commands.add_parser("stop", help="SIGTERM the job on every worker.")
    for sub in (run, stop):
        sub.add_argument("--name", required=True, help="TPU VM slice name.")
        sub.add_argument("--zone", help="GCP zone (default: gcloud's compute/zone).")
        sub.add_argument("--project", help="GCP project (default: gcloud's core/project).")
        sub.add_argument("--job_name", default="train",
                         help="Names the log folder and pid (a sweep: its name).")
        sub.add_argument("--dry_run", action="store_true", help="Print the gcloud command only.")
    add_run_arguments(run)
    run.add_argument("--remote_dir", default=REMOTE_DIR, help="The checkout, under ~.")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="Environment variable for the training process (repeatable).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        tpu = Slice(args.name, args.zone, args.project)
        check_name("--job_name", args.job_name)
        if args.command == "run":
            sweep, runs = runs_from_args(args, args.job_name)
            gcloud = tpu.ssh(start_script(runs, sweep or args.job_name, args.remote_dir,
                                          parse_pairs(args.env, "--env")))
        else:
            gcloud = tpu.ssh(stop_script(args.job_name))
    except (LaunchError, re.error) as error:
        parser.error(str(error))
    try:
        return execute(gcloud, args.dry_run)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
