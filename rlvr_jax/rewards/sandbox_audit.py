"""Defence in depth inside the sandboxed interpreter: an audit hook (``sys.addaudithook``).

Standard library only (the sandbox launcher imports it). The hook refuses, by raising
``PermissionError`` from the audited call: writes and file-system changes outside the working
directory, reads of ``/proc/*/environ``, sockets, ``ctypes``, signals and (unless allowed)
process creation. It cannot be removed, but it runs inside the interpreter the program
controls: a program can walk frames into its tables, reuse objects the launcher left loaded,
or make calls that raise no audit event at all. So it is never what the sandbox relies on;
the operating-system layers (``sandbox_confine``, ``sandbox_seccomp``) are. It only turns
the most common attempts into a clear error.
"""

from __future__ import annotations

import os
from collections.abc import Callable

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_FS_CHANGE_EVENTS = {
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
    "os.link", "os.truncate", "os.utime", "os.chdir", "shutil.rmtree", "shutil.move",
}
_ALWAYS_REFUSED_PREFIXES = ("socket.", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill")
_PROCESS_EVENTS = (
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "subprocess.Popen", "pty.spawn", "os.startfile",
)
# Standard-library modules the launcher imports before it drops to another uid when there is
# no private root: that uid may be unable to read the interpreter's files (e.g. under /root).
PRELOADED_MODULES = (
    "array", "base64", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime",
    "decimal", "difflib", "enum", "fractions", "functools", "hashlib", "heapq", "itertools",
    "json", "math", "numbers", "operator", "queue", "random", "re", "statistics", "string",
    "textwrap", "time", "typing", "unicodedata", "zlib",
)


def make_audit_hook(workdir: str, allow_processes: bool) -> Callable[[str, tuple], None]:
    """The hook for a program whose working directory is ``workdir``."""
    workdir = os.path.realpath(workdir)

    def inside(path: object) -> bool:
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
        elif event.startswith(_ALWAYS_REFUSED_PREFIXES) or (
            not allow_processes and event.startswith(_PROCESS_EVENTS)
        ):
            raise PermissionError(f"sandbox: {event} is not allowed")

    return hook
