"""A process pool with a hard per-item timeout, for checks that may hang or crash (``pebble``).

Each item ``fn(*args)`` runs in a worker process of a ``pebble.ProcessPool``. An item that
runs past ``timeout_s`` has its worker stopped and replaced, and a worker that dies (segfault,
out of memory, ``os._exit``) is replaced too: the item's outcome is ``Status.TIMEOUT`` or
``Status.CRASH`` and the batch goes on. An exception raised by ``fn`` is a ``CRASH`` as well,
so a check can never stop training.

Workers are started with ``spawn`` (never ``fork`` from a process that runs JAX threads), run
under an address-space limit (``RLIMIT_AS``) so a pathological input cannot take the host's
memory, and import ``preload`` modules before they take an item; pebble starts an item's clock
when a worker takes it, so start-up never counts against a deadline. A stopped worker dies at
once, even inside a long C call (SIGTERM keeps its default action in workers).

Workers never outlive the process that started them: on Linux each asks the kernel for
SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``; strictly, when the parent's thread
that started it ends, so call ``map`` from a thread that lives as long as the pool, or lose
the idle workers, which the pool then replaces), and exits at once if the parent is already
gone. Everywhere, each item also runs under a CPU-time limit (``RLIMIT_CPU``, ``cpu_limit_s``
seconds more than the worker had used; SIGXCPU ends it), so an item cannot keep a core busy
for long once no parent is left to stop it.

The pool starts on the first ``map`` and stops on ``close``; the next ``map`` starts a fresh
one. A pool that breaks (pebble's ``BrokenProcessPool``, e.g. workers that died while idle) is
restarted and its unfinished items run again; workers that keep dying before they take any
item mean a broken setup (a ``preload`` module that fails to import), which raises.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import importlib
import math
import multiprocessing
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pebble

from rlvr_jax.rewards.verification import Status

DEFAULT_NUM_WORKERS = 2
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_LIMIT_BYTES = 4 << 30
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_POOL_STARTS = 3  # pool starts per ``map`` before a pool that keeps breaking is an error


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Result of one item: ``value`` is ``fn``'s return value when ``status`` is ``OK``."""

    status: Status
    value: Any = None
    error: str = ""


def _die_with_parent(parent_pid: int) -> None:
    """Asks Linux to SIGKILL this process when its parent dies; exits if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _start_worker(memory_limit_bytes: int | None, preload: tuple[str, ...],
                  parent_pid: int) -> None:
    """Runs in each new worker before it takes an item."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would dump core
    if memory_limit_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    for module_name in preload:
        importlib.import_module(module_name)


def _run_item(fn: Callable[..., Any], args: tuple, cpu_limit_s: float) -> Any:
    """``fn(*args)`` in a worker, which SIGXCPU ends after ``cpu_limit_s`` more CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(used + cpu_limit_s)
    resource.setrlimit(resource.RLIMIT_CPU,
                       (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    return fn(*args)


class TimeoutPool:
    """``num_workers`` processes that run ``fn(*args)`` items with a hard per-item timeout.

    Args:
      num_workers: worker processes (the parallelism of ``map``).
      timeout_s: wall-clock limit per item, from the moment a worker takes it.
      memory_limit_bytes: ``RLIMIT_AS`` of each worker (None: unlimited).
      preload: modules each worker imports before it takes an item.
      cpu_limit_s: CPU seconds an item may use (None: ``timeout_s`` plus one second, which a
        single-threaded item never reaches before its wall-clock timeout); past it the worker
        dies and the item is a ``CRASH``.
    """

    def __init__(
        self,
        num_workers: int = DEFAULT_NUM_WORKERS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
        preload: Sequence[str] = (),
        cpu_limit_s: float | None = None,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if cpu_limit_s is not None and cpu_limit_s <= 0:
            raise ValueError(f"cpu_limit_s must be > 0, got {cpu_limit_s}")
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.cpu_limit_s = timeout_s + 1.0 if cpu_limit_s is None else cpu_limit_s
        self._initargs = (memory_limit_bytes, tuple(preload))
        self._pool: pebble.ProcessPool | None = None

    @property
    def started(self) -> bool:
        """Whether worker processes exist (from the first ``map`` until ``close``)."""
        return self._pool is not None

    def _running_pool(self) -> pebble.ProcessPool:
        """The pool, started now if it is not running (first use, closed or broken)."""
        if self._pool is not None and not self._pool.active:
            self.close()
        if self._pool is None:
            self._pool = pebble.ProcessPool(
                max_workers=self.num_workers, initializer=_start_worker,
                initargs=(*self._initargs, os.getpid()),
                context=multiprocessing.get_context("spawn"),
            )
        return self._pool

    def map(self, fn: Callable[..., Any], args_list: Sequence[tuple]) -> list[Outcome]:
        """Runs ``fn(*args)`` for every ``args`` in parallel; outcomes in input order.

        ``fn`` must be picklable (a module-level function). Raises RuntimeError only when the
        pool breaks ``_POOL_STARTS`` times in one call (a broken setup, not a bad item).
        """
        if not args_list:
            return []
        outcomes: dict[int, Outcome] = {}
        for _ in range(_POOL_STARTS):
            pool = self._running_pool()
            try:
                futures = {
                    index: pool.schedule(_run_item, (fn, args_list[index], self.cpu_limit_s),
                                         timeout=self.timeout_s)
                    for index in range(len(args_list)) if index not in outcomes
                }
            except RuntimeError:  # pebble found the pool broken (workers died while idle)
                self.close()
                continue
            for index, future in futures.items():
                outcome = self._outcome(future)
                if outcome is not None:
                    outcomes[index] = outcome
            if len(outcomes) == len(args_list):
                return [outcomes[index] for index in range(len(args_list))]
            self.close()  # broken: the unfinished items run again in a fresh pool
        raise RuntimeError(
            f"verifier workers keep dying while starting ({_POOL_STARTS} pools broke; check the "
            f"preload modules {self._initargs[1]} and the memory limit {self._initargs[0]})"
        )

    def _outcome(self, future: concurrent.futures.Future) -> Outcome | None:
        """The outcome of one finished item; None when the pool broke before it finished."""
        try:
            return Outcome(Status.OK, future.result())
        except TimeoutError:
            return Outcome(Status.TIMEOUT, error=f"over {self.timeout_s} s")
        except pebble.ProcessExpired as error:
            return Outcome(Status.CRASH, error=f"worker died (exit code {error.exitcode})")
        except BrokenProcessPool:
            return None
        except (Exception, SystemExit) as error:  # raised by ``fn`` on its input
            return Outcome(Status.CRASH, error=f"{type(error).__name__}: {error}"[:500])

    def close(self) -> None:
        """Stops every worker process; the next ``map`` starts a fresh pool."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> TimeoutPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
