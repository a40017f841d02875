"""Tests for experiments/run_summary.py: the summary table, the curves plot, the command."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.run_summary import plot_curves, summary_table
from rlvr_jax.metric_writer import MetricWriter, read_metrics

HISTORY = [
    {"step": 1, "time": 0.0, "train/reward_mean": 0.1, "train/loss": 0.9, "train/grad_norm": 3},
    {"step": 2, "time": 0.0, "train/reward_mean": 0.5, "train/loss": 0.4, "eval/pass@1": 0.2},
    {"step": 3, "time": 0.0, "train/reward_mean": math.nan, "train/loss": 0.6},
    {"step": 4, "time": 0.0, "train/reward_mean": 0.3, "train/loss": 0.5, "eval/pass@1": 0.6},
    {"step": 5, "time": 0.0, "train/reward_mean": 0.4, "train/loss": "NaN"},
]


def _table_rows(table: str) -> dict[str, list[str]]:
    lines = table.split("\n")
    assert lines[0].split() == [
        "metric", "n", "first", "@step", "last", "@step", "best", "@step", "goal",
    ]  # fmt: skip
    assert set(lines[1]) == {"-"}
    return {line.split()[0]: line.split()[1:] for line in lines[2:]}


def test_summary_table_reports_first_last_and_best_of_the_main_metrics():
    rows = _table_rows(summary_table(HISTORY))
    assert list(rows) == ["train/reward_mean", "train/loss", "eval/pass@1"]  # grad_norm: not main
    assert rows["train/reward_mean"] == ["5", "0.1", "1", "0.4", "5", "0.5", "2", "max"]
    assert rows["train/loss"] == ["5", "0.9", "1", "nan", "5", "0.4", "2", "min"]
    assert rows["eval/pass@1"] == ["2", "0.2", "2", "0.6", "4", "0.6", "4", "max"]


def test_summary_table_with_explicit_keys_and_bad_input():
    rows = _table_rows(summary_table(HISTORY, keys=["train/grad_norm"]))
    assert rows == {"train/grad_norm": ["1", "3", "1", "3", "1", "3", "1", "max"]}
    with pytest.raises(ValueError, match=r"no values for \['eval/pass@8'\]; available"):
        summary_table(HISTORY, keys=["eval/pass@8"])
    with pytest.raises(ValueError, match="empty"):
        summary_table([])


def _write_run(workdir: str) -> None:
    with MetricWriter(workdir, {"lr": 1.0}, tensorboard=False, is_main_process=True) as writer:
        for step in range(1, 11):
            writer.scalars(step, {"train/reward_mean": step / 10})
            if step % 5 == 0:
                writer.scalars(step, {"eval/pass@1": step / 20})


def test_plot_curves_writes_a_png_with_one_panel_per_key(tmp_path):
    from matplotlib import image

    workdir = str(tmp_path)
    _write_run(workdir)
    history = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    out = plot_curves(
        history,
        os.path.join(workdir, "plots", "curves.png"),
        keys=("train/reward_mean", "eval/pass@1", "eval/pass@4"),  # the last one has no data
    )
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(out)
    assert pixels.shape[:2] == (int(2.6 * 3 * 100), 700)
    assert np.ptp(pixels[..., :3]) > 0.5  # something was drawn
    with pytest.raises(ValueError, match=r"no values for.*available: \['train/reward_mean'"):
        plot_curves(history, out, keys=("train/kl",))


def test_command_prints_the_table_and_writes_curves_png(tmp_path):
    workdir = str(tmp_path / "run")
    _write_run(workdir)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "experiments", "run_summary.py"),
                           workdir], capture_output=True, text=True, timeout=300, cwd=root,
                          env=dict(os.environ, PYTHONPATH=root))
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("\nwrote ")[0]
    assert _table_rows(table)["eval/pass@1"] == ["2", "0.25", "5", "0.5", "10", "0.5", "10",
                                                  "max"]
    assert os.path.getsize(os.path.join(workdir, "curves.png")) > 0
