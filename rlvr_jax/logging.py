"""Run logging: JSONL files, TensorBoard events, optional wandb, a progress bar, a summary.

Files a run writes under its workdir (main process only):

- ``config.json``: the run configuration, written atomically when the logger opens.
- ``metrics.jsonl``: one JSON object per :meth:`RunLogger.scalars` call,
  ``{"step": int, "time": unix_seconds, "<key>": float, ...}``. Non-finite values are stored
  as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` so every line stays strict JSON
  (RFC 8259 has no NaN); :func:`read_metrics` turns them back into floats.
- ``samples.jsonl``: one JSON object per :meth:`RunLogger.texts` call,
  ``{"step": int, "time": unix_seconds, "<key>": str, ...}``.
- ``tensorboard/``: TensorBoard event files (scalars and text) written by ``tensorboardX``.
  TensorBoard tags allow only ``[-/\\w.]``, so other characters become ``_`` there
  (``eval/pass@1`` is shown as ``eval/pass_1``); the JSONL keys are kept as given.

Interruption safety: every line is flushed as soon as it is written, so a crash loses at most
the line being written; such a partial last line is dropped when the files are next opened.
When a run resumes from the checkpoint of step ``k`` (``resume_step=k``) every line with
``step > k`` was written after that checkpoint and is dropped from both JSONL files, by
writing the kept lines to a temporary file and ``os.replace``-ing it over the original, so
the resumed run continues the files without duplicates. TensorBoard is told the same through
``purge_step=k + 1``. A fresh run (``resume_step=None``) in a workdir that already holds
logs replaces them.

Step convention: ``step`` is the number of optimiser steps completed when the values were
measured (an evaluation before any training is logged at step 0).
"""

from __future__ import annotations

import html
import json
import logging as std_logging
import math
import operator
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

_log = std_logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.json"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id.txt"

_RESERVED_KEYS = ("step", "time")
_NON_FINITE_TO_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_JSON_TO_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

MAIN_METRIC_PREFIXES = ("train/reward", "train/loss", "train/kl", "train/entropy", "eval/")
"""Metrics :func:`summary_table` shows by default (those whose names start with one of these)."""

LOWER_IS_BETTER = ("loss", "kl")
"""Metric-name substrings for which :func:`summary_table` reports the minimum as best."""


# ----------------------------------------------------------------------------- conversions


def _as_step(step: Any) -> int:
    """An integral, non-negative step (Python, NumPy and 0-d JAX integers accepted)."""
    try:
        value = operator.index(step)
    except TypeError:
        value = np.asarray(step)
        if value.shape != () or not np.issubdtype(value.dtype, np.integer):
            raise TypeError(f"step must be an integer, got {step!r}") from None
        value = int(value)
    if value < 0:
        raise ValueError(f"step must be >= 0, got {value}")
    return value


def _as_float(key: str, value: Any) -> float:
    """A plain Python float from a Python/NumPy/JAX real scalar (bool counts as 0/1)."""
    array = np.asarray(value)
    # Kinds: b bool, i/u integers, f floats; ml_dtypes floats such as bfloat16 report "V".
    is_real = array.dtype.kind in "biuf" or (array.dtype.kind == "V" and array.dtype.names is None)
    if array.size != 1 or not is_real:
        raise TypeError(
            f"scalar {key!r} must be a real number or a one-element array, "
            f"got {type(value).__name__} with shape {array.shape} and dtype {array.dtype}"
        )
    return float(array.reshape(()))


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"log keys must be non-empty strings, got {key!r}")
    if key in _RESERVED_KEYS:
        raise ValueError(f"log key {key!r} is reserved for the line's own {key}")
    return key


def _encode_float(value: float) -> float | str:
    return value if math.isfinite(value) else _NON_FINITE_TO_JSON[repr(value)]


def _decode_value(value: Any) -> Any:
    if isinstance(value, str) and value in _JSON_TO_NON_FINITE:
        return _JSON_TO_NON_FINITE[value]
    return value


