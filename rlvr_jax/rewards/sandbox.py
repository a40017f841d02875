"""Sandboxed execution of untrusted Python: model-written programs, and verdicts they cannot forge.

Threat model. The program is written by a policy trained to maximise the reward, so it is an
adversary that knows this code: it may try to escape (read the trainer's environment, home or
files, reach the network, signal or trace the trainer, change files, leave processes or files
behind, exhaust the host) and to forge a pass (exit before the tests, print whatever a pass
looks like, patch the tests or the built-ins they use, return objects that compare equal to
anything, read the expected values). It runs in the same interpreter build as the launcher and
can read and write all memory of its own process, so nothing inside that process is trusted:
neither an audit hook, nor a secret token, nor the test code.

Hence two rules:

1. **Isolation comes from the kernel.** Each run is a fresh ``python -I -S`` launcher
   (``sandbox_child.py``: three processes, see there) whose program process is confined by
   ``sandbox_confine`` and ``sandbox_seccomp``: its own user (an unprivileged uid per
   concurrent run as root, else a user namespace without capabilities), network, PID, IPC
   and mount namespaces, a private root on a size-limited tmpfs with read-only system
   directories (so the standard library is readable whoever runs the trainer, and nothing
   of the caller's is), a seccomp filter, resource limits and a parent-death signal chain
   that kills every process of the run with it. The audit hook (``sandbox_audit``) is only
   defence in depth. :func:`isolation` reports the layers this host gives; when a layer is
   missing, :func:`warn_if_unconfined` logs a warning and :func:`isolation_metrics` carries
   it into the run's metrics, never a silent fallback.
2. **The verdict is made outside.** :func:`run_tests` loads the program in the sandbox and
   runs the tests in the launcher's judge process, which never executes model code: each
   call of the function under test crosses a pipe as plain data (``sandbox_wire``), and the
   judge rebuilds the result from built-in types before the tests compare it. The tests are
   sent to the judge only after the sandbox was forked, so they are not in the program's
   memory. Exiting early, printing, patching, always-equal objects and hanging all fail.
   :func:`run_python` runs a whole program and reports its exit status: the program's own
   word, for running code, never for judging it.

Outside this model: the kernel itself (seccomp narrows what the program can ask of it), the
problem's own tests and helpers (trusted data, run in the judge with the caller's
privileges), and hosts that give no namespaces, where the program keeps what its uid can
reach (the warning says so; the verdict still cannot be forged: the judge is another,
non-dumpable process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

# Standard library only, so the module also runs under a bare interpreter (e.g. as another user).

UID_BASE = 61000
MAX_SLOTS = 64  # concurrent sandboxed runs per calling process
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
PASSED, FAILED, TIMEOUT = "passed", "failed", "timeout"
ERROR = "error"  # the sandbox itself failed (not the program): counted as a verifier crash
_GRACE_S = 5.0  # extra wall time before this process kills the launcher itself
LAYERS = ("sandbox_uid", "user_namespace", "network_namespace", "pid_namespace",
          "ipc_namespace", "mount_namespace", "disk_quota", "private_proc", "no_capabilities",
          "seccomp", "resource_limits", "parent_death_signal", "audit_hook")
# The layers without which the program can reach the caller: (any of) alternatives per row.
ESSENTIAL_LAYERS = (("sandbox_uid", "user_namespace"), ("network_namespace",),
                    ("pid_namespace",), ("mount_namespace",), ("seccomp",))
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run.

    Attributes:
      timeout_s: wall-clock limit of the whole run (loading and every test call).
      cpu_s: CPU-time limit (``RLIMIT_CPU``); defaults to ``ceil(timeout_s)``.
      memory_bytes: address-space limit (``RLIMIT_AS``).
      file_size_bytes: largest file the program may write (``RLIMIT_FSIZE``).
      disk_bytes: size of the program's private tmpfs (all it writes, in total).
      max_processes: processes the program may add (``RLIMIT_NPROC`` allowance).
      max_open_files: ``RLIMIT_NOFILE``.
      output_bytes: how much of stdout and stderr is kept.
      allow_processes: let the program create processes (still bounded by max_processes).
    """

    timeout_s: float = 5.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20
    max_processes: int = 8
    max_open_files: int = 64
    output_bytes: int = 64 << 10
    allow_processes: bool = False


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """``status`` is ``"passed"``, ``"failed"``, ``"timeout"`` or ``"error"`` (the sandbox could
    not run the program); ``layers`` the isolation layers the run had; ``error`` why it did not
    pass (a test's assertion, a crash, the sandbox's failure)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    layers: tuple[str, ...] = ()
    error: str = ""

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


def _frame(message: dict) -> bytes:
    """``message`` as the launcher reads it (a ``sandbox_wire`` frame)."""
    payload = json.dumps(message).encode()
    return len(payload).to_bytes(4, "big") + payload


def _run(job: dict, tests: dict | None, limits: SandboxLimits) -> SandboxResult:
    with _acquire_slot() as slot:
        uid = sandbox_uid(slot) if os.geteuid() == 0 else None
        stage = tempfile.mkdtemp(prefix="rlvr_sandbox_")
        if uid is not None:
            os.chown(stage, uid, uid)
        job = {
            **job, **dataclasses.asdict(limits), "sandbox_uid": uid, "stage": stage,
            "parent_pid": os.getpid(),
            "cpu_s": limits.cpu_s or max(1, int(limits.timeout_s + 0.999)),
        }
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", _CHILD], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True, close_fds=True,
            )
            try:
                payload = _frame(job) + (_frame(tests) if tests is not None else b"")
                out, err = process.communicate(payload, timeout=limits.timeout_s + _GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_everything(process, uid)
                return SandboxResult(TIMEOUT, None, "", "", time.monotonic() - start,
                                     error="the launcher ran past its deadline")
            _kill_everything(process, uid)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    duration = time.monotonic() - start
    try:
        verdict = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return SandboxResult(ERROR, process.returncode, "", "", duration,
                             error="the launcher failed: " + err.decode(errors="replace")[-2000:])
    return SandboxResult(verdict["status"], verdict["returncode"], verdict["stdout"],
                         verdict["stderr"], duration, tuple(verdict["layers"]), verdict["error"])


def run_python(program: str, limits: SandboxLimits | None = None, *,
               audit_hook: bool = True) -> SandboxResult:
    """Run ``program`` as ``__main__`` in the sandbox; passed iff it exits with status 0.

    The exit status is the program's own word (see the module docstring): judge untrusted
    code with :func:`run_tests`. ``audit_hook=False`` leaves out the defence-in-depth hook, to
    test the operating-system layers alone. Thread-safe.
    """
    job = {"mode": "program", "program": program, "entry_point": None, "audit_hook": audit_hook}
    return _run(job, None, limits or SandboxLimits())


def run_tests(program: str, entry_point: str, test: str, *, setup: str = "",
              limits: SandboxLimits | None = None, audit_hook: bool = True) -> SandboxResult:
    """Judge the function ``entry_point`` that ``program`` defines, from outside the sandbox.

    The program runs in the sandbox; the judge process runs ``setup`` (trusted code the tests
    need, e.g. a problem's helper functions) and ``test``, which must define
    ``check(candidate)``, then calls ``check`` with a stand-in that calls the sandboxed
    function with plain-data arguments and returns its plain-data result. Passed iff ``check``
    returns without raising and the program stayed alive; ``timeout`` past
    ``limits.timeout_s``. Thread-safe.
    """
    job = {"mode": "calls", "program": program, "entry_point": entry_point,
           "audit_hook": audit_hook}
    return _run(job, {"setup": setup, "test": test}, limits or SandboxLimits())


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str, ...]:
    return run_python("pass", SandboxLimits(timeout_s=30.0)).layers


def isolation() -> dict[str, bool]:
    """Which layers (``LAYERS``) a sandboxed run gets on this host, as this user (probed once
    per process by running an empty program)."""
    active = _probe()
    return {layer: layer in active for layer in LAYERS}


def missing_isolation() -> list[str]:
    """The essential operating-system layers this host does not give (``[]``: fully confined)."""
    active = _probe()
    return [" or ".join(options) for options in ESSENTIAL_LAYERS
            if not any(layer in active for layer in options)]


def isolation_metrics() -> dict[str, float]:
    """``sandbox_confined`` (1.0 iff no essential layer is missing) and
    ``sandbox_layers_missing`` (how many are), for a run's metrics."""
    missing = missing_isolation()
    return {"sandbox_confined": float(not missing), "sandbox_layers_missing": float(len(missing))}


@functools.lru_cache(maxsize=1)
def warn_if_unconfined() -> None:
    """Log a warning (once per process) naming the essential layers this host lacks."""
    missing = missing_isolation()
    if missing:
        _log.warning(
            "CODE SANDBOX NOT CONFINED: this host gives no %s to sandboxed programs (active: %s). "
            "Model-written code may then reach this user's files, processes or network. Give "
            "the trainer namespaces: as root, CAP_SYS_ADMIN (a container may withhold it); "
            "as another user, unprivileged user namespaces (sysctls "
            "kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, "
            "kernel.apparmor_restrict_unprivileged_userns=0).",
            ", ".join(missing), ", ".join(_probe()) or "none")
