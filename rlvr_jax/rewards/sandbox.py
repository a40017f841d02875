"""Sandboxed execution of untrusted Python programs (model-written code plus its unit tests).

Each program runs under a fresh ``python -I -S`` launcher (isolated mode, no site-packages:
the standard library only) started in a new session. The launcher (``sandbox_child.py``) forks
the program into its own process group, kills it and every descendant on timeout, and reaps
them; this process SIGKILLs the launcher's process group (and, as root, every process of the
sandbox uid) as a backstop. The layers, all on by default:

* **network**: as root, a new network namespace (``unshare(CLONE_NEWNET)``: only a down
  loopback); always, an audit hook that refuses ``socket`` operations. ``isolation()`` says
  which are active on this host (without root only the audit hook is).
* **limits**: ``RLIMIT_CPU``, ``RLIMIT_AS`` (memory), ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``,
  ``RLIMIT_NOFILE``, no core files; a wall-clock timeout in this process.
* **user**: as root, the program runs as an unprivileged uid of its own, ``sandbox_uid(slot)``
  (distinct per calling process and per concurrent run, so ``RLIMIT_NPROC`` counts only that
  run's processes); after each run every process of that uid is killed, which also catches
  children that left the process group.
  Without root the program keeps the caller's uid and ``RLIMIT_NPROC`` counts all of the
  caller's processes, so the limit is set to the caller's current count plus the allowance.
* **file system**: an empty temporary working directory owned by the program's uid and
  removed afterwards; the audit hook refuses writes outside it and reads of ``/proc/*/environ``.
* **environment**: scrubbed: only ``PATH``, ``HOME`` (the working dir) and ``LANG``.
* **processes**: the audit hook refuses ``fork``/``exec``/``subprocess`` unless
  ``allow_processes``; ``RLIMIT_NPROC`` bounds them when allowed.

A program passes only if it exits 0 and its last stdout line is a random nonce the launcher
prints after the program finished, so ``sys.exit(0)`` before the tests is a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

UID_BASE = 61000
MAX_SLOTS = 64  # concurrent sandboxed runs per calling process
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
PASSED, FAILED, TIMEOUT = "passed", "failed", "timeout"
_TIMEOUT_EXIT_CODE = 124  # the launcher's exit code when the program ran past timeout_s
_GRACE_S = 2.0  # extra wall time before this process kills the launcher itself


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run.

    Attributes:
      timeout_s: wall-clock limit; the process group is killed after it.
      cpu_s: CPU-time limit (``RLIMIT_CPU``); defaults to ``ceil(timeout_s)``.
      memory_bytes: address-space limit (``RLIMIT_AS``).
      file_size_bytes: largest file the program may write (``RLIMIT_FSIZE``).
      max_processes: processes the program may add (``RLIMIT_NPROC`` allowance).
      max_open_files: ``RLIMIT_NOFILE``.
      output_bytes: how much of stdout and stderr is kept.
      allow_processes: let the program create processes (still bounded by max_processes).
    """

    timeout_s: float = 5.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    max_processes: int = 8
    max_open_files: int = 64
    output_bytes: int = 64 << 10
    allow_processes: bool = False


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """``status`` is ``"passed"``, ``"failed"`` or ``"timeout"``."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == PASSED


_slots_lock = threading.Lock()
_slots_in_use: set[int] = set()


def sandbox_uid(slot: int) -> int:
    """The uid of slot ``slot`` in this process: ``UID_BASE + (pid % 8192) * MAX_SLOTS + slot``."""
    return UID_BASE + (os.getpid() % 8192) * MAX_SLOTS + slot


@contextlib.contextmanager
def _acquire_slot() -> Iterator[int]:
    with _slots_lock:
        free = [slot for slot in range(MAX_SLOTS) if slot not in _slots_in_use]
        if not free:
            raise RuntimeError(f"more than {MAX_SLOTS} concurrent sandboxed runs")
        _slots_in_use.add(free[0])
    try:
        yield free[0]
    finally:
        with _slots_lock:
            _slots_in_use.discard(free[0])


def _is_root() -> bool:
    return os.geteuid() == 0


def isolation() -> dict[str, str]:
    """Which isolation layers this host gives the sandbox (they depend on running as root)."""
    root = _is_root()
    return {
        "network": "network namespace + audit hook" if root else "audit hook only",
        "user": "an unprivileged uid per concurrent run" if root else "caller's uid",
        "process_limit": "per-slot RLIMIT_NPROC" if root else "RLIMIT_NPROC over caller's uid",
    }


def _processes_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def _kill_everything(process: subprocess.Popen, uid: int | None) -> None:
    """Backstop: SIGKILL the launcher's group, then (as root) every process of the sandbox uid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if uid is not None:
        for _ in range(3):  # a fork bomb may fork between the scan and the kill
            pids = _processes_of_uid(uid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    process.wait()


def _read_head(path: str, limit: int) -> str:
    with open(path, "rb") as file:
        return file.read(limit).decode("utf-8", errors="replace")


def _ends_with_nonce(path: str, nonce: str) -> bool:
    marker = ("\n" + nonce + "\n").encode()
    with open(path, "rb") as file:
        file.seek(max(0, os.path.getsize(path) - len(marker)))
        return file.read() == marker


def _user_process_count() -> int:
    return len(_processes_of_uid(os.getuid()))


def run_python(program: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``program`` in the sandbox; it passes if it exits cleanly (see the module doc).

    Thread-safe: concurrent calls run under different sandbox uids.
    """
    with _acquire_slot() as slot:
        return _run_in_slot(program, limits or SandboxLimits(), slot)


def _run_in_slot(program: str, limits: SandboxLimits, slot: int) -> SandboxResult:
    root = _is_root()
    uid = sandbox_uid(slot) if root else None
    nproc = limits.max_processes + (1 if root else _user_process_count())
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="rlvr_sandbox_")
    logdir = tempfile.mkdtemp(prefix="rlvr_sandbox_log_")
    if uid is not None:
        os.chown(workdir, uid, uid)
    config = {
        "workdir": workdir,
        "timeout_s": limits.timeout_s,
        "uid": uid,
        "unshare_network": root,
        "cpu_s": limits.cpu_s or max(1, int(limits.timeout_s + 0.999)),
        "memory_bytes": limits.memory_bytes,
        "file_size_bytes": limits.file_size_bytes,
        "max_processes": nproc,
        "max_open_files": limits.max_open_files,
        "allow_processes": limits.allow_processes,
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"}
    stdout_path, stderr_path = os.path.join(logdir, "stdout"), os.path.join(logdir, "stderr")
    start = time.monotonic()
    try:
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", _CHILD, json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                cwd=workdir,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                process.communicate(
                    (nonce + "\n" + program).encode(), timeout=limits.timeout_s + _GRACE_S
                )
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_everything(process, uid)
            timed_out = timed_out or process.returncode == _TIMEOUT_EXIT_CODE
        duration = time.monotonic() - start
        nonce_printed = _ends_with_nonce(stdout_path, nonce)
        out = _read_head(stdout_path, limits.output_bytes)
        err = _read_head(stderr_path, limits.output_bytes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)
    if timed_out:
        status = TIMEOUT
    elif process.returncode == 0 and nonce_printed:
        status = PASSED
    else:
        status = FAILED
    out = out.replace("\n" + nonce + "\n", "")
    return SandboxResult(status, process.returncode, out, err, duration)