def _json_default(value: Any) -> Any:
    """Config values JSON lacks: NumPy/JAX scalars and arrays as numbers/lists, others as str."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def _plain_config(config: Any) -> Any:
    """An ``ml_collections.ConfigDict`` (or any object with ``to_dict``) as a plain dict."""
    return config.to_dict() if hasattr(config, "to_dict") else config


# ----------------------------------------------------------------------------- JSONL files


def _atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a synced temporary file in the same folder + os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _parse_jsonl(path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Complete records of a JSONL file and their raw lines (newline included).

    A last line without its newline, or one that does not parse, is what a crash mid-write
    leaves behind; it is dropped. A malformed line anywhere else is corruption and raises.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    records: list[dict[str, Any]] = []
    raw: list[str] = []
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if is_last:
                _log.warning("%s: dropping a partial last line (%s)", path, error)
                break
            raise ValueError(f"{path}:{number}: malformed JSON line: {error}") from None
        if is_last and not line.endswith("\n"):
            _log.warning("%s: dropping a last line without its newline", path)
            break
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number}: expected an object with an integer 'step'")
        records.append(record)
        raw.append(line)
    return records, raw


def _truncate_jsonl(path: str, keep_through_step: int | None) -> int:
    """Keep only the complete lines with ``step <= keep_through_step`` (none if ``None``).

    Returns the number of lines dropped (a dropped partial line included). Atomic.
    """
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        total = sum(1 for line in f if line.strip())
    records, raw = _parse_jsonl(path)
    kept = [
        line
        for record, line in zip(records, raw, strict=True)
        if keep_through_step is not None and record["step"] <= keep_through_step
    ]
    if len(kept) != total:
        _atomic_write_text(path, "".join(kept))
    return total - len(kept)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or ``samples.jsonl``) file, oldest first.

    Non-finite values stored as ``"NaN"``/``"Infinity"``/``"-Infinity"`` come back as floats.
    A partial last line (a run still writing, or one that crashed) is skipped.
    """
    records, _ = _parse_jsonl(path)
    return [{key: _decode_value(value) for key, value in record.items()} for record in records]


# ----------------------------------------------------------------------------- run logger


class RunLogger:
    """Writes a run's scalars and sample texts to JSONL, TensorBoard and (optionally) wandb.

    Args:
      workdir: folder of the run (created if missing).
      config: the run configuration (a mapping or ``ml_collections.ConfigDict``), written to
        ``config.json`` and passed to wandb. Values JSON lacks are written as lists/strings.
      tensorboard: write TensorBoard event files under ``workdir/tensorboard``.
      wandb: also log to Weights & Biases (needs the ``wandb`` package: ``rlvr_jax[wandb]``).
        The wandb run id is kept in ``workdir/wandb_run_id.txt`` so a resumed run continues
        the same wandb run. wandb history is append-only: steps the interrupted run logged
        after its last checkpoint keep their first values there (wandb ignores re-logged
        steps), unlike the JSONL and TensorBoard logs.
      wandb_project: wandb project name (wandb's default when ``None``).
      is_main_process: whether this process writes; ``None`` means ``jax.process_index() == 0``.
        Every other process gets a logger whose methods do nothing and which touches no file.
      resume_step: the step of the checkpoint the run resumes from, or ``None`` for a fresh
        run. Lines with ``step > resume_step`` (or all lines for a fresh run) are dropped.
    """

    def __init__(
        self,
        workdir: str,
        config: Mapping[str, Any] | Any,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str | None = None,
        is_main_process: bool | None = None,
        resume_step: int | None = None,
    ) -> None:
        if is_main_process is None:
            import jax

            is_main_process = jax.process_index() == 0
        if resume_step is not None:
            resume_step = _as_step(resume_step)
        self.workdir = workdir
        self.is_main_process = bool(is_main_process)
        self._metrics_file = None
        self._samples_file = None
        self._tb_writer = None
        self._wandb = None
        self._wandb_run = None
        self._closed = False
        if not self.is_main_process:
            return
        # Import before touching the workdir so a missing package fails without side effects.
        self._wandb = _import_wandb() if wandb else None

        os.makedirs(workdir, exist_ok=True)
        config_dict = _plain_config(config)
        _atomic_write_text(
            os.path.join(workdir, CONFIG_FILE),
            json.dumps(config_dict, indent=2, sort_keys=True, default=_json_default) + "\n",
        )
        metrics_path = os.path.join(workdir, METRICS_FILE)
        samples_path = os.path.join(workdir, SAMPLES_FILE)
        for path in (metrics_path, samples_path):
            dropped = _truncate_jsonl(path, resume_step)
            if dropped:
                _log.info("%s: dropped %d line(s) after step %s", path, dropped, resume_step)
        self._metrics_file = open(metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._samples_file = open(samples_path, "a", encoding="utf-8")  # noqa: SIM115

        if tensorboard:
            self._tb_writer = _open_tensorboard(os.path.join(workdir, TENSORBOARD_DIR), resume_step)
        if self._wandb is not None:
            self._wandb_run = _start_wandb(
                self._wandb, workdir, wandb_project, config_dict, resume_step
            )

    # -- writing ---------------------------------------------------------------------------

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Log real scalars (Python, NumPy or JAX) measured at ``step``: one JSONL line."""
        step = _as_step(step)
        floats = {_check_key(key): _as_float(key, value) for key, value in values.items()}
        if not self.is_main_process:
            return
        self._check_open()
        now = time.time()
        record = {"step": step, "time": now}
        record.update({key: _encode_float(value) for key, value in floats.items()})
        _write_line(self._metrics_file, record)
        if self._tb_writer is not None:
            for key, value in floats.items():
                self._tb_writer.add_scalar(key, value, global_step=step, walltime=now)
            self._tb_writer.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(floats, step=step)

    def texts(self, step: int, values: Mapping[str, str]) -> None:
        """Log text (e.g. sample completions) at ``step``: one line in ``samples.jsonl``."""
        step = _as_step(step)
        for key, text in values.items():
            _check_key(key)
            if not isinstance(text, str):
                raise TypeError(f"text {key!r} must be a str, got {type(text).__name__}")
        if not self.is_main_process:
            return
        self._check_open()
        now = time.time()
        _write_line(self._samples_file, {"step": step, "time": now, **values})
        if self._tb_writer is not None:
            for key, text in values.items():
                self._tb_writer.add_text(key, _markdown_verbatim(text), step, walltime=now)
            self._tb_writer.flush()
        if self._wandb_run is not None:
            pages = {key: f"<pre>{html.escape(text)}</pre>" for key, text in values.items()}
            self._wandb_run.log(
                {key: self._wandb.Html(page) for key, page in pages.items()}, step=step
            )

    def close(self) -> None:
        """Flush and close every sink. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        for f in (self._metrics_file, self._samples_file):
            if f is not None:
                f.close()
        if self._tb_writer is not None:
            self._tb_writer.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"RunLogger for {self.workdir!r} is closed")


