"""A run's metric writer: JSONL files, TensorBoard events and (optionally) wandb.

Files under the workdir, written by the main process only:

- ``config.json``: the run configuration, written atomically when the writer opens.
- ``metrics.jsonl``: one line per :meth:`MetricWriter.scalars` call,
  ``{"step": int, "time": unix_seconds, "<key>": float, ...}``. Every line is strict JSON
  (RFC 8259 has no NaN): non-finite values are stored as ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"``, and :func:`read_metrics` turns them back into floats.
- ``samples.jsonl``: one line per :meth:`MetricWriter.texts` call, the texts verbatim.
- ``records.jsonl``: one line per :meth:`MetricWriter.record` call, a JSON object of lists
  (e.g. the per-prompt outcomes of an evaluation, ``rlvr_jax.evaluation.prompt_records``).
- ``tensorboard/``: event files. TensorBoard tags allow only ``[-/\\w.]``, so other characters
  become ``_`` there (``eval/pass@1`` is shown as ``eval/pass_1``); JSONL keys stay as given.

Resume: ``step`` counts the optimiser steps completed when the values were measured. A run
that resumes from the checkpoint of step ``k`` passes ``resume_step=k``; every JSONL line
with ``step > k`` was written after that checkpoint and is dropped (the kept lines are written
to a temporary file that replaces the original), and TensorBoard gets ``purge_step=k + 1``.
A fresh run (``resume_step=None``) in a used workdir starts the files afresh. Lines are
flushed as written, so a crash loses at most a partial last line, which is dropped on reading.
"""

from __future__ import annotations

import html
import json
import logging
import math
import operator
import os
import re
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

_log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "config.json"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id.txt"

_RESERVED_KEYS = ("step", "time")
_NON_FINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_NON_FINITE_VALUES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_ILLEGAL_TAG_CHARACTERS = re.compile(r"[^-/\w.]")


