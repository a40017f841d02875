"""The report of a study (finished or partial): ``summary.json``, ``report.md`` and PNG plots.

    python -m experiments.study_report --study=studies/exploration_smollm2 \\
        --out=experiments/results/exploration_smollm2 [--baseline=grpo]

Reads the study directory ``experiments/study.py`` writes (``study.json``, and per run
``config.json``, ``metrics.jsonl`` and the per-prompt evaluation ``records.jsonl``). Only runs
whose final evaluation is recorded count for the end-of-training figures; curves use every
logged step.

- Held-out pass@k, ``k = 1, 2, 4, ..., n``, before training (the base model: every run's
  step-0 evaluation is the same, and one is used) and after it, per method: the mean over seeds
  and prompts of each prompt's unbiased pass@k (``metrics.pass_at_k(n, c, k)``) with a 95%
  bootstrap interval over prompts and seeds (``study_statistics.bootstrap_interval``); paired
  differences against the baseline method on the same seeds and prompts.
- Curves over training steps (mean and 95% Student-t interval over seeds): full-vocabulary
  entropy, the same over correct and over incorrect responses, sampled-token NLL,
  Cov(log-prob, advantage), distinct (correct) answers per prompt, all-correct / all-wrong /
  mixed group fractions, response length and held-out pass@1.
- Solve history at the largest k: per seed, the held-out prompts a method solves (at least one
  correct sample of ``n``) that the base model did not (``newly_solved``) and those it lost.
- Claim checks: each paper's claimed direction against the baseline, with the interval it
  rests on.

``summary.json``::

    {"study": name,
     "eval": {"task", "num_prompts", "distinct_questions", "samples_per_prompt",
              "disjoint_from_train": bool},
     "baseline": method,
     "methods": {method: {
         "seeds": [...],
         "pass_at_k": {"start" | "end": {k: {"mean", "ci95": [lo, hi]}}},
         "pass_at_k_minus_baseline": {"end": {k: {"mean", "ci95"}}},
         "entropy_end": {"mean", "ci95"},            # held-out sampling entropy, final eval
         "distinct_correct_end": {"mean", "ci95"},   # per prompt, final eval
         "newly_solved": {...}, "lost": {...},       # prompt counts at k = n
         "hard_prompts_pass_at_1_end": {...},        # the quarter the base model solves least
         "differences": {config key: value}}},       # what the method changes (study.json)
     "claims": [{"paper", "claim", "figure", "estimate", "verdict"}],
     "wall_seconds": float | null}

Intervals: ``ci95`` of pass@k, distinct answers, solve counts and hard-prompt pass@1 are
bootstrap intervals over prompts and seeds (10,000 replicates); those of entropy and curves
are Student-t intervals over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import study as study_lib
from experiments.study_statistics import Estimate, bootstrap_interval, seed_interval
from rlvr_jax import evaluation, metric_writer, metrics

CURVES = {
    "train/entropy": "entropy (full vocabulary)",
    "train/entropy_correct": "entropy, correct responses",
    "train/entropy_incorrect": "entropy, incorrect responses",
    "train/sampled_token_nll": "sampled-token NLL",
    "update/cov_logp_advantage": "Cov(log-prob, advantage)",
    "train/distinct_answers": "distinct answers / prompt",
    "train/distinct_correct_answers": "distinct correct answers / prompt",
    "train/frac_all_correct": "all-correct groups",
    "train/frac_all_wrong": "all-wrong groups",
    "train/frac_mixed": "mixed groups",
    "train/response_length_mean": "response length (tokens)",
    "eval/pass@1": "held-out pass@1",
}
END_WINDOW = 3
"""Training-curve figures "at the end" average the last this many steps (one step's 16
samples are noisy)."""


@dataclasses.dataclass
class Run:
    name: str
    method: str
    seed: int
    config: dict[str, Any]
    history: list[dict[str, Any]]  # metrics.jsonl
    evals: dict[int, dict[str, list[Any]]]  # step -> evaluation.prompt_records

    @property
    def finished(self) -> bool:
        return self.config["total_steps"] in self.evals


def load_runs(study_dir: str) -> tuple[dict[str, Any], list[Run]]:
    """The study plan (``study.json``) and every run that has logged anything."""
    with open(os.path.join(study_dir, study_lib.STUDY_FILE), encoding="utf-8") as f:
        plan = json.load(f)
    runs = []
    for entry in plan["runs"]:
        workdir = os.path.join(study_dir, entry["name"])
        paths = {name: os.path.join(workdir, name) for name in (
            metric_writer.CONFIG_FILE, metric_writer.METRICS_FILE, metric_writer.RECORDS_FILE)}
        if not all(os.path.exists(p) for p in paths.values()):
            continue
        with open(paths[metric_writer.CONFIG_FILE], encoding="utf-8") as f:
            config = json.load(f)
        records = metric_writer.read_metrics(paths[metric_writer.RECORDS_FILE])
        runs.append(Run(entry["name"], entry["method"], entry["seed"], config,
                        metric_writer.read_metrics(paths[metric_writer.METRICS_FILE]),
                        {r["step"]: r["eval"] for r in records if "eval" in r}))
    return plan, runs


def base_evaluation(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """The step-0 evaluation (the base model); raises if two runs recorded different ones."""
    found = [run.evals[0] for run in runs if 0 in run.evals]
    if not found:
        raise ValueError("no run recorded an evaluation before training (eval.at_start)")
    if any(other != found[0] for other in found[1:]):
        raise ValueError("runs disagree on the base model's evaluation: not the same prompts, "
                         "key or weights")
    return found[0]


def pass_at_k_values(records: Sequence[dict[str, list[Any]]], k: int) -> np.ndarray:
    """``[S, P]`` per-prompt unbiased pass@k of one evaluation per seed."""
    return np.stack([metrics.pass_at_k(np.asarray(r["samples"]), np.asarray(r["correct"]), k)
                     for r in records])


def _end_records(runs: Sequence[Run], method: str, seeds: Sequence[int]) -> list[dict]:
    by_seed = {run.seed: run for run in runs if run.method == method and run.finished}
    return [by_seed[s].evals[by_seed[s].config["total_steps"]] for s in seeds]


def _curve_end(run: Run, key: str) -> float:
    values = [row[key] for row in run.history if key in row]
    return float(np.nanmean(values[-END_WINDOW:])) if values else float("nan")


def _last_value(run: Run, key: str) -> float:
    values = [row[key] for row in run.history if key in row]
    return float(values[-1]) if values else float("nan")


def curves(runs: Sequence[Run], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{metric: {method: {"steps", "mean", "low", "high"}}}`` over seeds, per logged step.
    Held-out pass@1 starts at step 0 from the base model's evaluation for every run."""
    base = base_evaluation(runs)
    start = {"eval/pass@1": float(np.mean(pass_at_k_values([base], 1)))}
    out: dict[str, dict[str, Any]] = {}
    for key in CURVES:
        out[key] = {}
        for method in methods:
            series = [{**({0: start[key]} if key in start else {}),
                       **{row["step"]: row[key] for row in run.history if key in row}}
                      for run in runs if run.method == method]
            steps = sorted({step for s in series for step in s})
            estimates = [seed_interval(np.array([s.get(step, np.nan) for s in series]))
                         for step in steps]
            out[key][method] = {"steps": steps, "mean": [e.mean for e in estimates],
                                "low": [e.low for e in estimates],
                                "high": [e.high for e in estimates]}
    return out