def _write_line(f: Any, record: Mapping[str, Any]) -> None:
    f.write(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n")
    f.flush()


def _markdown_verbatim(text: str) -> str:
    """Text as a Markdown code block (4-space indent), so TensorBoard shows it verbatim."""
    return "\n".join("    " + line for line in text.split("\n"))


def _open_tensorboard(logdir: str, resume_step: int | None) -> Any:
    from tensorboardX import SummaryWriter

    previous = (
        [name for name in os.listdir(logdir) if "tfevents" in name] if os.path.isdir(logdir) else []
    )
    # purge_step makes TensorBoard discard older events with step >= purge_step.
    purge_step = resume_step + 1 if resume_step is not None else (0 if previous else None)
    # Event file names carry the creation second; the suffix keeps a restart within the same
    # second from overwriting the previous file.
    return SummaryWriter(
        logdir=logdir,
        purge_step=purge_step,
        flush_secs=30,
        filename_suffix=f".{len(previous)}",
    )


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise ImportError(
            "wandb logging is enabled (wandb=True) but the 'wandb' package is not installed; "
            "install it with `pip install 'rlvr_jax[wandb]'` or turn wandb logging off"
        ) from error
    return wandb


def _start_wandb(
    wandb_module: Any,
    workdir: str,
    project: str | None,
    config: Any,
    resume_step: int | None,
) -> Any:
    id_path = os.path.join(workdir, WANDB_ID_FILE)
    run_id = None
    if resume_step is not None and os.path.exists(id_path):
        with open(id_path, encoding="utf-8") as f:
            run_id = f.read().strip() or None
    if run_id is None:
        run_id = wandb_module.util.generate_id()
        _atomic_write_text(id_path, run_id + "\n")
    return wandb_module.init(project=project, config=config, dir=workdir, id=run_id, resume="allow")


# ----------------------------------------------------------------------------- progress bar


class ProgressBar:
    """A tqdm progress bar on stderr over optimiser steps, with the latest metrics as postfix.

    ``update(step, postfix)`` moves the bar to ``step`` completed steps (not by ``step``).
    ``enabled=False`` (e.g. on non-main processes) gives a bar that prints nothing.
    """

    def __init__(self, total_steps: int, initial_step: int = 0, *, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        total_steps = _as_step(total_steps)
        initial_step = _as_step(initial_step)
        if initial_step > total_steps:
            raise ValueError(f"initial_step {initial_step} exceeds total_steps {total_steps}")
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            file=sys.stderr,
            dynamic_ncols=True,
            unit="step",
            disable=not enabled,
        )

    @property
    def position(self) -> int:
        """The number of completed steps the bar shows."""
        return int(self._bar.n)

    def update(self, step: int, postfix: Mapping[str, Any] | None = None) -> None:
        step = _as_step(step)
        if postfix:
            self._bar.set_postfix(
                {key: _format_number(value) for key, value in postfix.items()}, refresh=False
            )
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _format_number(value: Any) -> str:
    try:
        return f"{_as_float('value', value):.4g}"
    except TypeError:
        return str(value)


# ----------------------------------------------------------------------------- summaries


def _default_summary_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    all_keys = _metric_keys(history)
    main = [key for key in all_keys if key.startswith(MAIN_METRIC_PREFIXES)]
    return main or all_keys


def _metric_keys(history: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in history:
        for key in record:
            if key not in _RESERVED_KEYS:
                seen.setdefault(key, None)
    return list(seen)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every record holding ``key``, in history order."""
    steps, values = [], []
    for index, record in enumerate(history):
        if key in record:
            if "step" not in record:
                raise ValueError(f"history record {index} has no 'step': {dict(record)!r}")
            steps.append(int(record["step"]))
            values.append(_as_float(key, _decode_value(record[key])))
    return steps, values


def summary_table(history: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> str:
    """A plain-text table of the first, last and best value of each metric, with steps.

    ``history`` is a list of ``{"step": int, **scalars}`` records (what :func:`read_metrics`
    returns; a ``time`` field is ignored). A metric may be missing from some records (e.g.
    evaluation every N steps). ``keys=None`` shows the metrics starting with one of
    :data:`MAIN_METRIC_PREFIXES` (all metrics if none does). Best is the minimum for names
    containing one of :data:`LOWER_IS_BETTER` and the maximum otherwise; non-finite values
    are never best.
    """
    if not history:
        raise ValueError("summary_table: the history is empty")
    keys = list(keys) if keys is not None else _default_summary_keys(history)
    unknown = [key for key in keys if not any(key in record for record in history)]
    if unknown:
        raise ValueError(
            f"summary_table: no values for {unknown}; available: {_metric_keys(history)}"
        )
    header = ("metric", "n", "first", "@step", "last", "@step", "best", "@step", "goal")
    rows = [header]
    for key in keys:
        steps, values = _series(history, key)
        lower_is_better = any(part in key for part in LOWER_IS_BETTER)
        finite = [i for i, value in enumerate(values) if math.isfinite(value)]
        if finite:
            pick = min if lower_is_better else max
            best = pick(finite, key=lambda i: values[i])
            best_cells = (_format_cell(values[best]), str(steps[best]))
        else:
            best_cells = ("-", "-")
        rows.append(
            (
                key,
                str(len(values)),
                _format_cell(values[0]),
                str(steps[0]),
                _format_cell(values[-1]),
                str(steps[-1]),
                *best_cells,
                "min" if lower_is_better else "max",
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _format_cell(value: float) -> str:
    return f"{value:.4g}"


def plot_curves(
    metrics_path: str,
    out_path: str,
    keys: Sequence[str] = ("train/reward_mean", "eval/pass@1"),
) -> str:
    """Plot ``keys`` against step from a ``metrics.jsonl`` file into a PNG (one panel each).

    A key without any value (e.g. no evaluation ran yet) gets an empty panel saying so; if no
    key has a value at all, a ValueError lists the keys the file has. Non-finite points are
    left out. Returns ``out_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if not keys:
        raise ValueError("plot_curves: no keys to plot")
    history = read_metrics(metrics_path)
    series = {key: _series(history, key) for key in keys}
    if not any(steps for steps, _ in series.values()):
        raise ValueError(
            f"plot_curves: {metrics_path} has no values for {list(keys)}; "
            f"available: {_metric_keys(history)}"
        )
    figure, axes = plt.subplots(
        len(keys), 1, figsize=(7, 2.6 * len(keys)), sharex=True, squeeze=False
    )
    try:
        for axis, key in zip(axes[:, 0], keys, strict=True):
            steps, values = series[key]
            points = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o" if len(points) <= 30 else None, markersize=3)
            else:
                axis.text(0.5, 0.5, "no data", transform=axis.transAxes, ha="center")
            axis.set_ylabel(key)
            axis.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        figure.tight_layout()
        folder = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(folder, exist_ok=True)
        figure.savefig(out_path, format="png", dpi=100)
    finally:
        plt.close(figure)
    return out_path
