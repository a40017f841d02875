"""Orbax checkpoints with exact resume, corruption fallback and preemption handling.

A checkpoint step directory ``<dir>/<step>/`` holds two orbax items:

- ``state``: the device pytree (``TrainState``: params, optimizer state, step, PRNG key), saved
  with ``StandardSave`` from sharded ``jax.Array`` and restored straight into the shardings
  the caller asks for (the mesh may differ from the one that saved it);
- ``host``: a JSON document with the host-side state needed to continue exactly (data
  position, host PRNG key data, the config dict, counters). ``prng_key_to_json`` /
  ``prng_key_from_json`` convert JAX keys.

Atomicity: orbax writes each step into a temporary directory and renames it when complete,
so a crash while saving leaves the previous steps intact (temporaries are cleaned up when the
next ``Checkpointer`` opens the directory). On restore, a step directory that is incomplete
(no commit metadata, an item missing) or fails to load (truncated files) is skipped with a
logged warning and the next older step is used; skipped newer steps are moved to
``<dir>/corrupt/<step>.<unix time>`` so training can write those step numbers again.

Saving is asynchronous by default: ``save`` returns once the arrays are copied to host memory
and the files are written in the background; call ``wait_until_finished`` (or ``close``, or
leave the ``with`` block) before the process exits.

Config keys (``checkpoint`` section)::

    checkpoint:
      dir: "/path/to/run/checkpoints"   # required
      save_every_steps: 100             # save when step % N == 0; 0 = only on demand
      keep_last: 3                      # keep the newest K steps; 0 = keep all
      async_save: True                  # write in a background thread

Preemption (SIGTERM on Cloud TPU/SLURM, or Ctrl-C) is handled by ``PreemptionGuard``: the
signal handler only sets a flag; the training loop checks ``guard.should_stop()`` at each step
boundary, saves with ``force=True`` and exits cleanly::

    with Checkpointer.from_config(config.checkpoint) as ckpt, PreemptionGuard() as guard:
        for step in range(start, total_steps):
            state = train_step(state, batch)
            stop = guard.should_stop()
            ckpt.save(step + 1, state, host_state, force=stop or step + 1 == total_steps)
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
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

_STATE_ITEM = "state"
_HOST_ITEM = "host"
_COMMIT_METADATA_FILE = "_CHECKPOINT_METADATA"
_CORRUPT_SUBDIR = "corrupt"


class RestoredCheckpoint(NamedTuple):
    """What ``Checkpointer.restore`` returns."""

    step: int
    state: Any
    host_state: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Host-side JSON state
# --------------------------------------------------------------------------------------------


def prng_key_to_json(key: jax.Array) -> dict[str, Any]:
    """JSON-able form of a JAX PRNG key (typed ``jax.random.key`` or raw ``uint32`` data)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
        data = jax.random.key_data(key)
    else:
        impl, data = None, key
    data = np.asarray(data)
    return {"impl": impl, "shape": list(data.shape), "data": data.ravel().tolist()}


def prng_key_from_json(payload: Mapping[str, Any]) -> jax.Array:
    """Inverse of ``prng_key_to_json``."""
    data = np.asarray(payload["data"], dtype=np.uint32).reshape(payload["shape"])
    if payload["impl"] is None:
        return jax.numpy.asarray(data)
    return jax.random.wrap_key_data(data, impl=payload["impl"])


def _to_jsonable(value: Any, where: str) -> Any:
    """Converts NumPy/JAX scalars and arrays, ConfigDicts and tuples into JSON types."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: JSON keys must be strings, got {key!r}.")
            out[key] = _to_jsonable(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            raise TypeError(f"{where}: convert PRNG keys with prng_key_to_json first.")
        return np.asarray(value).tolist()
    raise TypeError(f"{where}: value of type {type(value).__name__} is not JSON-serialisable.")


# --------------------------------------------------------------------------------------------
# Checkpointer
# --------------------------------------------------------------------------------------------


def _target_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` tree carrying the shardings to restore into."""
    if shardings is None:
        fallback = NamedSharding(Mesh(np.asarray(jax.devices()), ("all",)), PartitionSpec())

        def attach(x: Any) -> jax.ShapeDtypeStruct:
            sharding = getattr(x, "sharding", None) or fallback
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        return jax.tree.map(attach, abstract_state)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )


