"""Orbax checkpoints: exact resume, one fallback past a broken step, save-and-stop on signals.

A step directory ``<dir>/<step>/`` holds two orbax items: ``state``, the device pytree
(``TrainState``: params, optimizer state, step, PRNG key) saved from sharded ``jax.Array`` and
restored straight into the shardings the caller asks for (any mesh); and ``host``, a JSON
document with what the host needs to continue exactly (the data position, the config).

Orbax's ``CheckpointManager`` owns the policy: it saves when ``step`` is a multiple of
``save_every_steps`` or at a preemption sync point (or when forced), keeps the newest
``keep_last`` steps, writes in the background when ``async_save`` is on, and writes each step
to a temporary directory that it renames when complete (and removes, if left by a crash,
when the next manager opens). ``restore`` takes the newest step; if that one is unreadable
(truncated files, an item missing, never committed, a host state the caller's ``check_host``
refuses) it warns, moves it to ``<dir>/corrupt/<step>.<unix time>`` so the step can be written
again, and restores the one before it. A readable step whose arrays do not fit the requested
state (another model or optimizer) is no corruption: ``restore`` raises
:class:`IncompatibleCheckpointError` naming the arrays that differ and moves nothing.

Preemption (SIGTERM from Cloud TPU or SLURM, or Ctrl-C) goes through :class:`PreemptionGuard`:
the loop asks ``guard.should_stop(step)`` at every step boundary, saves with ``force=True``
when it says so, and exits::

    with Checkpointer(directory, save_every_steps=100) as ckpt, PreemptionGuard(ckpt) as guard:
        for step in range(start + 1, total_steps + 1):
            state = train_step(state, batch)
            stop = guard.should_stop(step)
            ckpt.save(step, state, host_state, force=stop or step == total_steps)
            if stop:
                break
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

logger = logging.getLogger(__name__)

_STATE_ITEM = "state"
_HOST_ITEM = "host"
_HOST_FILE = "metadata"  # the host JSON inside the host item (orbax's default name)
_CORRUPT_SUBDIR = "corrupt"


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint whose arrays do not fit the state the run asks for (another model
    or optimizer); it is left in place."""


