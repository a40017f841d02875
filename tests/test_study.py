"""The study runner and its report: planning and pairing checks, a toy study that is interrupted
and resumed, and the report's statistics on a hand-built study directory."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import toy

from experiments import study, study_report
from rlvr_jax import metrics

ROOT = pathlib.Path(__file__).parent.parent
E2E = ROOT / "tests" / "e2e"
RECIPE = "tests/e2e/toy_study_recipe.py"


def write_sweep(path, methods=("grpo", "lens"), seeds=(0, 1), **overrides):
    axes = {key: [value] for key, value in overrides.items()}
    path.write_text(
        "from launch.sweep import product\n"
        "def get_sweep():\n"
        f"    return dict(name='toy_study', config='{RECIPE}:grpo', overrides=product(\n"
        f"        config=[f'{RECIPE}:{{m}}' for m in {list(methods)!r}], seed={list(seeds)!r},\n"
        f"        **{axes!r}))\n")
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return toy.write_model(str(tmp_path_factory.mktemp("toy_model")))


@pytest.fixture
def toy_env(model_dir, monkeypatch):
    monkeypatch.setenv("TOY_MODEL_DIR", model_dir)
    monkeypatch.chdir(ROOT)
    toy.register()
    return model_dir


def test_method_names_drop_the_seed():
    assert study.method_name("config=lens__seed=2") == "lens"
    assert study.method_name("alpha=0.5__seed=1") == "alpha=0.5"
    assert study.method_name("seed=3") == "base"


def test_plan_orders_runs_seed_by_seed_and_names_what_methods_change(tmp_path, toy_env):
    name, runs = study.plan(write_sweep(tmp_path / "s.py"), str(tmp_path / "w"))
    assert name == "toy_study"
    assert [(r.method, r.seed) for r in runs] == [("grpo", 0), ("lens", 0), ("grpo", 1),
                                                   ("lens", 1)]
    changes = study.differences(runs)
    assert changes["grpo"] == {}
    assert changes["lens"]["advantage.estimator"] == "lens"
    assert all(key.startswith("advantage.") for key in changes["lens"])


def test_plan_refuses_runs_that_are_not_paired(tmp_path, toy_env):
    path = tmp_path / "s.py"
    path.write_text(
        "def get_sweep():\n"
        f"    return dict(name='bad', config='{RECIPE}:grpo', overrides=[\n"
        "        {'seed': 0}, {'seed': 1},\n"
        f"        {{'config': '{RECIPE}:lens', 'seed': 0, 'eval.num_prompts': 4}},\n"
        f"        {{'config': '{RECIPE}:lens', 'seed': 1, 'eval.num_prompts': 4}}])\n")
    with pytest.raises(ValueError, match=r"differs from seed=0 in \['eval.num_prompts'\]"):
        study.plan(str(path), str(tmp_path / "w"))
    path.write_text(
        "def get_sweep():\n"
        f"    return dict(name='bad', config='{RECIPE}:grpo', overrides=[\n"
        f"        {{'seed': 0}}, {{'seed': 1}}, {{'config': '{RECIPE}:lens', 'seed': 0}}])\n")
    with pytest.raises(ValueError, match="same seeds"):
        study.plan(str(path), str(tmp_path / "w"))


def test_a_workdir_holding_another_study_is_refused(tmp_path, toy_env):
    workdir = str(tmp_path / "w")
    study._write_plan(workdir, *study.plan(write_sweep(tmp_path / "a.py"), workdir))
    name, runs = study.plan(write_sweep(tmp_path / "b.py", seeds=(0, 1, 2)), workdir)
    with pytest.raises(ValueError, match="another study"):
        study._write_plan(workdir, name, runs)


def test_plan_only_names_the_run_directories_a_cluster_launch_uses(tmp_path, toy_env, capsys):
    from launch import sweep as sweep_lib

    sweep, workdir = write_sweep(tmp_path / "s.py"), str(tmp_path / "w")
    assert study.main([f"--sweep={sweep}", f"--workdir={workdir}", "--plan_only"]) == 0
    with open(os.path.join(workdir, study.STUDY_FILE)) as f:
        planned = {run["name"] for run in json.load(f)["runs"]}
    assert sweep_lib.main([f"--sweep={sweep}", f"--workdir={workdir}"]) == 0
    launched = {line.rsplit("--workdir=", 1)[1].rsplit("/", 1)[1]
                for line in capsys.readouterr().out.splitlines()}
    assert launched == planned and len(planned) == 4
    assert not os.path.exists(os.path.join(workdir, "seed=0__config=grpo"))  # nothing trained


def run_study_cli(sweep, workdir, model_dir, wait=True):
    env = dict(os.environ, TOY_MODEL_DIR=model_dir, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    argv = [sys.executable, str(E2E / "run_study.py"), f"--sweep={sweep}", f"--workdir={workdir}"]
    if wait:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                              cwd=ROOT)
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def study_events(workdir):
    path = os.path.join(workdir, study.LOG_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


@pytest.mark.slow
def test_toy_study_is_interrupted_resumes_without_redoing_runs_and_reports(tmp_path, model_dir):
    sweep = write_sweep(tmp_path / "s.py", total_steps=2, **{
        "eval.samples_per_prompt_at_ends": 8, "eval.at_start": True})
    workdir = str(tmp_path / "study")
    process = run_study_cli(sweep, workdir, model_dir, wait=False)
    deadline = time.time() + 600
    while not any(e["event"] == "run_finished" for e in study_events(workdir)):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=600) == 1
    assert "run the same command to continue" in process.stderr.read()
    first_run = os.path.join(workdir, "config=grpo__seed=0")
    kept = os.stat(os.path.join(first_run, "metrics.jsonl")).st_mtime_ns

    resumed = run_study_cli(sweep, workdir, model_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = study_events(workdir)
    started = [e["run"] for e in events if e["event"] == "run_started"]
    assert started.count("config=grpo__seed=0") == 1  # finished before the interruption
    assert sorted(e["run"] for e in events if e["event"] == "run_finished") == sorted(
        f"config={m}__seed={s}" for m in ("grpo", "lens") for s in (0, 1))
    assert os.stat(os.path.join(first_run, "metrics.jsonl")).st_mtime_ns == kept

    # Paired: the first rollout of a seed is the same for both methods, not across seeds (the
    # stored weights were not changed by the runs trained before).
    _, runs = study_report.load_runs(workdir)
    first = {(r.method, r.seed): next(row for row in r.history if "train/entropy" in row)
             for r in runs}
    for key in ("train/reward_mean", "train/entropy", "train/sampled_token_nll"):
        assert first["grpo", 0][key] == first["lens", 0][key]
        assert first["grpo", 1][key] == first["lens", 1][key]
    assert first["grpo", 0]["train/entropy"] != first["grpo", 1]["train/entropy"]
    assert sum(0 in r.evals for r in runs) == 1  # the base model evaluated once

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "experiments.study_report",
                             f"--study={workdir}", f"--out={out}"], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert report.returncode == 0, report.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["curves.png", "pass_at_k.png", "pass_at_k_vs_baseline.png",
                                       "report.md", "solve_history.png", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    # The end-of-training pass@k is the mean over seeds of each run's logged eval/pass@k.
    for method in ("grpo", "lens"):
        logged = [next(row[f"eval/pass@{k}"] for row in reversed(r.history)
                       if f"eval/pass@{k}" in row)
                  for r in runs if r.method == method for k in (8,)]
        assert summary["methods"][method]["pass_at_k"]["end"]["8"]["mean"] == pytest.approx(
            np.mean(logged))


# -- the report's statistics on a hand-built study ---------------------------------------------


def write_fake_study(root, correct_by_method, n=4, steps=2):
    """A study directory holding only what the report reads: ``correct_by_method[m]`` is
    ``[S, P]`` correct counts of the final evaluation; the base model got 1 of ``n`` on every
    prompt."""
    methods = list(correct_by_method)
    seeds = range(len(next(iter(correct_by_method.values()))))
    runs = [{"name": f"config={m}__seed={s}", "method": m, "seed": s} for s in seeds
            for m in methods]
    os.makedirs(root)
    with open(os.path.join(root, study.STUDY_FILE), "w") as f:
        json.dump({"study": "fake", "runs": runs, "methods": methods,
                   "differences": {m: {} for m in methods}}, f)
    for run in runs:
        workdir = os.path.join(root, run["name"])
        os.makedirs(workdir)
        correct = correct_by_method[run["method"]][run["seed"]]
        P = len(correct)
        config = {"total_steps": steps, "task": {"name": "fake"}, "eval": {"task": ""}}
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config, f)
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for step in range(1, steps + 1):
                f.write(json.dumps({"step": step, "time": 0.0, "train/entropy": 1.0 / step,
                                    "train/entropy_correct": 0.5, "train/entropy_incorrect": 2.0,
                                    "train/reward_mean": 0.5}) + "\n")
            f.write(json.dumps({"step": steps, "time": 0.0, "eval/sampling_entropy": 1.0,
                                "eval/prompts_in_train": 0.0}) + "\n")

        def record(step, counts, P=P):
            return {"step": step, "time": 0.0, "eval": {
                "question": [f"q{p}" for p in range(P)], "samples": [n] * P,
                "correct": [int(c) for c in counts], "distinct_answers": [1] * P,
                "distinct_correct_answers": [int(c > 0) for c in counts],
                "response_length": [3.0] * P}}

        with open(os.path.join(workdir, "records.jsonl"), "w") as f:
            if run["seed"] == 0 and run["method"] == methods[0]:
                f.write(json.dumps(record(0, [1] * P)) + "\n")
            f.write(json.dumps(record(steps, correct)) + "\n")


def test_report_pass_at_k_and_paired_differences_on_a_hand_built_study(tmp_path):
    rng = np.random.default_rng(0)
    grpo = rng.integers(0, 4, (3, 20))  # [S, P] of n = 4; at most 3 so +1 stays valid
    root = str(tmp_path / "study")
    write_fake_study(root, {"grpo": grpo, "better": grpo + 1})
    summary, _ = study_report.summarize(root)
    for k in (1, 2, 4):
        expected = np.mean(metrics.pass_at_k(4, grpo, k))
        assert summary["methods"]["grpo"]["pass_at_k"]["end"][k]["mean"] == pytest.approx(expected)
        # pass@k of the base model: every prompt 1 correct of 4
        assert summary["methods"]["grpo"]["pass_at_k"]["start"][k]["mean"] == pytest.approx(
            metrics.pass_at_k(4, 1, k))
        # Paired on the same seeds and prompts: the difference's mean is exact and its
        # interval lies inside the range of the per-(seed, prompt) differences.
        per_pair = metrics.pass_at_k(4, grpo + 1, k) - metrics.pass_at_k(4, grpo, k)
        diff = summary["methods"]["better"]["pass_at_k_minus_baseline"]["end"][k]
        assert diff["mean"] == pytest.approx(per_pair.mean())
        assert per_pair.min() <= diff["ci95"][0] <= diff["ci95"][1] <= per_pair.max()
    assert summary["methods"]["better"]["pass_at_k_minus_baseline"]["end"][1]["ci95"][0] > 0
    claims = {c["claim"] for c in summary["claims"]}
    assert not claims  # no seed paper's method in this study
    assert summary["eval"] == {"task": "fake", "num_prompts": 20, "distinct_questions": 20,
                               "samples_per_prompt": 4, "disjoint_from_train": True}
    solved_base = np.ones(20, bool)  # the base model solved every prompt (1 of 4)
    lost = (grpo == 0) & solved_base
    assert summary["methods"]["grpo"]["lost"]["mean"] == pytest.approx(lost.sum(1).mean())
    assert summary["methods"]["grpo"]["newly_solved"]["mean"] == 0


def test_report_claim_verdicts_follow_the_interval(tmp_path):
    rng = np.random.default_rng(1)
    grpo = rng.integers(0, 3, (3, 24))
    root = str(tmp_path / "study")
    write_fake_study(root, {"grpo": grpo, "progrpo": grpo + 1, "lens": grpo})
    summary, _ = study_report.summarize(root)
    verdicts = {(c["method"], c["claim"]): c["verdict"] for c in summary["claims"]}
    assert verdicts["progrpo", "higher pass@k at large k"] == "supported"
    assert verdicts["lens", "gains on the hardest prompts"].startswith("not shown")
    # Identical per-seed training entropy: a zero-width interval at 0 shows nothing.
    assert verdicts["progrpo", "higher entropy"].startswith("not shown")


def test_report_refuses_an_unknown_baseline_and_an_empty_study(tmp_path):
    root = str(tmp_path / "study")
    write_fake_study(root, {"grpo": np.ones((2, 3), int)})
    with pytest.raises(ValueError, match="baseline 'dapo'"):
        study_report.summarize(root, baseline="dapo")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / study.STUDY_FILE).write_text(json.dumps(
        {"study": "x", "runs": [], "methods": [], "differences": {}}))
    with pytest.raises(ValueError, match="no run has logged"):
        study_report.summarize(str(empty))