def verdict(estimate: Estimate, expected_sign: int) -> str:
    """``supported`` when the interval excludes 0 on the expected side, ``contradicted`` when
    it excludes 0 on the other, ``not shown (interval includes 0)`` when it holds 0, and
    ``undetermined (one seed)`` when there is no interval."""
    if not (np.isfinite(estimate.low) and np.isfinite(estimate.high)):
        return "undetermined (one seed)"
    if estimate.low > 0 or estimate.high < 0:
        return "supported" if np.sign(estimate.mean) == expected_sign else "contradicted"
    return "not shown (interval includes 0)"


def summarize(study_dir: str, baseline: str = "grpo") -> tuple[dict[str, Any], list[Run]]:
    """``summary.json`` (see the module docstring) and the runs it was computed from."""
    plan, runs = load_runs(study_dir)
    if not runs:
        raise ValueError(f"{study_dir}: no run has logged anything yet")
    methods = [m for m in plan["methods"] if any(r.method == m and r.finished for r in runs)]
    if baseline not in plan["methods"]:
        raise ValueError(f"baseline {baseline!r} is not a method of the study: {plan['methods']}")
    base = base_evaluation(runs)
    n = base["samples"][0]
    ks = evaluation.pass_at_k_ks(n)
    any_config = runs[0].config
    in_train = [v for v in (_last_value(run, "eval/prompts_in_train") for run in runs)
                if np.isfinite(v)]
    summary: dict[str, Any] = {
        "study": plan["study"],
        "eval": {
            "task": any_config["eval"]["task"] or any_config["task"]["name"],
            "num_prompts": len(base["question"]),
            "distinct_questions": len(set(base["question"])),
            "samples_per_prompt": n,
            "disjoint_from_train": bool(in_train) and all(v == 0 for v in in_train),
        },
        "baseline": baseline,
        "methods": {},
        "claims": [],
        "wall_seconds": wall_seconds(study_dir),
    }
    base_values = {k: pass_at_k_values([base], k) for k in ks}
    base_solved = np.asarray(base["correct"])[None, :] > 0  # [1, P]
    hard = np.argsort(np.asarray(base["correct"]), kind="stable")[: max(1, len(base["correct"])
                                                                        // 4)]
    finished_seeds = {m: sorted(r.seed for r in runs if r.method == m and r.finished)
                      for m in methods}
    for method in methods:
        seeds = finished_seeds[method]
        end = _end_records(runs, method, seeds)
        solved = np.stack([np.asarray(r["correct"]) > 0 for r in end])  # [S, P]
        entry: dict[str, Any] = {
            "seeds": seeds,
            "pass_at_k": {
                "start": {k: bootstrap_interval(base_values[k]).as_dict() for k in ks},
                "end": {k: bootstrap_interval(pass_at_k_values(end, k)).as_dict() for k in ks},
            },
            "entropy_end": seed_interval(np.array([
                _last_value(r, "eval/sampling_entropy") for s in seeds for r in runs
                if r.method == method and r.seed == s])).as_dict(),
            "distinct_correct_end": bootstrap_interval(np.stack(
                [r["distinct_correct_answers"] for r in end])).as_dict(),
            "newly_solved": _count(solved & ~base_solved),
            "lost": _count(~solved & base_solved),
            "hard_prompts_pass_at_1_end": bootstrap_interval(
                pass_at_k_values(end, 1)[:, hard]).as_dict(),
            "differences": plan["differences"].get(method, {}),
        }
        summary["methods"][method] = entry
    if baseline in methods:
        for method in methods:
            common = [s for s in finished_seeds[method] if s in finished_seeds[baseline]]
            if method == baseline or not common:
                continue
            ours, theirs = (_end_records(runs, m, common) for m in (method, baseline))
            summary["methods"][method]["pass_at_k_minus_baseline"] = {"end": {
                k: bootstrap_interval(pass_at_k_values(ours, k) - pass_at_k_values(theirs, k))
                .as_dict() for k in ks}}
        summary["claims"] = claims(runs, methods, baseline, finished_seeds, ks, hard)
    return summary, runs


def _count(indicator: np.ndarray) -> dict[str, Any]:
    """Prompt count (mean over seeds) with the bootstrap interval, from ``[S, P]`` booleans."""
    return bootstrap_interval(indicator.astype(np.float64) * indicator.shape[1]).as_dict()


def _paired_seeds(runs, method, baseline, finished_seeds, figure) -> Estimate:
    """Per-seed ``figure(run)`` of ``method`` minus the baseline's, t-interval over seeds."""
    common = [s for s in finished_seeds[method] if s in finished_seeds[baseline]]
    pick = {(r.method, r.seed): r for r in runs}
    return seed_interval(np.array([figure(pick[method, s]) - figure(pick[baseline, s])
                                   for s in common]))


def claims(runs, methods, baseline, finished_seeds, ks, hard) -> list[dict[str, Any]]:
    """Each seed paper's claimed direction against the baseline, tested on this study."""
    out = []
    n = ks[-1]

    def paired_prompts(method, values_of) -> Estimate:
        common = [s for s in finished_seeds[method] if s in finished_seeds[baseline]]
        ours, theirs = (_end_records(runs, m, common) for m in (method, baseline))
        return bootstrap_interval(values_of(ours) - values_of(theirs))

    def add(paper, method, claim, figure, estimate, sign):
        out.append({"paper": paper, "method": method, "claim": claim, "figure": figure,
                    "estimate": estimate.as_dict(), "verdict": verdict(estimate, sign)})

    def entropy_end(key):
        return lambda run: _curve_end(run, key)

    if "progrpo" in methods:
        add("ProGRPO", "progrpo", "higher pass@k at large k", f"pass@{n} end - {baseline}",
            paired_prompts("progrpo", lambda r: pass_at_k_values(r, n)), +1)
        add("ProGRPO", "progrpo", "higher entropy", f"training entropy (last {END_WINDOW} "
            f"steps) - {baseline}", _paired_seeds(runs, "progrpo", baseline, finished_seeds,
                                                  entropy_end("train/entropy")), +1)
        add("ProGRPO", "progrpo", "at similar pass@1 (a drop would count against it)",
            f"pass@1 end - {baseline}", paired_prompts("progrpo", lambda r: pass_at_k_values(
                r, 1)), +1)
    if "asym_grpo" in methods:
        add("AsymGRPO", "asym_grpo", "entropy kept on correct responses", "training entropy of "
            f"correct responses (last {END_WINDOW} steps) - {baseline}",
            _paired_seeds(runs, "asym_grpo", baseline, finished_seeds,
                          entropy_end("train/entropy_correct")), +1)
        add("AsymGRPO", "asym_grpo", "entropy reduced on incorrect responses", "training "
            f"entropy of incorrect responses (last {END_WINDOW} steps) - {baseline}",
            _paired_seeds(runs, "asym_grpo", baseline, finished_seeds,
                          entropy_end("train/entropy_incorrect")), -1)
        add("AsymGRPO", "asym_grpo", "better pass@1", f"pass@1 end - {baseline}",
            paired_prompts("asym_grpo", lambda r: pass_at_k_values(r, 1)), +1)
    if "lens" in methods:
        add("LENS", "lens", "gains on the hardest prompts", f"pass@1 end on the {len(hard)} "
            f"prompts the base model solves least - {baseline}",
            paired_prompts("lens", lambda r: pass_at_k_values(r, 1)[:, hard]), +1)
        add("LENS", "lens", "solves prompts the baseline cannot", f"prompts solved at k={n} "
            f"- {baseline}", paired_prompts("lens", lambda r: np.stack(
                [np.asarray(x["correct"]) > 0 for x in r]).astype(float) * len(r[0]["correct"])),
            +1)
    return out


def wall_seconds(study_dir: str) -> float | None:
    """Seconds the study's sessions ran (each from ``study_started`` to its last event)."""
    path = os.path.join(study_dir, study_lib.LOG_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        events = [json.loads(line) for line in f if line.strip()]
    total, began, last = 0.0, None, None
    for event in events:
        if event["event"] == "study_started":
            if began is not None:
                total += last - began
            began = event["time"]
        last = event["time"]
    return total + (last - began) if began is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.study_report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True, help="the study's workdir")
    parser.add_argument("--out", required=True, help="directory for summary.json, report.md, PNGs")
    parser.add_argument("--baseline", default="grpo", help="method the others are compared to")
    args = parser.parse_args(argv)
    from experiments import study_plots

    try:
        summary, runs = summarize(args.study, args.baseline)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    series = curves(runs, list(summary["methods"]))
    study_plots.draw_all(summary, series, args.out)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
        f.write(study_plots.markdown(summary, runs_description(runs)))
    print(f"report written to {args.out}", file=sys.stderr)
    return 0


def runs_description(runs: Sequence[Run]) -> dict[str, Any]:
    """Counts for the report's header: runs logged and finished per method."""
    methods = list(dict.fromkeys(r.method for r in runs))
    return {m: {"logged": sum(r.method == m for r in runs),
                "finished": sum(r.method == m and r.finished for r in runs)} for m in methods}


if __name__ == "__main__":
    sys.exit(main())
