"""Operating-system confinement of a sandboxed program: namespaces, a private root, no privileges.

Standard library only (the sandbox launcher imports it before it confines itself). The
launcher's first child calls :func:`unshare_namespaces`; the grandchild it then forks is
process 1 of the new PID namespace and calls :func:`build_private_root`, then
:func:`drop_privileges`. Each returns the names of the layers it put in place, so the run
reports exactly what held:

* ``user_namespace`` (callers other than root): a user namespace in which the program is
  ``INNER_ID`` with no capabilities, mapped to the caller's uid outside;
  ``sandbox_uid`` (root): the program runs as an unprivileged uid of its own instead;
* ``network_namespace``: only a down loopback, so no socket reaches anything;
* ``pid_namespace``: the program sees only its own processes, cannot name (signal, trace)
  any other, and when it (process 1) ends the kernel kills every process it left;
* ``ipc_namespace``: no System V IPC or POSIX message queue shared with the host;
* ``mount_namespace``: a new root on a size-limited tmpfs (``disk_quota``) holding read-only
  binds of the system directories and the interpreter's prefix, a few ``/dev`` nodes and a
  ``/proc`` of the new PID namespace (``private_proc``): no home, no ``/tmp`` or ``/dev/shm``
  of the host, no other file the caller can read; everything written is gone with the run;
* ``no_capabilities``: every capability and the bounding set dropped.

Any step the kernel refuses is skipped and left out of the report, never silently assumed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import resource
import socket
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME = 1 << 21
_ST_RELATIME = 4096  # statvfs's flag for relatime (the other ST_* equal their MS_*)
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
_CAPABILITY_VERSION_3 = 0x20080522
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
INNER_ID = 1000  # the program's uid and gid inside a user namespace
WORKDIR = "/work"  # the program's working directory inside the private root
_DEVICES = ("null", "zero", "full", "random", "urandom")
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
                 "/etc/ld.so.cache", "/etc/localtime")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def prctl(option: int, value: int = 0) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def _mount(source: str | None, target: str, kind: str | None, flags: int, data: str = "") -> None:
    encode = lambda text: None if text is None else os.fsencode(text)  # noqa: E731
    _check(_libc.mount(encode(source), encode(target), encode(kind), flags, encode(data)),
           f"mount {source} on {target}")


def unshare_namespaces(as_root: bool) -> list[str]:
    """New namespaces for this (single-threaded) process and the children it forks next.

    Root creates the mount, network, PID, IPC and UTS namespaces directly; any other caller
    first needs a user namespace (unprivileged user namespaces), in which this process is
    ``INNER_ID`` with full capabilities there until :func:`drop_privileges`. Returns the
    layers created (``[]`` when the kernel allows none).
    """
    others = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if as_root:
        if _libc.unshare(others) != 0:
            return []
        return ["network_namespace", "pid_namespace", "ipc_namespace"]
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(CLONE_NEWUSER | others) != 0:
        return []
    for name, text in [("setgroups", "deny"), ("uid_map", f"{INNER_ID} {uid} 1"),
                       ("gid_map", f"{INNER_ID} {gid} 1")]:
        with open(f"/proc/self/{name}", "w") as file:
            file.write(text)
    return ["user_namespace", "network_namespace", "pid_namespace", "ipc_namespace"]


def _bind_readonly(source: str, target: str) -> None:
    """Bind ``source`` on ``target`` read-only, keeping the flags the kernel locks."""
    _mount(source, target, None, MS_BIND)
    flags = os.statvfs(source).f_flag
    kept = flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    kept |= MS_RELATIME if flags & _ST_RELATIME else 0
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept)


def _place(source: str, root: str, bound: list[str]) -> None:
    """Make ``source`` visible at the same path under ``root`` (read-only)."""
    if not os.path.lexists(source) or any(source.startswith(b + "/") for b in bound):
        return
    target = root + source
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.islink(source) and os.path.dirname(source) == "/":
        os.symlink(os.readlink(source), target)  # /bin -> usr/bin on merged-/usr systems
        return
    if os.path.isdir(source):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        open(target, "w").close()
    _bind_readonly(source, target)
    bound.append(source)


def readonly_paths() -> list[str]:
    """What the program sees of the host: system directories and the interpreter's prefix."""
    paths = list(_SYSTEM_PATHS)
    for prefix in (sys.base_prefix, os.path.realpath(sys.base_prefix)):
        if prefix not in paths:
            paths.append(prefix)
    return paths


