"""The sandbox launcher and judge: ``python -I -S sandbox_child.py`` (standard library only).

Three processes, so that the one that decides never runs untrusted code:

* the **judge** (this script's process): reads the job from stdin, forks the sandbox, and in
  ``calls`` mode runs the problem's tests itself, calling the program's function across a
  pipe; it writes the verdict as one JSON line to its stdout, which no other process holds;
* the **keeper** (its child): enters new namespaces (``sandbox_confine.unshare_namespaces``),
  forks the program process and passes on its exit status;
* the **program process** (process 1 of the new PID namespace): builds its private root,
  drops every privilege, installs the seccomp filter, resource limits and the audit hook,
  reports the layers it got on the status pipe, and only then runs the untrusted program.

Every process gets ``PR_SET_PDEATHSIG(SIGKILL)``: if the trainer thread that started the
judge dies, the judge, the keeper and the program process die in a chain, and the kernel
kills everything left in the PID namespace with its process 1. The judge is also a child
subreaper that kills and reaps every descendant at the end (the backstop without a PID
namespace), and is not dumpable, so a program left with the caller's uid cannot trace it.

The judge reads the tests from stdin only after it forked the sandbox (with exact-length
``os.read``, no read-ahead), so they are never in the program process's memory: the program
cannot read the expected values. Input: two frames (``sandbox_wire``), the job, then in
``calls`` mode the tests ``{"setup", "test"}``.
"""

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
import traceback
from importlib import import_module

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_audit
import sandbox_confine
import sandbox_seccomp
import sandbox_wire

del sys.path[0]  # the program must not import this directory's other modules

PR_SET_CHILD_SUBREAPER = 36
TIMEOUT_EXIT_CODE = 124
_CALL_FD, _STATUS_FD = 3, 4  # the program process's ends of the two pipes


class CandidateError(Exception):
    """The sandboxed function raised; its message names the exception."""


class CandidateGoneError(BaseException):
    """The sandboxed program exited or broke the channel (``except Exception`` in a test
    cannot catch it, nor the timeouts below)."""


class CandidateTimeoutError(BaseException):
    """A call of the sandboxed function did not return before the run's deadline."""


class _WallTimeoutError(BaseException):
    pass


def _on_alarm(signum, frame) -> None:
    raise _WallTimeoutError


def _run_program(job: dict, layers: list[str], caller_tasks: int, fds: dict) -> None:
    """In the program process: finish confinement, report layers, run the untrusted code."""
    sandbox_uid, in_user_namespace = job["sandbox_uid"], "user_namespace" in layers
    os.chdir(job["stage"])
    if "pid_namespace" in layers:
        try:
            owner = sandbox_uid if sandbox_uid is not None else None
            layers += sandbox_confine.build_private_root(job["stage"], job["disk_bytes"], owner)
        except OSError as error:
            os.write(fds["stderr"], f"sandbox: no private root: {error}\n".encode())
    private_root = "mount_namespace" in layers
    if sandbox_uid is not None and not private_root:
        for name in sandbox_audit.PRELOADED_MODULES:
            import_module(name)
    nproc = sandbox_confine.process_limit(job["max_processes"], sandbox_uid, in_user_namespace,
                                          caller_tasks)
    layers += sandbox_confine.drop_privileges(sandbox_uid, in_user_namespace)
    layers += ["seccomp"] if sandbox_seccomp.install() else []
    layers += sandbox_confine.apply_limits(job["cpu_s"], job["memory_bytes"],
                                           job["file_size_bytes"], nproc, job["max_open_files"])
    workdir = sandbox_confine.WORKDIR if private_root else job["stage"]
    os.environ.clear()
    os.environ.update(PATH="/usr/bin:/bin", HOME=workdir, LANG="C.UTF-8")
    high = [fcntl.fcntl(fds[name], fcntl.F_DUPFD, _STATUS_FD + 1)
            for name in ("stdout", "stderr", "call_r", "status_w")]
    for target, fd in enumerate(high, start=1):  # 1, 2, _CALL_FD, _STATUS_FD
        os.dup2(fd, target)
    os.closerange(_STATUS_FD + 1, 1 << 16)
    if job["audit_hook"]:
        sys.addaudithook(sandbox_audit.make_audit_hook(workdir, job["allow_processes"]))
        layers.append("audit_hook")
    sandbox_wire.write_frame(_STATUS_FD, {"layers": layers})
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(job["program"], "<solution>", "exec"), namespace)
        sys.stdout.flush()
    except SystemExit as stop:
        sys.stdout.flush()
        os._exit(0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1)
    except BaseException:
        traceback.print_exc(limit=5)
        sys.stderr.flush()
        os._exit(1)
    if job["mode"] == "calls":
        _serve_calls(namespace.get(job["entry_point"]))
    os._exit(0)