def _array_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``"params/layer/kernel" -> shape`` for every array leaf of a state pytree or of orbax's
    metadata tree of one (where a dataclass or named tuple became a dict); PRNG keys count as
    their key data."""

    def name(entry: Any) -> str:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                return str(getattr(entry, attribute))
        return str(entry)

    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # saved as its key data
            leaf = jax.eval_shape(jax.random.key_data, leaf)
        shapes["/".join(name(entry) for entry in path)] = tuple(leaf.shape)
    return shapes


def _shape_mismatches(saved: dict[str, tuple], wanted: dict[str, tuple]) -> list[str]:
    """One line per array that is missing, extra or reshaped in ``saved`` vs ``wanted``."""
    lines = [f"{path}: {saved[path]} in the checkpoint, {wanted[path]} in this run"
             for path in sorted(saved.keys() & wanted.keys()) if saved[path] != wanted[path]]
    lines += [f"{path}: not in the checkpoint" for path in sorted(wanted.keys() - saved.keys())]
    lines += [f"{path}: only in the checkpoint" for path in sorted(saved.keys() - wanted.keys())]
    return lines


class RestoredCheckpoint(NamedTuple):
    """What ``Checkpointer.restore`` returns."""

    step: int
    state: Any
    host_state: dict[str, Any]


class Checkpointer:
    """An orbax ``CheckpointManager`` (``.manager``) for a device pytree plus host JSON.

    Args:
      directory: where the step directories live (created if missing).
      save_every_steps: ``save`` writes the steps that are multiples of this; 0 saves only
        forced steps and preemption sync points.
      keep_last: how many of the newest steps to keep (0 keeps all).
      async_save: write in a background thread; ``close`` (or leaving the ``with`` block)
        waits for it.
    """

    def __init__(self, directory: str | os.PathLike, *, save_every_steps: int = 0,
                 keep_last: int = 0, async_save: bool = True) -> None:
        for name, value in (("save_every_steps", save_every_steps), ("keep_last", keep_last)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"checkpoint.{name} must be a non-negative integer, got {value!r}")
        policies = [checkpoint_managers.PreemptionCheckpointingPolicy()]
        if save_every_steps:
            policies.append(checkpoint_managers.FixedIntervalPolicy(save_every_steps))
        # Not ``save_interval_steps``: orbax's default policy would also save the first step
        # of every fresh run (its InitialSavePolicy), whatever the interval.
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=checkpoint_managers.AnySavePolicy(policies),
            max_to_keep=keep_last or None,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.directory = epath.Path(directory).absolute()
        handlers = {_STATE_ITEM: ocp.StandardCheckpointHandler(),  # given, so that a new
                    _HOST_ITEM: ocp.JsonCheckpointHandler(_HOST_FILE)}  # manager reads metadata
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    def save(self, step: int, state: Any, host_state: dict[str, Any], *,
             force: bool = False) -> bool:
        """Saves ``state`` and ``host_state`` as ``step`` if the policy (or ``force``) says so.

        Every process calls this with the same arguments at every step. Returns whether a
        save started.
        """
        try:
            json.dumps(host_state)
        except TypeError as error:  # in the background thread it would surface much later
            raise TypeError(f"host_state must be JSON-serialisable: {error}") from None
        args = ocp.args.Composite(**{_STATE_ITEM: ocp.args.StandardSave(state),
                                     _HOST_ITEM: ocp.args.JsonSave(host_state)})
        return self.manager.save(step, args=args, force=force)

    def latest_step(self) -> int | None:
        """The newest saved step, or ``None`` when there is none."""
        return self.manager.latest_step()

    def restore(self, abstract_state: Any, shardings: Any,
                check_host: Callable[[dict[str, Any]], None] | None = None) -> RestoredCheckpoint:
        """The newest readable step, placed in ``shardings``.

        Args:
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of the init)
            with the structure of the saved state.
          shardings: matching pytree of ``jax.sharding.Sharding``; any mesh works.
          check_host: raises ``ValueError`` (or ``KeyError``, ``TypeError``) on a host state
            the caller cannot use; such a step counts as unreadable.

        Raises:
          IncompatibleCheckpointError: the newest readable step holds arrays of other names or
            shapes than ``abstract_state`` (written by a run with another model or optimizer);
            the message lists them, and nothing is moved.
        """
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              abstract_state, shardings)
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"No checkpoint steps found in {self.directory}.")
        try:
            return self._restore_step(steps[0], target, check_host)
        except IncompatibleCheckpointError:
            raise
        except Exception as error:  # any other failure to load means the step is unusable
            if len(steps) == 1:
                raise
            logger.warning("Checkpoint step %d in %s is unreadable (%s: %s); moving it to %s "
                           "and restoring step %d.", steps[0], self.directory,
                           type(error).__name__, str(error)[:500], _CORRUPT_SUBDIR, steps[1])
        self._move_aside(steps[0])
        return self._restore_step(steps[1], target, check_host)

    def close(self) -> None:
        """Waits for a background save to be committed and releases the manager."""
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _restore_step(self, step: int, target: Any,
                      check_host: Callable[[dict[str, Any]], None] | None) -> RestoredCheckpoint:
        # On file systems without atomic renames (GCS) orbax marks a finished step by its
        # commit time; a step without one was cut short, though orbax would still load it.
        if self.manager.metadata(step).commit_timestamp_nsecs is None:
            raise ValueError(f"checkpoint step {step} was never committed")
        saved = self.manager.item_metadata(step)[_STATE_ITEM]
        if saved is not None:  # None: no array metadata to compare (orbax reads it if present)
            mismatches = _shape_mismatches(_array_shapes(saved), _array_shapes(target))
            if mismatches:
                raise IncompatibleCheckpointError(
                    f"checkpoint step {step} in {self.directory} was written for another model "
                    f"or optimizer than this run's ({len(mismatches)} arrays differ): "
                    + "; ".join(mismatches[:5]) + ("; ..." if len(mismatches) > 5 else "")
                    + ". Resume with the config it was written with (in its host state and "
                    "<workdir>/config.json) or start a new workdir."
                )
        args = ocp.args.Composite(**{_STATE_ITEM: ocp.args.StandardRestore(target),
                                     _HOST_ITEM: ocp.args.JsonRestore()})
        restored = self.manager.restore(step, args=args)
        host_state = dict(restored[_HOST_ITEM])
        if check_host is not None:
            try:
                check_host(host_state)
            except (KeyError, TypeError, ValueError) as error:
                path = self.directory / str(step) / _HOST_ITEM / _HOST_FILE
                raise ValueError(f"host state {path} of checkpoint step {step} is unusable: "
                                 f"{error}") from None
        return RestoredCheckpoint(step, restored[_STATE_ITEM], host_state)

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            corrupt = self.directory / _CORRUPT_SUBDIR
            corrupt.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(corrupt / f"{step}.{int(time.time())}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("rlvr_jax.checkpoint.move_aside")
        self.manager.reload()


class PreemptionGuard:
    """Turns SIGTERM and SIGINT into "save at the next step boundary, then stop".

    On several processes JAX's preemption service (started by ``jax.distributed``) catches
    SIGTERM on any host and picks one step for all; ``should_stop`` asks it through orbax's
    ``CheckpointManager.reached_preemption``, and a Ctrl-C is passed to it as SIGTERM. On one
    process that service does not run (``reached_preemption`` is always false and SIGTERM would
    kill the process), so the guard's own handlers set a flag that ``should_stop`` reads. A
    second Ctrl-C raises ``KeyboardInterrupt`` at once. Enter it on the main thread; the
    previous handlers come back on exit.
    """

    def __init__(self, checkpointer: Checkpointer) -> None:
        self._manager = checkpointer.manager
        self._multiprocess = jax.process_count() > 1
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def should_stop(self, step: int) -> bool:
        """Whether to save ``step`` and stop; every process calls it at every step."""
        if self._multiprocess:
            return self._manager.reached_preemption(step)
        return self.received is not None

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered from the main thread.")
        if self._multiprocess and not jax.config.jax_enable_preemption_service:
            raise RuntimeError("PreemptionGuard on several processes needs JAX's preemption "
                               "service; set jax_enable_preemption_service=True.")
        signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        logger.warning("Received %s: saving at the next step boundary, then exiting.",
                       self.received.name)
        if self._multiprocess:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier
