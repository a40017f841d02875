"""Cloud TPU pod slices: create (or reuse) a slice, install rlvr_jax on every worker, train.

Multi-controller JAX runs the *same* command on every worker of a slice; this script does that
with ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...``. The training process
is started in the background (``setsid nohup``) so it outlives the ssh session; each worker
writes its own log under ``~/rlvr_jax_logs/`` and a pid file that ``stop`` uses to send SIGTERM
(the trainer checkpoints on SIGTERM). The workdir must be on GCS (``gs://...``): every worker
writes its shards of the checkpoint there.

Subcommands::

    create   create the slice, or reuse it if ``describe`` finds it
    setup    clone a git URL (or copy a local checkout) to every worker, pip install '.[tpu]'
    run      start training on every worker, in the background
    up       create + setup + run
    status   slice state, and whether training runs on each worker
    logs     tail a worker's log (``--worker=all`` for every worker)
    stop     SIGTERM the training process group on every worker
    delete   delete the slice

Every subcommand takes ``--dry_run``: print the exact gcloud commands, one per line, and run
nothing. Example::

    python -m launch.tpu_pod up --name=rl-v5e --zone=us-west4-a --project=my-proj \
        --accelerator_type=v5litepod-16 --repo=https://github.com/me/rlvr_jax.git \
        --config=configs/smollm2_arith.py:progrpo --workdir=gs://my-bucket/runs/progrpo \
        --set=seed=1 --set=advantage.options.alpha=0.5
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.train_command import ENV_NAME, LaunchError, TrainCommand, parse_cli_override

GCLOUD_TPU: tuple[str, ...] = ("gcloud", "compute", "tpus", "tpu-vm")
LOG_DIR = "rlvr_jax_logs"
"""Per-worker log directory, relative to the ssh user's home."""

DEFAULT_RUNTIME_VERSIONS: dict[str, str] = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
"""TPU software version used when ``--runtime_version`` is not given, by TPU generation."""

_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_ACCELERATOR = re.compile(r"(v\d+[a-z]*)-(\d+)")
_RUN_NAME = re.compile(r"[A-Za-z0-9._=-]+")


# --------------------------------------------------------------------------------------------
# Command construction (pure: argv lists and remote shell scripts)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    """Where the slice lives. ``project``/``zone`` fall back to the gcloud defaults if None."""

    name: str
    zone: str | None = None
    project: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name or ""):
            raise LaunchError(
                f"--name={self.name!r}: a TPU name is 1-63 lowercase letters, digits or '-', "
                "starting with a letter and not ending with '-'."
            )

    def location_flags(self) -> list[str]:
        flags = [f"--zone={self.zone}"] if self.zone else []
        return flags + ([f"--project={self.project}"] if self.project else [])


def check_accelerator_type(accelerator_type: str) -> str:
    """Validates e.g. ``v4-32``, ``v5litepod-16``, ``v5p-64``, ``v6e-8``; returns it."""
    if not _ACCELERATOR.fullmatch(accelerator_type or ""):
        raise LaunchError(
            f"--accelerator_type={accelerator_type!r}: expected GENERATION-CORES such as "
            "v4-32, v5litepod-16, v5p-64 or v6e-8."
        )
    return accelerator_type


def default_runtime_version(accelerator_type: str) -> str:
    """The TPU software version for the accelerator's generation (see DEFAULT_RUNTIME_VERSIONS)."""
    match = _ACCELERATOR.fullmatch(check_accelerator_type(accelerator_type))
    assert match is not None
    generation = match.group(1)
    if generation not in DEFAULT_RUNTIME_VERSIONS:
        raise LaunchError(
            f"no default --runtime_version for {generation}; pass --runtime_version "
            f"(known defaults: {', '.join(DEFAULT_RUNTIME_VERSIONS)})."
        )
    return DEFAULT_RUNTIME_VERSIONS[generation]


def describe_command(tpu: Slice) -> list[str]:
    return [*GCLOUD_TPU, "describe", tpu.name, *tpu.location_flags(), "--format=value(state)"]


def create_command(
    tpu: Slice,
    accelerator_type: str,
    runtime_version: str | None = None,
    spot: bool = False,
    preemptible: bool = False,
) -> list[str]:
    """``gcloud compute tpus tpu-vm create`` for the slice."""
    if spot and preemptible:
        raise LaunchError("--spot and --preemptible are exclusive; choose one (spot is newer).")
    version = runtime_version or default_runtime_version(accelerator_type)
    check_accelerator_type(accelerator_type)
    argv = [
        *GCLOUD_TPU, "create", tpu.name, *tpu.location_flags(),
        f"--accelerator-type={accelerator_type}", f"--version={version}",
    ]
    if spot:
        argv.append("--spot")
    if preemptible:
        argv.append("--preemptible")
    return argv


