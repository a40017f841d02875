"""Plots and the markdown page of a study report (``experiments/study_report.py``).

PNG files: ``pass_at_k.png`` (pass@k against k before and after training, per method, with
intervals), ``pass_at_k_vs_baseline.png`` (paired differences), ``curves.png`` (every curve of
``study_report.CURVES`` over steps) and ``solve_history.png`` (prompts newly solved and lost).
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments import study_report


def _ks(table: dict[Any, Any]) -> list[int]:
    return sorted(int(k) for k in table)


def _get(table: dict[Any, Any], k: int) -> dict[str, Any]:
    return table[k] if k in table else table[str(k)]


def _number(value: float | None) -> float:
    return float("nan") if value is None else value


def _band(ax, xs, entries, label, **style) -> None:
    means = [_number(e["mean"]) for e in entries]
    ax.plot(xs, means, marker="o", markersize=3, label=label, **style)
    ax.fill_between(xs, [_number(e["ci95"][0]) for e in entries],
                    [_number(e["ci95"][1]) for e in entries], alpha=0.15,
                    color=ax.lines[-1].get_color())


def draw_pass_at_k(summary: dict[str, Any], path: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    methods = summary["methods"]
    first = next(iter(methods.values()))["pass_at_k"]["start"]
    ks = _ks(first)
    _band(ax, ks, [_get(first, k) for k in ks], "base model", color="black", linestyle="--")
    for method, entry in methods.items():
        end = entry["pass_at_k"]["end"]
        _band(ax, ks, [_get(end, k) for k in ks], f"{method} (end)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("held-out pass@k")
    ax.set_title(f"{summary['study']}: pass@k before and after training (95% CI)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_differences(summary: dict[str, Any], path: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, entry in summary["methods"].items():
        diff = entry.get("pass_at_k_minus_baseline", {}).get("end")
        if diff:
            ks = _ks(diff)
            _band(ax, ks, [_get(diff, k) for k in ks], method)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel(f"pass@k minus {summary['baseline']} (paired)")
    ax.set_title("After training, paired on seeds and prompts (95% CI)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_curves(series: dict[str, dict[str, Any]], path: str) -> None:
    keys = list(study_report.CURVES)
    cols = 4
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for method, curve in series[key].items():
            if not curve["steps"]:
                continue
            ax.plot(curve["steps"], curve["mean"], marker="o", markersize=2, label=method)
            ax.fill_between(curve["steps"], curve["low"], curve["high"], alpha=0.15,
                            color=ax.lines[-1].get_color())
        ax.set_title(study_report.CURVES[key], fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Mean over seeds, 95% t-interval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_solve_history(summary: dict[str, Any], path: str) -> None:
    methods = list(summary["methods"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for offset, (field, label) in enumerate((("newly_solved", "newly solved"),
                                             ("lost", "lost"))):
        entries = [summary["methods"][m][field] for m in methods]
        xs = [i + 0.38 * offset for i in range(len(methods))]
        means = [_number(e["mean"]) for e in entries]
        errors = [[_number(e["mean"]) - _number(e["ci95"][0]) for e in entries],
                  [_number(e["ci95"][1]) - _number(e["mean"]) for e in entries]]
        ax.bar(xs, means, width=0.36, yerr=errors, capsize=3, label=label)
    ax.set_xticks([i + 0.19 for i in range(len(methods))], methods)
    n = summary["eval"]["samples_per_prompt"]
    ax.set_ylabel(f"held-out prompts (at k = {n})")
    ax.set_title("Prompts solved vs the base model (mean over seeds, 95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_all(summary: dict[str, Any], series: dict[str, dict[str, Any]], out: str) -> None:
    draw_pass_at_k(summary, os.path.join(out, "pass_at_k.png"))
    draw_differences(summary, os.path.join(out, "pass_at_k_vs_baseline.png"))
    draw_curves(series, os.path.join(out, "curves.png"))
    draw_solve_history(summary, os.path.join(out, "solve_history.png"))


def _fmt(entry: dict[str, Any], digits: int = 3) -> str:
    text = lambda x: "n/a" if x is None else f"{x:.{digits}f}"  # noqa: E731
    low, high = entry["ci95"]
    return f"{text(entry['mean'])} [{text(low)}, {text(high)}]"


def markdown(summary: dict[str, Any], counts: dict[str, Any]) -> str:
    """The report page: settings, tables with intervals, claim checks and the plots."""
    ev = summary["eval"]
    methods = summary["methods"]
    ks = _ks(next(iter(methods.values()))["pass_at_k"]["end"])
    lines = [
        f"# Study `{summary['study']}`", "",
        f"Held-out evaluation: task `{ev['task']}`, {ev['num_prompts']} prompts "
        f"({ev['distinct_questions']} distinct questions), {ev['samples_per_prompt']} samples "
        f"per prompt before and after training; disjoint from the training split: "
        f"{'yes' if ev['disjoint_from_train'] else 'NO'}. Baseline: `{summary['baseline']}`.",
        "",
        "Runs (finished / logged): " + ", ".join(
            f"`{m}` {c['finished']}/{c['logged']}" for m, c in counts.items()) + ".",
        "",
    ]
    if summary["wall_seconds"]:
        lines += [f"Wall time of the study: {summary['wall_seconds'] / 60:.0f} min.", ""]
    lines += ["Intervals are 95%: pass@k, distinct answers, prompt counts and hard-prompt pass@1 "
              "by a bootstrap over prompts and seeds (10,000 replicates; with 3 seeds it covers "
              "about 91% in the synthetic check of `tests/test_study_statistics.py`), "
              "entropy and curves by a Student-t interval over seeds.", "",
              "## What each method changes", ""]
    for method, entry in methods.items():
        changes = ", ".join(f"`{k}={v!r}`" for k, v in entry["differences"].items())
        lines.append(f"- `{method}` (seeds {entry['seeds']}): {changes or 'the baseline'}")
    header = "| method | " + " | ".join(f"pass@{k}" for k in ks) + " |"
    rule = "|---" * (len(ks) + 1) + "|"
    start = next(iter(methods.values()))["pass_at_k"]["start"]
    lines += ["", "## Held-out pass@k", "", header, rule,
              "| base model | " + " | ".join(_fmt(_get(start, k)) for k in ks) + " |"]
    lines += [f"| {m} | " + " | ".join(_fmt(_get(e["pass_at_k"]["end"], k)) for k in ks) + " |"
              for m, e in methods.items()]
    lines += ["", f"Paired difference against `{summary['baseline']}` after training:", "",
              header, rule]
    lines += [f"| {m} | " + " | ".join(_fmt(_get(e["pass_at_k_minus_baseline"]["end"], k))
                                       for k in ks) + " |"
              for m, e in methods.items() if "pass_at_k_minus_baseline" in e]
    n = ev["samples_per_prompt"]
    lines += ["", "![pass@k](pass_at_k.png) ![paired](pass_at_k_vs_baseline.png)", "",
              "## Exploration after training", "",
              f"| method | sampling entropy, held-out | distinct correct answers / prompt | "
              f"newly solved (k={n}) | lost (k={n}) | pass@1 on the hardest quarter |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {_fmt(e['entropy_end'])} | {_fmt(e['distinct_correct_end'])} | "
              f"{_fmt(e['newly_solved'], 1)} | {_fmt(e['lost'], 1)} | "
              f"{_fmt(e['hard_prompts_pass_at_1_end'])} |" for m, e in methods.items()]
    lines += ["", "![solve history](solve_history.png)", "", "## Claim checks", "",
              "| paper | claim | figure | estimate | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {c['paper']} | {c['claim']} | {c['figure']} | {_fmt(c['estimate'])} | "
              f"{c['verdict']} |" for c in summary["claims"]]
    lines += ["", "## Curves over training", "", "![curves](curves.png)", ""]
    return "\n".join(lines)
