"""A finished (or running) run at a glance: a table of its main metrics and a plot of curves.

Reads ``<workdir>/metrics.jsonl``, prints the first, last and best value of each main metric
with their steps, and draws the training reward and held-out pass@1 into
``<workdir>/curves.png`` (matplotlib: ``pip install 'rlvr_jax[analysis]'``)::

    python experiments/run_summary.py runs/smollm2_arith
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from rlvr_jax import metric_writer

MAIN_METRIC_PREFIXES = ("train/reward", "train/loss", "train/kl", "train/entropy", "eval/")
"""Metrics the table shows by default (those whose names start with one of these)."""

LOWER_IS_BETTER = ("loss", "kl")
"""Metric-name substrings for which the table reports the minimum as best."""

CURVES = ("train/reward_mean", "eval/pass@1")
"""Metrics plotted by default, one panel each."""

History = Sequence[Mapping[str, Any]]


def metric_keys(history: History) -> list[str]:
    """Every metric name in ``history``, in order of first appearance."""
    seen: dict[str, None] = {}
    for record in history:
        seen.update((key, None) for key in record if key not in ("step", "time"))
    return list(seen)


def series(history: History, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every record holding ``key``, in history order."""
    pairs = [(int(record["step"]), float(record[key])) for record in history if key in record]
    return [step for step, _ in pairs], [value for _, value in pairs]


def summary_table(history: History, keys: Sequence[str] | None = None) -> str:
    """A plain-text table of the first, last and best value of each metric, with steps.

    ``history`` is what :func:`rlvr_jax.metric_writer.read_metrics` returns; a metric may be
    missing from some records (evaluation every N steps). ``keys=None`` shows the metrics
    starting with one of :data:`MAIN_METRIC_PREFIXES` (all if none does). Best is the minimum
    for names containing one of :data:`LOWER_IS_BETTER`, else the maximum; never non-finite.
    """
    if not history:
        raise ValueError("summary_table: the history is empty")
    available = metric_keys(history)
    if keys is None:
        keys = [key for key in available if key.startswith(MAIN_METRIC_PREFIXES)] or available
    unknown = [key for key in keys if key not in available]
    if unknown:
        raise ValueError(f"summary_table: no values for {unknown}; available: {available}")
    rows = [("metric", "n", "first", "@step", "last", "@step", "best", "@step", "goal")]
    for key in keys:
        steps, values = series(history, key)
        lower_is_better = any(part in key for part in LOWER_IS_BETTER)
        finite = [i for i, value in enumerate(values) if math.isfinite(value)]
        best = (min if lower_is_better else max)(finite, key=values.__getitem__, default=None)
        best_cells = ("-", "-") if best is None else (f"{values[best]:.4g}", str(steps[best]))
        rows.append((key, str(len(values)), f"{values[0]:.4g}", str(steps[0]),
                     f"{values[-1]:.4g}", str(steps[-1]), *best_cells,
                     "min" if lower_is_better else "max"))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_curves(history: History, out_path: str, keys: Sequence[str] = CURVES) -> str:
    """Plots ``keys`` against step into a PNG, one panel each; returns ``out_path``.

    A key without values (no evaluation yet) gets a panel saying so; if no key has a value,
    a ValueError lists the metrics there are. Non-finite points are left out.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'rlvr_jax[analysis]'") from error
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if not keys:
        raise ValueError("plot_curves: no keys to plot")
    curves = {key: series(history, key) for key in keys}
    if not any(steps for steps, _ in curves.values()):
        raise ValueError(
            f"plot_curves: no values for {list(keys)}; available: {metric_keys(history)}")
    figure, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), sharex=True,
                                squeeze=False)
    try:
        for axis, key in zip(axes[:, 0], keys, strict=True):
            points = [(s, v) for s, v in zip(*curves[key], strict=True) if math.isfinite(v)]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o" if len(points) <= 30 else None, markersize=3)
            else:
                axis.text(0.5, 0.5, "no data", transform=axis.transAxes, ha="center")
            axis.set_ylabel(key)
            axis.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        figure.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        figure.savefig(out_path, format="png", dpi=100)
    finally:
        plt.close(figure)
    return out_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", help="the run's --workdir")
    parser.add_argument("--keys", nargs="+", default=None, help="metrics for the table")
    parser.add_argument("--curves", nargs="+", default=list(CURVES), help="metrics to plot")
    args = parser.parse_args(argv)
    history = metric_writer.read_metrics(os.path.join(args.workdir, metric_writer.METRICS_FILE))
    print(summary_table(history, args.keys))
    print("wrote", plot_curves(history, os.path.join(args.workdir, "curves.png"), args.curves))


if __name__ == "__main__":
    main()