class Checkpointer:
    """Save every N steps, keep the last K, restore the newest loadable step.

    Args:
      directory: where step directories live (created unless ``create=False``).
      save_every_steps: ``save(step, ...)`` writes when ``step % save_every_steps == 0``;
        0 saves only when called with ``force=True``.
      keep_last: number of newest steps to keep (0 keeps all).
      async_save: write in the background (``wait_until_finished`` before exit).
      create: create ``directory`` if missing; with ``False`` a missing directory raises
        ``FileNotFoundError`` (use for evaluation / read-only restores).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_every_steps: int = 0,
        keep_last: int = 0,
        async_save: bool = True,
        create: bool = True,
    ):
        for key, value in (("save_every_steps", save_every_steps), ("keep_last", keep_last)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"checkpoint.{key} must be a non-negative integer, got {value!r}.")
        self.directory = epath.Path(directory).absolute()
        if not create and not self.directory.exists():
            raise FileNotFoundError(f"Checkpoint directory {self.directory} does not exist.")
        self.save_every_steps = save_every_steps
        self.keep_last = keep_last
        self._last_saved_step: int | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last or None,
            create=create,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_names=(_STATE_ITEM, _HOST_ITEM),
            options=options,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs: Any) -> Checkpointer:
        """Builds from a ``checkpoint`` config section (keys in the module docstring)."""
        known = {"dir", "save_every_steps", "keep_last", "async_save"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"Unknown checkpoint config key(s) {[f'checkpoint.{k}' for k in unknown]}; "
                f"known keys are {sorted(known)}."
            )
        if not config.get("dir"):
            raise ValueError("checkpoint.dir must be set to a directory path.")
        return cls(
            config["dir"],
            save_every_steps=config.get("save_every_steps", 0),
            keep_last=config.get("keep_last", 0),
            async_save=config.get("async_save", True),
            **kwargs,
        )

    # ---- saving ------------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is on the periodic schedule."""
        return self.save_every_steps > 0 and step % self.save_every_steps == 0

    def save(
        self,
        step: int,
        state: Any,
        host_state: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` and ``host_state`` as ``step`` if scheduled (or ``force``).

        Every process must call this with the same ``step`` and ``host_state``. Returns
        whether a save was started; a step already saved is not written twice.
        """
        if not (force or self.should_save(step)):
            return False
        if step == self._last_saved_step or step in self._manager.all_steps():
            return False
        host_json = _to_jsonable(dict(host_state or {}), "host_state")
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    _STATE_ITEM: ocp.args.StandardSave(state),
                    _HOST_ITEM: ocp.args.JsonSave(host_json),
                }
            ),
            force=True,
        )
        self._last_saved_step = step
        return True

    def wait_until_finished(self) -> None:
        """Blocks until any background save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---- listing -----------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Saved step numbers, oldest first (including a save still being written)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Newest committed step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _incomplete_reason(self, step: int) -> str | None:
        step_dir = self.directory / str(step)
        metadata_file = step_dir / _COMMIT_METADATA_FILE
        if not metadata_file.exists():
            return f"{_COMMIT_METADATA_FILE} is missing"
        try:
            metadata = json.loads(metadata_file.read_text())
        except (json.JSONDecodeError, OSError) as error:
            return f"{_COMMIT_METADATA_FILE} is unreadable ({error})"
        if not metadata.get("commit_timestamp_nsecs"):
            return "it was never committed"
        for item in (_STATE_ITEM, _HOST_ITEM):
            if not (step_dir / item).is_dir():
                return f"item '{item}' is missing"
        return None

    # ---- restoring ---------------------------------------------------------------------------

    def _restore_step(self, step: int, target: Any) -> RestoredCheckpoint:
        reason = self._incomplete_reason(step)
        if reason is not None:
            raise ValueError(f"checkpoint step {step} is incomplete: {reason}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    _STATE_ITEM: ocp.args.StandardRestore(target),
                    _HOST_ITEM: ocp.args.JsonRestore(),
                }
            ),
        )
        return RestoredCheckpoint(step, restored[_STATE_ITEM], dict(restored[_HOST_ITEM]))

    def restore(
        self, abstract_state: Any, shardings: Any = None, step: int | None = None
    ) -> RestoredCheckpoint:
        """Restores a step into the given shardings.

        Args:
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of the init)
            with the same structure as the saved state.
          shardings: matching pytree of ``jax.sharding.Sharding`` to place the arrays in; any
            mesh works, not only the one that saved. ``None`` uses each leaf's ``.sharding``
            if it has one, else full replication over all devices.
          step: a specific step (raises if missing or unloadable); ``None`` picks the newest
            step that loads, skipping (and moving to ``corrupt/``) broken newer ones with a
            warning.
        """
        target = _target_with_shardings(abstract_state, shardings)
        self._manager.wait_until_finished()
        self._manager.reload()
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"No checkpoint steps found in {self.directory}.")
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"Checkpoint step {step} not found in {self.directory}; "
                    f"available steps: {steps}."
                )
            return self._restore_step(step, target)
        skipped = []
        for candidate in reversed(steps):
            try:
                restored = self._restore_step(candidate, target)
            except Exception as error:  # any load failure means the step is unusable
                logger.warning(
                    "Skipping checkpoint step %d in %s: %s: %s",
                    candidate, self.directory, type(error).__name__, str(error)[:500],
                )
                skipped.append(candidate)
                continue
            if skipped:
                logger.warning(
                    "Restored step %d; newer step(s) %s were unusable and are moved to %s.",
                    candidate, skipped, self.directory / _CORRUPT_SUBDIR,
                )
                self._quarantine(skipped)
            return restored
        raise ValueError(
            f"No loadable checkpoint in {self.directory}: steps {steps} all failed to restore "
            "(see the warnings above)."
        )

    def _quarantine(self, steps: Sequence[int]) -> None:
        if jax.process_index() == 0:
            corrupt_dir = self.directory / _CORRUPT_SUBDIR
            corrupt_dir.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = corrupt_dir / f"{step}.{int(time.time())}"
                (self.directory / str(step)).rename(destination)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("rlvr_jax.checkpoint.quarantine")
        self._manager.reload()


# --------------------------------------------------------------------------------------------
# Preemption
# --------------------------------------------------------------------------------------------


class PreemptionGuard:
    """Context manager turning SIGTERM/SIGINT into "save at the next step boundary, then stop".

    The handler only sets a flag (nothing unsafe runs inside a signal handler); the loop
    calls ``should_stop()`` once per step. A second SIGINT raises ``KeyboardInterrupt`` for
    an immediate stop. On multi-process jobs ``should_stop`` agrees across processes (an
    all-gather of the flags), so every process must call it at the same steps. Handlers are
    installed on entry and the previous ones restored on exit; only the main thread can
    install signal handlers.
    """

    def __init__(self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        logger.warning("Received %s: saving at the next step boundary, then exiting.",
                       self.received.name)

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered from the main thread.")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        """Whether this process received a stop signal."""
        return self.received is not None

    def should_stop(self) -> bool:
        """Whether any process received a stop signal (collective on multi-process jobs)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.asarray(self.requested, dtype=np.int32))
        return bool(np.any(flags))