def delete_command(tpu: Slice) -> list[str]:
    return [*GCLOUD_TPU, "delete", tpu.name, *tpu.location_flags(), "--quiet"]


def ssh_command(tpu: Slice, remote_script: str, worker: str = "all") -> list[str]:
    """Runs ``remote_script`` (interpreted by the worker's login shell) on ``worker``."""
    if worker != "all" and not worker.isdigit():
        raise LaunchError(f"--worker={worker!r}: expected 'all' or a worker index like 0.")
    return [
        *GCLOUD_TPU, "ssh", tpu.name, *tpu.location_flags(), f"--worker={worker}",
        f"--command={remote_script}",
    ]


def scp_command(tpu: Slice, local_path: str, remote_path: str) -> list[str]:
    return [
        *GCLOUD_TPU, "scp", "--recurse", local_path, f"{tpu.name}:{remote_path}",
        *tpu.location_flags(), "--worker=all",
    ]


def _check_remote_dir(remote_dir: str) -> str:
    if not _RUN_NAME.fullmatch(remote_dir or "") or remote_dir in (".", ".."):
        raise LaunchError(
            f"--remote_dir={remote_dir!r}: use a plain directory name relative to the home "
            "directory, e.g. rlvr_jax."
        )
    return remote_dir


def setup_commands(
    tpu: Slice, repo: str, ref: str | None = None, remote_dir: str = "rlvr_jax",
    extras: str = "tpu",
) -> list[list[str]]:
    """Commands that put the project in ``~/remote_dir`` on every worker and pip install it.

    ``repo`` is a git URL (cloned; ``ref`` checked out) or a local directory (copied with
    ``gcloud ... scp --recurse``, replacing what was there).
    """
    _check_remote_dir(remote_dir)
    install = f"cd {remote_dir} && python3 -m pip install -U pip && " \
        f"python3 -m pip install -e {shlex.quote(f'.[{extras}]')}"
    if os.path.isdir(repo):
        if ref:
            raise LaunchError("--ref only applies to a git URL; a local --repo is copied as is.")
        upload = f"{remote_dir}_upload"
        base = os.path.basename(os.path.normpath(os.path.abspath(repo)))
        return [
            ssh_command(tpu, f"rm -rf {upload} && mkdir -p {upload}"),
            scp_command(tpu, os.path.abspath(repo), f"{upload}/"),
            ssh_command(
                tpu,
                f"rm -rf {remote_dir} && mv {upload}/{shlex.quote(base)} {remote_dir} && "
                f"rm -rf {upload} && {install}",
            ),
        ]
    if not re.match(r"(https?://|git@|ssh://|file://)", repo):
        raise LaunchError(
            f"--repo={repo!r} is neither an existing local directory nor a git URL "
            "(https://, ssh://, git@ or file://)."
        )
    clone = (
        f"if [ ! -d {remote_dir}/.git ]; then rm -rf {remote_dir} && "
        f"git clone {shlex.quote(repo)} {remote_dir}; fi"
    )
    if ref:  # a branch, tag or commit: whatever the remote has under that name now
        update = (
            f"git -C {remote_dir} fetch origin {shlex.quote(ref)} && "
            f"git -C {remote_dir} checkout --detach FETCH_HEAD"
        )
    else:
        update = f"git -C {remote_dir} pull --ff-only"
    return [ssh_command(tpu, f"{clone} && {update} && {install}")]


def check_gcs_workdir(workdir: str) -> str:
    if not workdir.startswith("gs://") or len(workdir) <= len("gs://"):
        raise LaunchError(
            f"--workdir={workdir!r}: on a TPU slice the workdir must be a GCS path "
            "(gs://bucket/path) that every worker can write."
        )
    return workdir


def check_env(env: Sequence[str]) -> list[tuple[str, str]]:
    """Parses ``NAME=VALUE`` strings."""
    pairs = []
    for item in env:
        name, sep, value = item.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise LaunchError(f"--env={item!r}: expected NAME=VALUE with a shell variable NAME.")
        pairs.append((name, value))
    return pairs


def background_script(
    runs: Sequence[tuple[str, Sequence[str]]],
    job_name: str,
    remote_dir: str = "rlvr_jax",
    env: Sequence[tuple[str, str]] = (),
) -> str:
    """Remote shell script that starts ``runs`` one after another, detached from ssh.

    ``runs`` is ``[(run_name, argv), ...]``; run ``r`` logs to ``~/rlvr_jax_logs/<job>/<r>.log``.
    The job's process-group id goes to ``~/rlvr_jax_logs/<job>/pid`` (``setsid`` makes the
    group), which ``stop`` signals. A run that fails does not stop the ones after it.
    """
    _check_remote_dir(remote_dir)
    if not _RUN_NAME.fullmatch(job_name or ""):
        raise LaunchError(f"job name {job_name!r}: use letters, digits, '.', '_', '=', '-'.")
    if not runs:
        raise LaunchError("nothing to run.")
    log_dir = f"$HOME/{LOG_DIR}/{job_name}"
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in env)
    steps = []
    for run_name, argv in runs:
        if not _RUN_NAME.fullmatch(run_name):
            raise LaunchError(f"run name {run_name!r}: use letters, digits, '.', '_', '=', '-'.")
        steps.append(f"{shlex.join(argv)} > {log_dir}/{run_name}.log 2>&1")
    chain = f"{exports}cd $HOME/{remote_dir} && " + "; ".join(steps)
    return (
        f'mkdir -p "{log_dir}" && '
        f'if [ -f "{log_dir}/pid" ] && kill -0 -- "-$(cat "{log_dir}/pid")" 2>/dev/null; '
        f'then echo "job {job_name} is already running" >&2; exit 1; fi && '
        f"(setsid nohup bash -c {shlex.quote(chain)} > /dev/null 2>&1 < /dev/null & "
        f'echo $! > "{log_dir}/pid")'
    )


def run_commands(
    tpu: Slice,
    runs: Sequence[tuple[str, TrainCommand]],
    job_name: str,
    remote_dir: str = "rlvr_jax",
    env: Sequence[tuple[str, str]] = (),
) -> list[list[str]]:
    """ssh commands that start ``runs`` (sequentially, in the background) on every worker."""
    for _, command in runs:
        check_gcs_workdir(command.workdir)
    script = background_script(
        [(name, command.argv()) for name, command in runs], job_name, remote_dir, env
    )
    return [ssh_command(tpu, script)]


def status_commands(tpu: Slice, job_name: str) -> list[list[str]]:
    pid = f"$HOME/{LOG_DIR}/{job_name}/pid"
    probe = (
        f'if [ -f "{pid}" ] && kill -0 -- "-$(cat "{pid}")" 2>/dev/null; '
        f'then echo "$(hostname): {job_name} running"; '
        f'else echo "$(hostname): {job_name} not running"; fi'
    )
    return [describe_command(tpu), ssh_command(tpu, probe)]


def logs_command(tpu: Slice, job_name: str, worker: str = "0", lines: int = 100) -> list[str]:
    if lines <= 0:
        raise LaunchError(f"--lines={lines}: must be positive.")
    log_dir = f"$HOME/{LOG_DIR}/{job_name}"
    return ssh_command(
        tpu, f'for f in "{log_dir}"/*.log; do echo "== $(hostname) $f"; tail -n {lines} "$f"; '
        "done", worker,
    )


def stop_command(tpu: Slice, job_name: str) -> list[str]:
    pid = f"$HOME/{LOG_DIR}/{job_name}/pid"
    return ssh_command(
        tpu, f'if [ -f "{pid}" ]; then kill -TERM -- "-$(cat "{pid}")" 2>/dev/null; '
        f'rm -f "{pid}"; fi; true',
    )


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


class CommandError(RuntimeError):
    """A gcloud command could not be started or exited with an error."""

    def __init__(self, argv: Sequence[str], message: str, returncode: int):
        super().__init__(f"{message}: {shlex.join(argv)}")
        self.returncode = returncode


