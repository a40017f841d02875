"""Trusted launcher that confines itself, then runs untrusted Python (stdlib only, no imports
from rlvr_jax: it runs as ``python -I -S sandbox_child.py CONFIG_JSON``).

Reads ``NONCE\\n`` then the program from stdin, then:

1. ``unshare(CLONE_NEWNET)`` when asked (needs root): a new network namespace with only a
   down loopback, so no socket can reach anything;
2. becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``) and forks the program process,
   which, in its own process group, applies the rest of the steps. The launcher waits at most
   ``timeout_s`` (then exits 124), and in every case SIGKILLs and reaps every descendant:
   orphans (including ones that called ``setsid``) are re-parented to it, so nothing
   survives the run and no zombie is left to count against ``RLIMIT_NPROC``.
3. resource limits: CPU seconds, address space, file size, process count, open files, no core;
4. when started as root, drops to the unprivileged ``uid``/``gid`` given (no groups), so
   ``RLIMIT_NPROC`` is enforced and the file system protects everything the user doesn't own;
5. an audit hook (``sys.addaudithook``, cannot be removed) that refuses writes and file-system
   changes outside the working directory, reads of ``/proc/*/environ``, sockets, ``ctypes``,
   signals, and (unless allowed) process creation;
6. runs the program as ``__main__`` in the (empty, temporary) working directory. The
   standard-library modules in ``PRELOADED_MODULES`` are imported by the launcher first,
   since the unprivileged uid may be unable to read the interpreter's files.

Only if the program finishes without an exception or ``SystemExit`` does the launcher print
the nonce as the last stdout line, so a program that exits early (``sys.exit(0)``,
``os._exit(0)``) before its tests ran cannot pass.
"""

import builtins
import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import traceback
from importlib import import_module

CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36
TIMEOUT_EXIT_CODE = 124
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# Imported by the launcher before it drops privileges: the unprivileged program may not be able
# to read the interpreter's standard library (e.g. under /root), so common modules come loaded.
PRELOADED_MODULES = (
    "array",
    "bisect",
    "cmath",
    "collections",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "random",
    "re",
    "socket",
    "statistics",
    "string",
    "textwrap",
    "time",
    "typing",
    "unicodedata",
)
_FS_CHANGE_EVENTS = {
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.utime",
    "os.chdir",
    "shutil.rmtree",
    "shutil.move",
}
_ALWAYS_BLOCKED_PREFIXES = ("socket.", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill")
_PROCESS_EVENTS = (
    "os.fork",
    "os.forkpty",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "subprocess.Popen",
    "pty.spawn",
    "os.startfile",
)


def _apply_limits(config: dict) -> None:
    limits = {
        resource.RLIMIT_CPU: config["cpu_s"],
        resource.RLIMIT_AS: config["memory_bytes"],
        resource.RLIMIT_FSIZE: config["file_size_bytes"],
        resource.RLIMIT_NPROC: config["max_processes"],
        resource.RLIMIT_NOFILE: config["max_open_files"],
        resource.RLIMIT_CORE: 0,
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, (value, value))


def _make_audit_hook(workdir: str, allow_processes: bool):
    workdir = os.path.realpath(workdir)

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        path = os.fsdecode(path)
        return os.path.realpath(os.path.join(workdir, path)).startswith(workdir + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(path, (str, bytes)):
                real = os.path.realpath(os.path.join(workdir, os.fsdecode(path)))
                if real.startswith("/proc/") and real.endswith("/environ"):
                    raise PermissionError(f"sandbox: reading {real} is not allowed")
            writing = (mode and any(c in str(mode) for c in "wax+")) or (flags & _WRITE_FLAGS)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working dir")
        elif event in _FS_CHANGE_EVENTS:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    raise PermissionError(f"sandbox: {event} on {arg!r} is not allowed")
        elif event.startswith(_ALWAYS_BLOCKED_PREFIXES) or (
            not allow_processes and event.startswith(_PROCESS_EVENTS)
        ):
            raise PermissionError(f"sandbox: {event} is not allowed")

    return hook


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


def _run_program(config: dict, program: str, nonce: str) -> None:
    """In the forked child: confine this process, run the program, print the nonce."""
    os.setpgid(0, 0)
    _apply_limits(config)
    os.chdir(config["workdir"])
    if config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    code = compile(program, "<solution>", "exec")
    sys.addaudithook(_make_audit_hook(config["workdir"], config["allow_processes"]))
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, namespace)
        sys.stdout.flush()
    except BaseException:  # SystemExit included: the tests did not run to the end
        traceback.print_exc(limit=5)
        sys.stderr.flush()
        os._exit(1)
    os.write(1, ("\n" + nonce + "\n").encode())
    os._exit(0)


class _WallTimeoutError(Exception):
    pass


def _on_alarm(signum, frame) -> None:
    raise _WallTimeoutError


def main() -> None:
    config = json.loads(sys.argv[1])
    nonce = sys.stdin.readline().strip()
    program = sys.stdin.read()
    stdin_null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin_null, 0)
    if config["unshare_network"]:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            sys.stderr.write(f"sandbox: unshare(CLONE_NEWNET): errno {ctypes.get_errno()}\n")
            os._exit(3)
    for module_name in PRELOADED_MODULES:
        import_module(module_name)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = os.fork()
    if child == 0:
        _run_program(config, program, nonce)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, config["timeout_s"])
    try:
        _, status = os.waitpid(child, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        exit_code = os.waitstatus_to_exitcode(status)
    except _WallTimeoutError:
        exit_code = TIMEOUT_EXIT_CODE
    _kill_and_reap_descendants()
    os._exit(exit_code if exit_code >= 0 else 128 - exit_code)


if __name__ == "__main__":
    main()