def build_private_root(stage: str, disk_bytes: int, owner: int | None) -> list[str]:
    """In process 1 of the new namespaces: mount a tmpfs of ``disk_bytes`` on the empty dir
    ``stage``, fill it (read-only system paths, ``/dev`` nodes, ``/proc``, a writable
    ``WORKDIR`` and ``/tmp`` owned by ``owner``), make it the root and enter ``WORKDIR``."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    inodes = max(1024, disk_bytes // 16384)
    _mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={disk_bytes},nr_inodes={inodes},mode=755")
    bound: list[str] = []
    for path in readonly_paths():
        _place(path, stage, bound)
    layers = ["mount_namespace", "disk_quota"]
    os.makedirs(stage + "/dev", mode=0o755)
    for device in _DEVICES:
        open(f"{stage}/dev/{device}", "w").close()
        _mount(f"/dev/{device}", f"{stage}/dev/{device}", None, MS_BIND)
    os.symlink("/proc/self/fd", stage + "/dev/fd")
    for directory in (WORKDIR, "/tmp", "/dev/shm"):
        os.makedirs(stage + directory, mode=0o755)
        if owner is not None:
            os.chown(stage + directory, owner, owner)
        os.chmod(stage + directory, 0o700 if directory == WORKDIR else 0o1777)
    os.makedirs(stage + "/proc", mode=0o555)
    with contextlib.suppress(OSError):  # a kernel that hides parts of /proc may refuse it
        _mount("proc", stage + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        layers.append("private_proc")
    with contextlib.suppress(OSError):
        socket.sethostname("sandbox")
    os.chdir(stage)
    _check(_libc.syscall(_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir(WORKDIR)
    return layers


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """Empty the bounding set, then the effective, permitted and inheritable sets."""
    for capability in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data), "capset")


def drop_privileges(sandbox_uid: int | None, in_user_namespace: bool) -> list[str]:
    """Become unprivileged: as root, the uid ``sandbox_uid`` with no groups; in a user
    namespace, no capabilities. Then ``PR_SET_PDEATHSIG`` (cleared by uid changes, so set
    last): this process is killed when the one that forked it dies."""
    layers = []
    if sandbox_uid is not None:
        os.setgroups([])
        os.setresgid(sandbox_uid, sandbox_uid, sandbox_uid)
        os.setresuid(sandbox_uid, sandbox_uid, sandbox_uid)  # clears every capability
        layers += ["sandbox_uid", "no_capabilities"]
    elif in_user_namespace:
        _drop_capabilities()
        layers.append("no_capabilities")
    prctl(PR_SET_PDEATHSIG, 9)
    return layers


def tasks_of_uid(uid: int) -> int:
    """Threads (what ``RLIMIT_NPROC`` counts) of the processes whose real uid is ``uid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/status") as status:
                    fields = dict(line.split(":", 1) for line in status if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    total += int(fields["Threads"])
    return total


def process_limit(allowance: int, sandbox_uid: int | None, in_user_namespace: bool,
                  caller_tasks: int) -> int:
    """The ``RLIMIT_NPROC`` that lets the program start ``allowance`` more processes.

    The kernel counts every task of the program's real uid: the sandbox uid's own (this
    process) as root; in a user namespace on Linux >= 5.14 only that namespace's (this
    process and its parent); otherwise all of the caller's, ``caller_tasks`` (counted with
    :func:`tasks_of_uid` before the namespaces were made).
    """
    if sandbox_uid is not None:
        return allowance + 1
    version = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if in_user_namespace and version and tuple(map(int, version.groups())) >= (5, 14):
        return allowance + 2
    return allowance + caller_tasks


def apply_limits(cpu_s: int, memory_bytes: int, file_size_bytes: int, processes: int,
                 open_files: int) -> list[str]:
    """Hard resource limits on this process and its children (no core files)."""
    for kind, value in [(resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory_bytes),
                        (resource.RLIMIT_FSIZE, file_size_bytes),
                        (resource.RLIMIT_NPROC, processes),
                        (resource.RLIMIT_NOFILE, open_files), (resource.RLIMIT_CORE, 0)]:
        resource.setrlimit(kind, (value, value))
    return ["resource_limits"]