class MetricWriter:
    """Writes scalars and texts per step to JSONL, TensorBoard and optionally wandb.

    Args:
      workdir: folder of the run (created if missing).
      config: the run configuration as a plain mapping (``ConfigDict.to_dict()``), written to
        ``config.json`` and given to wandb; values JSON lacks are written as lists or reprs.
      tensorboard: also write TensorBoard event files under ``workdir/tensorboard``.
      wandb: also log to Weights & Biases (the ``rlvr_jax[wandb]`` extra). The run id is kept
        in ``workdir/wandb_run_id.txt`` so a resumed run continues the same wandb run; wandb
        history is append-only, so steps re-logged after a resume keep their first values.
      wandb_project: the wandb project (wandb's default when ``None``).
      is_main_process: whether this process writes (``None``: ``jax.process_index() == 0``).
        Other processes check their inputs the same way and write nothing.
      resume_step: the checkpoint step a resumed run starts from; ``None`` for a fresh run.
    """

    def __init__(
        self,
        workdir: str,
        config: Mapping[str, Any],
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str | None = None,
        is_main_process: bool | None = None,
        resume_step: int | None = None,
    ) -> None:
        if is_main_process is None:
            is_main_process = jax.process_index() == 0
        self.is_main_process = is_main_process
        self._files: dict[str, Any] = {}
        self._tensorboard = self._wandb = self._wandb_run = None
        if not is_main_process:
            return
        # Imported before the workdir is touched: a missing package fails without side effects.
        self._wandb = _import_wandb() if wandb else None
        os.makedirs(workdir, exist_ok=True)
        _write_atomically(
            os.path.join(workdir, CONFIG_FILE),
            json.dumps(config, indent=2, sort_keys=True, default=_json_default) + "\n",
        )
        for name in (METRICS_FILE, SAMPLES_FILE, RECORDS_FILE):
            path = os.path.join(workdir, name)
            _truncate(path, resume_step)
            self._files[name] = open(path, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            self._tensorboard = _open_tensorboard(os.path.join(workdir, TENSORBOARD_DIR),
                                                  resume_step)
        if self._wandb is not None:
            self._wandb_run = _start_wandb(self._wandb, workdir, wandb_project, config,
                                           resume_step)

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Writes real scalars (Python, NumPy or JAX) measured at ``step`` as one JSONL line."""
        step = _as_step(step)
        floats = {_check_key(key): _as_float(key, value) for key, value in values.items()}
        if not self.is_main_process:
            return
        now = time.time()
        encoded = {key: _NON_FINITE_NAMES.get(repr(value), value) for key, value in floats.items()}
        self._write_line(METRICS_FILE, {"step": step, "time": now, **encoded})
        if self._tensorboard is not None:
            for key, value in floats.items():
                self._tensorboard.add_scalar(_tag(key), value, global_step=step, walltime=now)
            self._tensorboard.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(floats, step=step)

    def texts(self, step: int, values: Mapping[str, str]) -> None:
        """Writes texts (e.g. sampled completions) at ``step`` as one ``samples.jsonl`` line."""
        step = _as_step(step)
        for key, text in values.items():
            _check_key(key)
            if not isinstance(text, str):
                raise TypeError(f"text {key!r} must be a str, got {type(text).__name__}")
        if not self.is_main_process:
            return
        now = time.time()
        self._write_line(SAMPLES_FILE, {"step": step, "time": now, **values})
        if self._tensorboard is not None:
            for key, text in values.items():
                # Indented four spaces: a Markdown code block, shown verbatim.
                verbatim = "\n".join("    " + line for line in text.split("\n"))
                self._tensorboard.add_text(_tag(key), verbatim, step, walltime=now)
            self._tensorboard.flush()
        if self._wandb_run is not None:
            pages = {key: self._wandb.Html(f"<pre>{html.escape(text)}</pre>")
                     for key, text in values.items()}
            self._wandb_run.log(pages, step=step)

    def record(self, step: int, values: Mapping[str, Any]) -> None:
        """Writes a JSON-serialisable record (lists of numbers or strings) measured at ``step``
        as one ``records.jsonl`` line; nothing goes to TensorBoard or wandb."""
        step = _as_step(step)
        for key in values:
            _check_key(key)
        line = {"step": step, "time": time.time(), **values}
        try:
            json.dumps(line, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(f"record at step {step} is not plain JSON: {error}") from None
        if self.is_main_process:
            self._write_line(RECORDS_FILE, line)

    def close(self) -> None:
        """Flushes and closes every sink; later writes raise."""
        for f in self._files.values():
            f.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_line(self, name: str, record: Mapping[str, Any]) -> None:
        f = self._files[name]
        f.write(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n")
        f.flush()


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or ``samples.jsonl``, ``records.jsonl``) file,
    oldest first.

    ``"NaN"``/``"Infinity"``/``"-Infinity"`` come back as floats; a partial last line (a run
    still writing, or one that crashed) is skipped; a malformed line elsewhere raises.
    """
    return [{key: _NON_FINITE_VALUES.get(value, value) if isinstance(value, str) else value
             for key, value in record.items()}
            for record, _ in _read_lines(path)]


def _read_lines(path: str) -> list[tuple[dict[str, Any], str]]:
    """(record, raw line) of each complete line; a partial last line is dropped."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: malformed JSON line: {error}") from None
            record = None
        if record is None:  # only the last line can be cut short by a crash
            _log.warning("%s: dropping a partial last line", path)
            break
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number}: expected an object with an integer 'step'")
        records.append((record, line))
    return records


def _truncate(path: str, resume_step: int | None) -> None:
    """Keeps the complete lines with ``step <= resume_step`` (none when ``None``), atomically."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        before = f.read()
    kept = "".join(line for record, line in _read_lines(path)
                   if resume_step is not None and record["step"] <= resume_step)
    if kept != before:
        _log.info("%s: keeping the lines up to step %s", path, resume_step)
        _write_atomically(path, kept)


def _write_atomically(path: str, text: str) -> None:
    """Writes a synced temporary file in the same folder, then renames it over ``path``."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=os.path.dirname(path) or ".",
                                     prefix=os.path.basename(path), suffix=".tmp",
                                     delete=False) as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


def _as_step(step: Any) -> int:
    step = operator.index(step)  # TypeError for anything but an integer
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"metric keys must be non-empty strings, got {key!r}")
    if key in _RESERVED_KEYS:
        raise ValueError(f"metric key {key!r} is reserved for the line's own {key}")
    return key


def _as_float(key: str, value: Any) -> float:
    """A Python float from a real scalar or one-element array (NumPy, JAX, bfloat16, bool)."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind in "OSUc":
        raise TypeError(f"scalar {key!r} must be a real number or a one-element array, got "
                        f"{type(value).__name__} of shape {array.shape} and dtype {array.dtype}")
    return float(array.reshape(()))


def _tag(key: str) -> str:
    """``key`` as a legal TensorBoard tag (tensorboardX would log a message on every write)."""
    return _ILLEGAL_TAG_CHARACTERS.sub("_", key)


def _json_default(value: Any) -> Any:
    """Config values JSON lacks: NumPy/JAX numbers and arrays as numbers/lists, others as repr."""
    return np.asarray(value).tolist() if hasattr(value, "__array__") else repr(value)


def _open_tensorboard(logdir: str, resume_step: int | None) -> Any:
    from tensorboardX import SummaryWriter

    previous = [n for n in os.listdir(logdir) if "tfevents" in n] if os.path.isdir(logdir) else []
    # TensorBoard discards older events with step >= purge_step. File names carry the second
    # they were created in; the suffix keeps a restart in the same second from overwriting.
    purge_step = resume_step + 1 if resume_step is not None else (0 if previous else None)
    return SummaryWriter(logdir=logdir, purge_step=purge_step, flush_secs=30,
                         filename_suffix=f".{len(previous)}")


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise ImportError(
            "wandb logging is enabled (wandb=True) but the 'wandb' package is not installed; "
            "install it with `pip install 'rlvr_jax[wandb]'` or turn wandb logging off"
        ) from error
    return wandb


def _start_wandb(wandb: Any, workdir: str, project: str | None, config: Mapping[str, Any],
                 resume_step: int | None) -> Any:
    id_path = os.path.join(workdir, WANDB_ID_FILE)
    run_id = None
    if resume_step is not None and os.path.exists(id_path):
        with open(id_path, encoding="utf-8") as f:
            run_id = f.read().strip() or None
    if run_id is None:
        run_id = wandb.util.generate_id()
        _write_atomically(id_path, run_id + "\n")
    return wandb.init(project=project, config=config, dir=workdir, id=run_id, resume="allow")