def _serve_calls(function) -> None:
    """Answer the judge's calls of ``function`` until it closes the channel."""
    if not callable(function):
        sandbox_wire.write_frame(_STATUS_FD, {"loaded": False, "error": "entry point not defined"})
        os._exit(1)
    sandbox_wire.write_frame(_STATUS_FD, {"loaded": True})
    while True:
        try:
            request = sandbox_wire.read_frame(_CALL_FD)
        except sandbox_wire.ClosedError:
            os._exit(0)
        try:
            args = sandbox_wire.decode(request["args"])
            kwargs = sandbox_wire.decode(request["kwargs"])
            reply = {"value": sandbox_wire.encode(function(*args, **kwargs))}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"[:1000]}
        sys.stdout.flush()
        sandbox_wire.write_frame(_STATUS_FD, reply)


def _keeper(job: dict, fds: dict, judge_pid: int) -> None:
    """In the keeper: new namespaces, then fork the program process and wait for it."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    as_root = job["sandbox_uid"] is not None
    caller_tasks = 0 if as_root else sandbox_confine.tasks_of_uid(os.getuid())
    sandbox_confine.prctl(sandbox_confine.PR_SET_DUMPABLE, 1)  # to write its own id maps
    layers = sandbox_confine.unshare_namespaces(as_root)
    sandbox_confine.prctl(sandbox_confine.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != judge_pid:
        os._exit(1)
    child = os.fork()
    if child == 0:
        try:
            _run_program(job, ["parent_death_signal", *layers], caller_tasks, fds)
        except BaseException:
            os.write(fds["stderr"], traceback.format_exc().encode())
            os._exit(3)
    for fd in fds.values():
        os.close(fd)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


class _Candidate:
    """The judge's stand-in for the sandboxed function: each call crosses the pipes."""

    def __init__(self, call_w: int, status_r: int, deadline: float):
        self._call_w, self._status_r, self._deadline = call_w, status_r, deadline
        self.gone = self.timed_out = False

    def __call__(self, *args, **kwargs):
        if self.timed_out:
            raise CandidateTimeoutError
        if self.gone:
            raise CandidateGoneError
        try:
            message = {"args": sandbox_wire.encode(list(args)),
                       "kwargs": sandbox_wire.encode(dict(kwargs))}
            sandbox_wire.write_frame(self._call_w, message)
            reply = sandbox_wire.read_frame(self._status_r, self._deadline)
            if type(reply) is not dict or not ({"value"} <= reply.keys() or "error" in reply):
                raise sandbox_wire.WireError("malformed reply")
            if "error" in reply:
                raise CandidateError(str(reply["error"]))
            return sandbox_wire.decode(reply["value"])
        except TimeoutError:
            self.timed_out = True  # a late reply would answer the wrong call: no more calls
            raise CandidateTimeoutError from None
        except (sandbox_wire.ClosedError, sandbox_wire.WireError):
            self.gone = True
            raise CandidateGoneError from None


