"""The training loop end to end: CLI, logs, checkpoints, resume, preemption, learning, configs."""

import glob
import importlib.util
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import toy

from rlvr_jax import config as config_lib
from rlvr_jax import (
    logprobs,
    models,
    optimizer,
    recipes,
    rollout,
    sharding,
    tasks,
    train,
    train_step,
)

E2E = pathlib.Path(__file__).parent / "e2e"


ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return toy.write_model(str(tmp_path_factory.mktemp("toy_model")))


def cli(workdir, model_dir, *overrides, wait=True):
    env = dict(os.environ, TOY_MODEL_DIR=model_dir, JAX_PLATFORMS="cpu")
    argv = [sys.executable, str(E2E / "run_train.py"), f"--config={E2E / 'toy_recipe.py'}",
            f"--workdir={workdir}", *overrides]
    if not wait:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def logged_steps(workdir):
    return [row["step"] for row in read_metrics(workdir) if "train/reward_mean" in row]


def checkpoint_steps(workdir):
    return sorted(int(p.name) for p in pathlib.Path(workdir, "checkpoints").iterdir()
                  if p.name.isdigit())


@pytest.mark.slow
def test_cli_runs_logs_checkpoints_and_resumes(tmp_path, model_dir):
    workdir = str(tmp_path / "run")
    first = cli(workdir, model_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert logged_steps(workdir) == [1, 2, 3]
    assert checkpoint_steps(workdir) == [2, 3]
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert "3/3" in first.stderr and "reward=" in first.stderr  # the tqdm progress bar
    assert "is illegal" not in first.stderr  # TensorBoard gets legal tag names, no warnings
    assert not re.search(r"^I\d{4} ", first.stderr, re.M), first.stderr[-2000:]  # no INFO flood
    summary = subprocess.run([sys.executable, str(ROOT / "experiments" / "run_summary.py"),
                              workdir], capture_output=True, text=True, timeout=300, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert summary.returncode == 0 and "train/reward_mean" in summary.stdout, summary.stderr
    assert os.path.getsize(os.path.join(workdir, "curves.png")) > 0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    for key in ("train/reward_mean", "train/pass@1", "train/entropy", "update/loss",
                "update/grad_norm", "update/cov_logp_advantage",
                "train/sampler_trainer_logp_gap_max", "time/tokens_per_second"):
        assert key in record, key
    # The sampler and the trainer score the same tokens with the same code path.
    assert record["train/sampler_trainer_logp_gap_max"] < 1e-4

    # Resumed with the scanned-layers decode loop (rollout.unstack_decode_layers off).
    second = cli(workdir, model_dir, "--config.total_steps=5",
                 "--config.rollout.unstack_decode_layers=False")
    assert second.returncode == 0, second.stderr[-3000:]
    assert logged_steps(workdir) == [1, 2, 3, 4, 5]  # continued at step 4, no duplicates
    assert checkpoint_steps(workdir)[-1] == 5
    resumed = [row for row in read_metrics(workdir) if "train/reward_mean" in row][3]
    assert resumed["step"] == 4 and resumed["train/sampler_trainer_logp_gap_max"] < 1e-4


@pytest.mark.slow
def test_sigterm_leaves_a_resumable_checkpoint_and_no_partial_files(tmp_path, model_dir):
    workdir = str(tmp_path / "run")
    process = cli(workdir, model_dir, "--config.total_steps=200",
                  "--config.checkpoint.save_every_steps=1000", wait=False)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and (not os.path.exists(metrics) or len(logged_steps(workdir))
                                      < 2):
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    steps = logged_steps(workdir)
    assert checkpoint_steps(workdir) == [steps[-1]] and steps[-1] < 200
    leftovers = [p for p in pathlib.Path(workdir, "checkpoints").rglob("*")
                 if "tmp" in p.name.lower()]
    assert not leftovers, leftovers
    resumed = cli(workdir, model_dir, f"--config.total_steps={steps[-1] + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_steps(workdir) == list(range(1, steps[-1] + 2))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["grpo", "progrpo"])
def test_training_reward_rises_on_a_learnable_task(tmp_path, model_dir, variant):
    toy.register()
    config = toy.toy_config(model_dir)
    recipes.apply_variant(config, variant)
    config.total_steps = 30
    config.eval.every_steps = 0
    config.logging.tensorboard = False
    train.run(config, str(tmp_path / variant))
    rewards = [row["train/reward_mean"] for row in read_metrics(tmp_path / variant)
               if "train/reward_mean" in row]
    assert len(rewards) == 30
    early, late = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert late > early + 0.3, (early, late, rewards)


def load_recipe(path):
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPES = sorted(str(p) for p in (ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("path", RECIPES, ids=[pathlib.Path(p).stem for p in RECIPES])
def test_every_recipe_and_variant_validates(path):
    module = load_recipe(path)
    variants = getattr(module, "VARIANTS", None) or list(recipes.VARIANTS)
    for variant in variants:
        config_lib.validate(module.get_config(variant))


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown variant 'gpro'.*grpo.*lens"):
        load_recipe(str(ROOT / "configs" / "smollm2_arith.py")).get_config("gpro")


def test_config_typo_suggests_the_closest_key():
    config = config_lib.base_config()
    with pytest.raises(AttributeError, match=r'Did you mean "group_size" instead of "group_sise"'):
        config.rollout.group_sise = 4
    with pytest.raises(AttributeError, match=r'Did you mean "learning_rate"'):
        config.optim.learning_rat = 1e-3
    config.loss.clip_high = 0.28  # existing keys keep their type
    config.optim.learning_rate = 1
    assert isinstance(config.optim.learning_rate, float)


def test_cli_rejects_a_typo_before_loading_anything(tmp_path, model_dir):
    done = cli(str(tmp_path / "run"), model_dir, "--config.rollout.group_sise=4")
    assert done.returncode != 0
    assert "unknown config key in --config.rollout.group_sise=4" in done.stderr
    assert 'Did you mean "group_size"' in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


BAD_VALUES = [  # (variant, {"section.key": value}, message)
    ("grpo", {"advantage.estimator": "grpoo"}, "unknown advantage estimator 'grpoo'"),
    ("progrpo", {"advantage.options": {"alhpa": 1.0}},
     r"advantage\.options\.alhpa' for progrpo; did you mean advantage\.options\.alpha"),
    # grpo's options left behind by a bare estimator change: the message names the way out
    ("grpo", {"advantage.estimator": "asym_grpo"},
     r"options\.eps' for asym_grpo.*a recipe variant"),
    ("grpo", {"loss.dual_clip": 0.5}, r"loss\.dual_clip must be > 1"),
    ("grpo", {"optim.name": "lion"}, r"optim\.name='lion'"),
    ("grpo", {"eval.sampling.top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ("grpo", {"batching.epochs": 0}, r"batching\.epochs must be >= 1"),
    # binary-reward estimators refuse shaped rewards
    ("asym_grpo", {"rollout.overlong_buffer": 16}, r"'asym_grpo' requires binary rewards"),
    ("lens", {"rollout.overlong_buffer": 16}, r"'lens' requires binary rewards"),
    ("nsr", {"rollout.overlong_buffer": 16}, r"'nsr' requires binary rewards.*grpo_passk"),
    ("grpo", {"loss.objective": "ppo"}, r"unknown loss\.objective 'ppo'"),
    ("gspo", {"loss.dual_clip": 2.0}, r"loss\.dual_clip applies to loss\.objective='clipped'"),
    ("kl_cov", {"loss.kl_cov_ratio": 0.0}, r"loss\.kl_cov_ratio must be in \(0, 1\]"),
    ("grpo", {"rollout.correction": "token", "rollout.old_logp_source": "sampler"},
     r"rollout\.correction='token'.*would count twice"),
    ("grpo", {"rollout.correction": "sequence", "rollout.correction_cap": 0.5},
     r"rollout\.correction_cap must be >= 1"),
    ("progrpo", {"advantage.prompt_tokens": "system_prompt"},
     r"advantage\.prompt_tokens='system_prompt'.*question"),
    ("lens", {"advantage.options.all_wrong_weighting": "per_response",
              "loss.aggregation": "seq_mean_token_mean"}, r"'per_response'.*divides by it again"),
    ("grpo", {"rollout.group_size": 3, "batching.micro_batches": 16}, "do not split"),
]


@pytest.mark.parametrize(("variant", "overrides", "message"), BAD_VALUES)
def test_validate_names_bad_values(variant, overrides, message):
    config = recipes.apply_variant(config_lib.base_config(), variant)
    for key, value in overrides.items():
        if key == "advantage.options":  # a whole (locked) options dictionary replaced
            config.advantage.options = value
        else:
            config.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_validate_accepts_the_documented_readings():
    config = recipes.apply_variant(config_lib.base_config(), "progrpo")
    config.rollout.overlong_buffer = 16
    config_lib.validate(config)  # ProGRPO documents its reading of a shaped reward
    config = recipes.apply_variant(config_lib.base_config(), "lens")
    config.advantage.options.all_wrong_weighting = "per_response"
    config_lib.validate(config)  # token_mean: the paper's per-response reading, exactly


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dapo_recipe", "lens", "asym_grpo", "reinforce_pp"])
def test_other_variants_run_end_to_end(tmp_path, model_dir, variant):
    toy.register()
    config = toy.toy_config(model_dir)
    recipes.apply_variant(config, variant)
    config.total_steps = 3
    config.rollout.max_sampling_rounds = 2
    config.logging.tensorboard = False
    last = train.run(config, str(tmp_path / variant))
    rows = [row for row in read_metrics(tmp_path / variant) if "train/reward_mean" in row]
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert all(np.isfinite(v) for k, v in row.items() if k.startswith(("train/", "update/")))
        if variant == "dapo_recipe":  # dynamic sampling: rounds bounded, kept groups counted
            assert 1 <= row["train/sampling_rounds"] <= 2
            assert 0 <= row["train/mixed_groups_kept"] <= config.rollout.prompts_per_step
            assert row["train/kept/shaped_reward_mean"] <= row["train/kept/reward_mean"]
            assert row["train/sampled_groups"] >= config.rollout.prompts_per_step
    assert "eval/pass@1" in last


BASELINE_VARIANTS = [  # (variant, rollout.correction): every new estimator and loss; the
    # correction is on everywhere, so the estimators with per-response advantages share one
    # compiled update
    ("grpo_passk", "token"), ("psr", "sequence"), ("nsr", "token"), ("w_reinforce", "sequence"),
    ("entropy_advantage", "token"), ("gspo", "sequence"), ("cispo", "token"),
    ("gmpo", "sequence"), ("clip_cov", "token"), ("kl_cov", "sequence"),
]


@pytest.mark.slow
def test_baseline_variants_run_end_to_end_on_one_model(model_dir):
    """One RL step of every new variant, cycling through them on one toy model, sampler and
    train state (the estimators share the compiled update; each loss compiles its own): the
    rollout (sampling, verification, log-probs and entropies, the estimator, correction
    weights) and the update give finite figures, and the correction weights are ~1 because the
    sampler and the trainer score the tokens alike."""
    toy.register()
    config = toy.toy_config(model_dir)
    model_config, params = models.load(model_dir)
    tokenizer = models.load_tokenizer(model_dir)
    mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_from_config(None)
    tx, _ = optimizer.make_optimizer(**config.optim)
    state, shardings = train_step.create_train_state(model_config, tx, jax.random.key(0), mesh,
                                                     rules, params=params)
    logprob_fn = logprobs.make_logprob_fn(model_config, mesh, rules, shardings.params,
                                          chunk_size=config.batching.logprob_chunk_size)
    task = tasks.get(config.task.name)
    sampler = rollout.Sampler(model_config, tokenizer, task, max_prompt_len=16, prompt_bucket=8,
                              length_bucket=4, eos_ids=(tokenizer.eos_token_id,),
                              pad_id=tokenizer.pad_token_id, unstack_layers=True)
    stream = rollout.PromptStream(task, "train", seed=0)
    steps: dict[str, object] = {}
    for i, (variant, correction) in enumerate(BASELINE_VARIANTS):
        config = recipes.apply_variant(toy.toy_config(model_dir), variant)
        config.rollout.correction = correction
        config_lib.validate(config)
        if config.loss.objective not in steps:
            steps[config.loss.objective] = train_step.make_train_step(
                config, model_config, tx, mesh, rules, shardings)
        batch, figures, _ = rollout.collect(sampler, stream, state.params, jax.random.key(i),
                                            config, logprob_fn)
        state, update = steps[config.loss.objective](
            state, sharding.place_batch(batch, mesh, rules))
        figures |= {f"update/{k}": float(v) for k, v in update.items()}
        assert all(np.isfinite(v) for v in figures.values()), (variant, figures)
        assert abs(figures["correction_weight_mean"] - 1) < 1e-3, (variant, figures)
        assert figures["correction_frac_capped"] == 0.0
        if variant in ("clip_cov", "kl_cov"):
            assert "update/cov_selected_frac" in figures
    assert int(state.step) == len(BASELINE_VARIANTS)


@pytest.mark.parametrize("path", RECIPES, ids=[pathlib.Path(p).stem for p in RECIPES])
def test_command_lines_in_recipe_docstrings_parse(path, monkeypatch):
    """Every ``--config.<key>=<value>`` a recipe's docstring shows is accepted by config_flags."""
    from absl import flags
    from ml_collections import config_flags

    doc = load_recipe(path).__doc__ or ""
    overrides = [f"--config.{key}={value.strip(chr(39))}" for key, value in
                 re.findall(r"--config\.([\w.\[\]]+)=(\S+)", doc)
                 if "..." not in value]
    argv = ["train", f"--config={path}", *overrides]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags defines override flags from argv
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True)
    flag_values(argv)
    assert len(overrides) >= ("math" in path)
    config_lib.validate(flag_values.config)


def evaluated_prompts(monkeypatch, config, workdir):
    """The example ids and key of the run's evaluation at step 0 (no training step)."""
    seen = []

    def record(sampler, params, examples, key, *args, **kwargs):
        seen.append(([example["id"] for example in examples], jax.random.key_data(key)))
        return {"pass@1": 0.0}, None

    monkeypatch.setattr(train.evaluation, "evaluate", record)
    monkeypatch.setattr(train, "_sample_texts", lambda groups, count: {})
    config.total_steps, config.eval.at_start = 0, True
    config.logging.tensorboard = False
    train.run(config, str(workdir))
    (prompts, key), = seen
    return prompts, np.asarray(key)


def test_runs_of_any_seed_and_estimator_evaluate_the_same_prompts(tmp_path, model_dir,
                                                                   monkeypatch):
    toy.register()
    runs = []
    for seed, variant in [(0, "grpo"), (1, "grpo"), (2, "progrpo")]:
        config = recipes.apply_variant(toy.toy_config(model_dir), variant)
        config.seed = seed
        runs.append(evaluated_prompts(monkeypatch, config, tmp_path / f"{seed}"))
    (prompts, key), *others = runs
    assert len(prompts) == 8
    for other_prompts, other_key in others:
        assert other_prompts == prompts
        np.testing.assert_array_equal(other_key, key)
    config = toy.toy_config(model_dir)
    config.eval.seed = 5
    assert evaluated_prompts(monkeypatch, config, tmp_path / "eval_seed")[0] != prompts


def test_run_refuses_evaluation_prompts_from_the_training_split(tmp_path, model_dir):
    toy.register()
    config = toy.toy_config(model_dir)
    config.eval.allow_train_overlap = False  # the toy task's splits hold the same questions
    with pytest.raises(ValueError, match=r"evaluation set: 8 prompts, 3 distinct questions, 8 of "
                                         r"the prompts in the training split toy_first_letter/"
                                         r"train.*eval\.allow_train_overlap=True"):
        train.run(config, str(tmp_path / "run"))


def test_held_out_report_compares_another_eval_task_with_the_training_split(capsys):
    sums = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+",),
                allow_negation=False, allow_parentheses=False, size=200, num_workers=1)
    task = tasks.get("basic_arithmetic", **sums)
    unspaced = tasks.get("rg:basic_arithmetic", whitespace="no_space", **sums)
    config = config_lib.base_config()
    for split in ("test", "train"):  # "Calculate 3+4." is the training question "3 + 4"
        examples = unspaced.examples(split, n=16)
        training = {e["question"].replace(" ", "") for e in task.examples("train")}
        in_train = sum(e["question"].replace(" ", "") in training for e in examples)
        assert in_train == (16 if split == "train" else 0)
        if in_train:
            with pytest.raises(ValueError, match="16 of the prompts in the training split "
                                                 "basic_arithmetic/train"):
                train.held_out_report(examples, task, config)
            config.eval.allow_train_overlap = True
        report = train.held_out_report(examples, task, config)
        assert report.in_train == in_train
        assert ("WARNING" in capsys.readouterr().err) == bool(in_train)
