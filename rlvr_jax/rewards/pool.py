"""A process pool with a hard per-item timeout, for verifiers that may hang or crash.

``concurrent.futures`` cannot stop one running item, so this pool owns its worker processes:
each item runs in a worker; an item that passes its deadline gets its worker SIGKILLed and
replaced, and a worker that dies (segfault, out of memory) is replaced too. Either way the
item's outcome is recorded as ``"timeout"`` or ``"crash"`` and the batch goes on: a verifier
can never stop training. An exception raised by the scoring function is a ``"crash"`` as well.

Workers are started with ``spawn`` (never ``fork`` from a process that runs JAX threads), run
with an address-space limit (``RLIMIT_AS``) so a pathological input cannot take the host's
memory, and report ready only after importing ``preload`` modules, so start-up time never
counts against an item's deadline.
"""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing
import multiprocessing.connection
import resource
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

OK, TIMEOUT, CRASH = "ok", "timeout", "crash"
_MAX_START_FAILURES = 3  # consecutive deaths before "ready": a broken setup, not bad input


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Result of one item: ``value`` is the function's return value when ``status == "ok"``."""

    status: str
    value: Any = None
    error: str = ""


def _worker_main(
    conn: multiprocessing.connection.Connection,
    memory_limit_bytes: int | None,
    preload: tuple[str, ...],
) -> None:
    """Worker loop: receive ``(fn, args)``, send back ``(status, value, error)``."""
    if memory_limit_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    for module_name in preload:
        importlib.import_module(module_name)
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        fn, args = message
        try:
            conn.send((OK, fn(*args), ""))
        except BaseException as error:  # any failure on a user input is a crash
            conn.send((CRASH, None, f"{type(error).__name__}: {error}"[:500]))


class _Worker:
    def __init__(self, context, memory_limit_bytes: int | None, preload: tuple[str, ...]):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child_conn, memory_limit_bytes, preload), daemon=True
        )
        self.process.start()
        child_conn.close()
        self.ready = False
        self.job: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class TimeoutPool:
    """``num_workers`` processes that run ``fn(*args)`` items with a hard per-item timeout.

    Args:
      num_workers: worker processes (the parallelism of ``map``).
      timeout_s: wall-clock limit per item, measured from dispatch to a ready worker.
      memory_limit_bytes: ``RLIMIT_AS`` of each worker (None: unlimited).
      preload: modules each worker imports before it reports ready.
    """

    def __init__(
        self,
        num_workers: int,
        timeout_s: float,
        memory_limit_bytes: int | None = 4 << 30,
        preload: Sequence[str] = (),
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._memory_limit_bytes = memory_limit_bytes
        self._preload = tuple(preload)
        self._start_failures = 0
        self._workers = [self._new_worker() for _ in range(num_workers)]

    def _new_worker(self) -> _Worker:
        return _Worker(self._context, self._memory_limit_bytes, self._preload)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = self._new_worker()

    def map(self, fn: Callable[..., Any], args_list: Sequence[tuple]) -> list[Outcome]:
        """Run ``fn(*args)`` for every ``args`` in parallel; outcomes in input order.

        ``fn`` must be picklable (a module-level function).
        """
        outcomes: list[Outcome | None] = [None] * len(args_list)
        pending = deque(range(len(args_list)))
        while pending or any(worker.job is not None for worker in self._workers):
            for worker in list(self._workers):
                if worker.ready and worker.job is None and pending:
                    job = pending.popleft()
                    try:
                        worker.conn.send((fn, args_list[job]))
                    except (BrokenPipeError, ConnectionResetError):  # died while idle
                        pending.appendleft(job)
                        self._replace(worker)
                        continue
                    worker.job = job
                    worker.deadline = time.monotonic() + self.timeout_s
            waiting = [w for w in self._workers if not w.ready or w.job is not None]
            deadlines = [w.deadline for w in waiting if w.job is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready_conns = multiprocessing.connection.wait([w.conn for w in waiting], wait_s)
            for worker in list(waiting):
                if worker.conn in ready_conns:
                    self._receive(worker, outcomes)
                elif worker.job is not None and time.monotonic() >= worker.deadline:
                    outcomes[worker.job] = Outcome(TIMEOUT, error=f"over {self.timeout_s} s")
                    self._replace(worker)
        return outcomes  # type: ignore[return-value]

    def _receive(self, worker: _Worker, outcomes: list[Outcome | None]) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=1.0)  # the pipe closes just before the exit is reaped
            if not worker.ready:
                self._start_failures += 1
                if self._start_failures > _MAX_START_FAILURES:
                    code = worker.process.exitcode
                    reason = f"verifier workers keep dying while starting (exit code {code})"
                    raise RuntimeError(reason) from None
            if worker.job is not None:
                code = worker.process.exitcode
                outcomes[worker.job] = Outcome(CRASH, error=f"worker died (exit code {code})")
            self._replace(worker)
            return
        if message == "ready":
            worker.ready = True
            self._start_failures = 0
            return
        status, value, error = message
        outcomes[worker.job] = Outcome(status, value, error)
        worker.job = None

    def close(self) -> None:
        """Stop every worker process."""
        for worker in self._workers:
            worker.kill()
        self._workers = []

    def __enter__(self) -> TimeoutPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