def _judge_calls(tests: dict, entry_point: str, call_w: int, status_r: int,
                 deadline: float) -> tuple[str, str]:
    """Run the tests here, against the sandboxed function: ``(status, error)``."""
    loaded = sandbox_wire.read_frame(status_r, deadline)
    if type(loaded) is not dict or loaded.get("loaded") is not True:
        return "failed", "the program did not load"
    candidate = _Candidate(call_w, status_r, deadline)
    namespace = {"__name__": "__rlvr_tests__"}  # its prints go to this process's /dev/null
    try:
        exec(compile(tests["setup"], "<problem>", "exec"), namespace)
        namespace[entry_point] = candidate  # as in-process: the name is the solution
        exec(compile(tests["test"], "<tests>", "exec"), namespace)
        namespace["check"](candidate)
    except (_WallTimeoutError, CandidateGoneError, CandidateTimeoutError):
        raise
    except BaseException as error:  # a failed assertion, or the function raised
        return "failed", f"{type(error).__name__}: {error}"[:1000]
    if candidate.timed_out:  # the tests swallowed the timeout
        raise CandidateTimeoutError
    return ("failed", "the program exited") if candidate.gone else ("passed", "")


def _read_head(fd: int, limit: int) -> str:
    return os.pread(fd, limit, 0).decode("utf-8", errors="replace")


def main() -> None:
    verdict_fd = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    job = sandbox_wire.read_frame(0, max_bytes=1 << 30)
    sandbox_confine.prctl(sandbox_confine.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != job["parent_pid"]:
        os._exit(1)
    sandbox_confine.prctl(sandbox_confine.PR_SET_DUMPABLE, 0)
    sandbox_confine.prctl(PR_SET_CHILD_SUBREAPER, 1)
    fds = {"stdout": os.memfd_create("stdout"), "stderr": os.memfd_create("stderr")}
    fds["call_r"], call_w = os.pipe()
    status_r, fds["status_w"] = os.pipe()
    judge_pid = os.getpid()
    keeper = os.fork()
    if keeper == 0:
        os.close(call_w)
        os.close(status_r)
        _keeper(job, fds, judge_pid)
    os.close(fds.pop("call_r"))
    os.close(fds.pop("status_w"))
    tests = sandbox_wire.read_frame(0, max_bytes=1 << 30) if job["mode"] == "calls" else None
    signal.signal(signal.SIGALRM, _on_alarm)
    deadline = time.monotonic() + job["timeout_s"]
    signal.setitimer(signal.ITIMER_REAL, job["timeout_s"])
    layers, status, error, code = None, "failed", "", None
    try:
        layers = sandbox_wire.read_frame(status_r, deadline)["layers"]  # before the program ran
        if tests is not None:
            status, error = _judge_calls(tests, job["entry_point"], call_w, status_r, deadline)
        else:
            code = os.waitstatus_to_exitcode(os.waitpid(keeper, 0)[1])
            status = "passed" if code == 0 else "failed"
        signal.setitimer(signal.ITIMER_REAL, 0)
    except (_WallTimeoutError, TimeoutError, CandidateTimeoutError):
        status, error = "timeout", f"ran past {job['timeout_s']} s"
    except (sandbox_wire.ClosedError, sandbox_wire.WireError, CandidateGoneError):
        status, error = "failed", "the program exited or broke the channel"
    if layers is None:  # the sandbox itself failed to start (its traceback is in stderr)
        layers, status, error = [], "error", "the sandbox could not be set up"
    signal.setitimer(signal.ITIMER_REAL, 0)
    with contextlib.suppress(ProcessLookupError):
        os.kill(keeper, signal.SIGKILL)
    _kill_and_reap_descendants()
    if code is None and status in ("passed", "failed"):
        code = 0 if status == "passed" else 1
    verdict = {"status": status, "returncode": code, "layers": layers, "error": error,
               "stdout": _read_head(fds["stdout"], job["output_bytes"]),
               "stderr": _read_head(fds["stderr"], job["output_bytes"])}
    os.write(verdict_fd, (json.dumps(verdict) + "\n").encode())
    os._exit(0)


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def _kill_and_reap_descendants() -> None:
    """SIGKILL every descendant and reap it: as a subreaper, orphans become our children."""
    while True:
        for child in _children_of(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


if __name__ == "__main__":
    main()
