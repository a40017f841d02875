"""A seccomp filter for sandboxed programs: the kernel refuses the system calls they never need.

Standard library only (the sandbox launcher imports it before it confines itself). The filter
is a classic BPF program installed with ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)`` after
``PR_SET_NO_NEW_PRIVS``; it is inherited by every child and can never be removed. It:

* kills a process that makes a system call of another architecture (the x32 ABI on x86-64
  and 32-bit calls would otherwise map to other numbers);
* fails with ``EPERM`` the calls that reach other processes or the kernel's shared state:
  ``ptrace`` and ``process_vm_readv/writev``, keyrings, ``bpf``, ``perf_event_open``,
  ``userfaultfd``, every mount and namespace call, modules, ``kexec``, ``reboot``, clock
  setting, ``io_uring`` (whose operations bypass this filter), and friends;
* fails ``clone`` when its flags ask for a new namespace, and ``clone3`` (whose flags it
  cannot read) with ``ENOSYS``, so the C library falls back to plain ``clone``.

Only x86-64 and AArch64 have tables here; elsewhere :func:`install` reports the layer absent.
"""

from __future__ import annotations

import ctypes
import errno
import platform

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_NR_OFFSET, _ARCH_OFFSET, _ARG0_OFFSET = 0, 4, 16  # in struct seccomp_data (little endian)
_X32_BIT = 0x40000000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NAMESPACE_FLAGS = 0x7E020000

# name -> (x86-64 number, AArch64 number or None)
_DENIED = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "pidfd_getfd": (438, 438), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "mount": (165, 40),
    "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51), "unshare": (272, 97),
    "setns": (308, 268), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89),
    "quotactl": (179, 60), "settimeofday": (164, 170), "clock_settime": (227, 112),
    "adjtimex": (159, 171), "syslog": (103, 116), "lookup_dcookie": (212, 18),
    "vhangup": (153, 58), "nfsservctl": (180, 42), "fanotify_init": (300, 262),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "iopl": (172, None), "ioperm": (173, None),
    "uselib": (134, None), "ustat": (136, None), "sysfs": (139, None), "_sysctl": (156, None),
}
_CLONE = (56, 220)
_CLONE3 = (435, 435)
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # machine -> (column, AUDIT_ARCH)


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def build_filter(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter's instructions ``(code, jt, jf, k)`` for ``machine`` (``platform.machine()``).

    Raises KeyError for a machine without a system-call table here.
    """
    column, audit_arch = _ARCHES[machine]
    denied = sorted({numbers[column] for numbers in _DENIED.values()} - {None})
    # (code, k, where to go if true, if false); None goes on to the next instruction
    body = [
        (_LD_W_ABS, _ARCH_OFFSET, None, None),
        (_JEQ, audit_arch, None, "kill"),
        (_LD_W_ABS, _NR_OFFSET, None, None),
        *([(_JGE, _X32_BIT, "eperm", None)] if machine == "x86_64" else []),
        *[(_JEQ, number, "eperm", None) for number in denied],
        (_JEQ, _CLONE3[column], "enosys", None),
        (_JEQ, _CLONE[column], None, "allow"),
        (_LD_W_ABS, _ARG0_OFFSET, None, None),
        (_JSET, _CLONE_NAMESPACE_FLAGS, "eperm", "allow"),
    ]
    returns = {"allow": _RET_ALLOW, "eperm": _RET_ERRNO | errno.EPERM,
               "enosys": _RET_ERRNO | errno.ENOSYS, "kill": _RET_KILL_PROCESS}
    position = {name: len(body) + index for index, name in enumerate(returns)}

    def offset(target: str | None, at: int) -> int:  # counted from the next instruction
        return 0 if target is None else position[target] - at - 1

    return [(code, offset(yes, at), offset(no, at), k) for at, (code, k, yes, no)
            in enumerate(body)] + [(_RET, 0, 0, value) for value in returns.values()]


def install() -> bool:
    """Sets no-new-privileges and installs the filter on this thread (inherited by children).

    Returns False when this machine has no table or the kernel refuses the filter.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        return False
    try:
        instructions = build_filter(platform.machine())
    except KeyError:
        return False
    array = (_Instruction * len(instructions))(*[_Instruction(*i) for i in instructions])
    program = _Program(len(instructions), array)
    pointer = ctypes.cast(ctypes.pointer(program), ctypes.c_void_p)
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, pointer, 0, 0) == 0
