"""A run's working directory: writable, and used by one run at a time.

Two runs on one workdir would interleave ``metrics.jsonl`` and overwrite each other's
checkpoints, and a checkpoint directory that cannot be written would surface only when the
first background save fails. :func:`check_usable` finds both before anything loads, and
:func:`exclusive` holds the workdir for the length of the run.

The lock is an OS file lock (``fcntl.flock``) on ``<workdir>/.lock.process<i>``, one file per
process of a multi-controller run: the kernel releases it when its process ends however it
ends (SIGKILL, out of memory), so a killed run never blocks the next one, and the processes of
one run never contend with each other while each process of a second run meets the lock of
its counterpart (on a workdir shared over NFS, whose locks ``flock`` takes on Linux, as on a
host-local one). The file holds the holder's pid, host and start time, for the message. On a
file system without locks the run goes on with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator

logger = logging.getLogger(__name__)


class WorkdirInUseError(RuntimeError):
    """Another live run holds the workdir."""


def _lock_path(workdir: str) -> str:
    import jax

    return os.path.join(workdir, f".lock.process{jax.process_index()}")


def _acquire(workdir: str) -> int:
    """An open descriptor of this process's lock file, locked (unless the file system has no
    locks); raises :class:`WorkdirInUseError` when another process holds it."""
    descriptor = os.open(_lock_path(workdir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            logger.warning("cannot lock workdir %s (%s); a second run on it would not be "
                           "detected", workdir, error.strerror)
            return descriptor
        holder = os.pread(descriptor, 512, 0).decode(errors="replace").strip()
        os.close(descriptor)
        raise WorkdirInUseError(
            f"workdir {workdir} is in use by another run ({holder or 'holder unknown'}); two "
            "runs would interleave its logs and checkpoints: wait for that run to end, or "
            "choose another --workdir"
        ) from None
    return descriptor


def _check_writable(directory: str, what: str) -> None:
    """Creates ``directory`` if needed and writes and removes a file in it."""
    probe = os.path.join(directory, f".write_check.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as file:
            file.write("ok")
        os.remove(probe)
    except OSError as error:
        raise PermissionError(
            f"{what} {directory} is not writable ({error.strerror}); the run could save nothing "
            "there: make it writable or choose another --workdir"
        ) from None


def check_usable(workdir: str, checkpoint_dir: str) -> None:
    """Raises before anything loads when ``workdir`` or ``checkpoint_dir`` (created if missing)
    cannot be written (``PermissionError``) or another run holds ``workdir``
    (:class:`WorkdirInUseError`). Every process calls it."""
    _check_writable(workdir, "workdir")
    _check_writable(checkpoint_dir, "checkpoint directory")
    os.close(_acquire(workdir))  # only a look: exclusive() takes the lock for the run


@contextlib.contextmanager
def exclusive(workdir: str) -> Iterator[None]:
    """Holds this process's lock on ``workdir`` for the ``with`` block (see the module
    docstring); raises :class:`WorkdirInUseError` when another run holds it."""
    descriptor = _acquire(workdir)
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = f"pid {os.getpid()} on host {socket.gethostname()}, started {started}"
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, holder.encode(), 0)
        yield
    finally:
        os.close(descriptor)  # closing the last descriptor releases the lock
