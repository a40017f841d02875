"""The sandbox's parts on their own: the seccomp filter's decisions and the wire format."""

import errno
import os
import struct

import pytest

from rlvr_jax.rewards import sandbox_seccomp, sandbox_wire

X86_64, AARCH64 = 0xC000003E, 0xC00000B7
ALLOW, KILL = 0x7FFF0000, 0x80000000
ERRNO = 0x00050000


def run_filter(program, nr, arch, arg0=0):
    """A classic-BPF interpreter for the few instructions the filter uses, on one
    ``struct seccomp_data`` (nr, arch, ip, args[6]; little endian)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    accumulator, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x20:  # ld [k]
            accumulator = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset
            taken = {0x15: accumulator == k, 0x35: accumulator >= k,
                     0x45: bool(accumulator & k)}[code]
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


@pytest.mark.parametrize("machine, arch, numbers", [
    ("x86_64", X86_64, {"read": 0, "write": 1, "ptrace": 101, "unshare": 272, "mount": 165,
                        "keyctl": 250, "io_uring_setup": 425, "clone": 56, "clone3": 435}),
    ("aarch64", AARCH64, {"read": 63, "write": 64, "ptrace": 117, "unshare": 97, "mount": 40,
                          "keyctl": 219, "io_uring_setup": 425, "clone": 220, "clone3": 435}),
])
def test_seccomp_filter_decisions(machine, arch, numbers):
    program = sandbox_seccomp.build_filter(machine)
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in program)
    decide = lambda name, arg0=0: run_filter(program, numbers[name], arch, arg0)  # noqa: E731
    assert decide("read") == decide("write") == ALLOW
    for name in ("ptrace", "unshare", "mount", "keyctl", "io_uring_setup"):
        assert decide(name) == ERRNO | errno.EPERM, name
    assert decide("clone", 0x01200011) == ALLOW  # what fork() asks for
    assert decide("clone", 0x10000000) == ERRNO | errno.EPERM  # CLONE_NEWUSER
    assert decide("clone", 0x40000000) == ERRNO | errno.EPERM  # CLONE_NEWNET
    assert decide("clone3") == ERRNO | errno.ENOSYS
    other_arch = X86_64 if arch == AARCH64 else AARCH64
    assert run_filter(program, numbers["read"], other_arch) == KILL
    if machine == "x86_64":  # the x32 ABI: the same call with bit 30 set
        assert run_filter(program, 0x40000000 | numbers["read"], arch) == ERRNO | errno.EPERM


VALUES = [None, True, 0, -7, 2**80, -(10**5000), 1.5, -0.0, float("inf"), "text", b"\x00\xff",
          3 - 4j, [1, (2, "x")], {"k": [1, 2], 3: None, (1, 2): b"v"}, {1, 2}, frozenset({"a"}), ()]


@pytest.mark.parametrize("value", VALUES, ids=lambda value: type(value).__name__)
def test_plain_values_cross_unchanged(value):
    read, write = os.pipe()
    sandbox_wire.write_frame(write, sandbox_wire.encode(value))
    back = sandbox_wire.decode(sandbox_wire.read_frame(read))
    assert back == value and type(back) is type(value)
    os.close(read)
    os.close(write)


class Equal(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("value", [Equal(1), [Equal(1)], object(), print, {"a": {1}.__iter__()}])
def test_values_that_are_not_plain_data_are_refused(value):
    with pytest.raises(sandbox_wire.WireError):
        sandbox_wire.encode(value)


@pytest.mark.parametrize("data", [
    {"list": [1], "tuple": [2]},  # two tags
    {"object": []},  # an unknown tag
    {"set": [{"list": []}]},  # an unhashable member
    {"dict": [[1]]},  # a malformed pair
    {"bytes": "zz"},
    {"complex": ["1", 2]},
    {"int": "0x"},
    [1, 2],  # an untagged container
    {"list": [{"list": [{"list": []}]}]},  # deeper than allowed below
])
def test_malformed_data_is_refused(data, monkeypatch):
    monkeypatch.setattr(sandbox_wire, "MAX_DEPTH", 1)
    with pytest.raises(sandbox_wire.WireError):
        sandbox_wire.decode(data)


def test_frames_over_the_limit_or_cut_short_are_refused():
    read, write = os.pipe()
    os.write(write, (10**9).to_bytes(4, "big"))
    with pytest.raises(sandbox_wire.WireError, match="bytes"):
        sandbox_wire.read_frame(read)
    os.write(write, (5).to_bytes(4, "big") + b"[1")
    os.close(write)
    with pytest.raises(sandbox_wire.ClosedError):
        sandbox_wire.read_frame(read)
    os.close(read)