def run_checked(argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` that raises CommandError with the command line on any failure."""
    try:
        result = subprocess.run(list(argv), **kwargs)
    except FileNotFoundError:
        raise CommandError(argv, f"{argv[0]} is not installed or not on PATH", 127) from None
    if result.returncode != 0:
        raise CommandError(argv, f"exit status {result.returncode}", result.returncode)
    return result


def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> None:
    """Prints each command (shell-quoted); unless ``dry_run``, runs it and stops on failure."""
    for argv in commands:
        print(shlex.join(argv), flush=True)
        if not dry_run:
            run_checked(argv)


def ensure_slice(tpu: Slice, create_argv: list[str], dry_run: bool) -> None:
    """Reuses the slice if ``describe`` finds it, otherwise creates it."""
    describe = describe_command(tpu)
    if dry_run:
        print(f"# create {tpu.name} unless this finds it:")
        print(shlex.join(describe))
        print(shlex.join(create_argv))
        return
    try:
        found = subprocess.run(describe, capture_output=True, text=True)
    except FileNotFoundError:
        raise CommandError(describe, "gcloud is not installed or not on PATH", 127) from None
    if found.returncode == 0:
        print(f"Reusing TPU {tpu.name} (state {found.stdout.strip() or 'unknown'}).", flush=True)
        return
    execute([create_argv], dry_run=False)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_slice_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="TPU VM slice name.")
    parser.add_argument("--zone", help="GCP zone (default: gcloud's compute/zone).")
    parser.add_argument("--project", help="GCP project (default: gcloud's core/project).")
    parser.add_argument("--dry_run", action="store_true", help="Print the gcloud commands only.")


def add_remote_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote_dir", default="rlvr_jax", help="Checkout dir under ~.")


def add_run_arguments(parser: argparse.ArgumentParser, training: bool = True) -> None:
    """Arguments of ``run`` (``training=False``: only those a sweep's TPU mode accepts)."""
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="Environment variable for the training process (repeatable).")
    if not training:
        return
    parser.add_argument("--config", required=True, help="configs/<recipe>.py[:variant]")
    parser.add_argument("--workdir", required=True, help="gs://bucket/path")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="Config override (repeatable).")
    parser.add_argument("--job_name", default="train", help="Names the log folder and pid.")


def add_create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accelerator_type", required=True, help="e.g. v5litepod-16, v4-32")
    parser.add_argument("--runtime_version", help="TPU software version (default by generation)")
    capacity = parser.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="Spot capacity.")
    capacity.add_argument("--preemptible", action="store_true", help="Preemptible capacity.")


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, help="git URL, or a local checkout to copy.")
    parser.add_argument("--ref", help="Branch, tag or commit to check out (git URL only).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch.tpu_pod", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, extra in [
        ("create", [add_create_arguments]),
        ("setup", [add_setup_arguments, add_remote_dir_argument]),
        ("run", [add_remote_dir_argument, add_run_arguments]),
        ("up", [add_create_arguments, add_setup_arguments, add_remote_dir_argument,
                add_run_arguments]),
        ("status", []), ("logs", []), ("stop", []), ("delete", []),
    ]:
        sub = commands.add_parser(name)
        add_slice_arguments(sub)
        for add in extra:
            add(sub)
        if name in ("status", "logs", "stop"):
            sub.add_argument("--job_name", default="train")
        if name == "logs":
            sub.add_argument("--worker", default="0", help="Worker index or 'all'.")
            sub.add_argument("--lines", type=int, default=100)
    return parser


def _train_command(args: argparse.Namespace) -> TrainCommand:
    overrides = dict(parse_cli_override(item) for item in args.overrides)
    return TrainCommand(config=args.config, workdir=check_gcs_workdir(args.workdir),
                        overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        tpu = Slice(args.name, args.zone, args.project)
        if args.command in ("create", "up"):
            create = create_command(tpu, args.accelerator_type, args.runtime_version,
                                    args.spot, args.preemptible)
        if args.command in ("run", "up"):
            env = check_env(args.env)
            runs = run_commands(tpu, [(args.job_name, _train_command(args))], args.job_name,
                                args.remote_dir, env)
        if args.command in ("setup", "up"):
            setup = setup_commands(tpu, args.repo, args.ref, args.remote_dir)
    except ValueError as error:
        parser.error(str(error))
    try:
        if args.command == "status":
            commands = status_commands(tpu, args.job_name)
        elif args.command == "logs":
            commands = [logs_command(tpu, args.job_name, args.worker, args.lines)]
        elif args.command == "stop":
            commands = [stop_command(tpu, args.job_name)]
        elif args.command == "delete":
            commands = [delete_command(tpu)]
    except LaunchError as error:
        parser.error(str(error))
    try:
        if args.command in ("create", "up"):
            ensure_slice(tpu, create, args.dry_run)
        if args.command in ("setup", "up"):
            execute(setup, args.dry_run)
        if args.command in ("run", "up"):
            execute(runs, args.dry_run)
        if args.command in ("status", "logs", "stop", "delete"):
            execute(commands, args.dry_run)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
