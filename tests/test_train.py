"""The training loop end to end: CLI, logs, checkpoints, resume, preemption, learning, configs."""

import glob
import importlib.util
import json
import os
import pathlib
import re
import shutil
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
    models,
    optimizer,
    recipes,
    rollout,
    sharding,
    tasks,
    train,
    train_step,
)
from rlvr_jax.tasks.order import epoch_order

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
    workdir, cache = str(tmp_path / "run"), tmp_path / "compiled"
    first = cli(workdir, model_dir, f"--config.compilation_cache={cache}")
    assert first.returncode == 0, first.stderr[-3000:]
    train_steps = sorted(p.name for p in cache.iterdir() if "train_step" in p.name)
    assert len(train_steps) == 1  # the compiled update, on disk for the next run
    programs = [row["time/compiled_programs"] for row in read_metrics(workdir)
                if "train/reward_mean" in row]
    assert programs[0] > 0 and programs == [programs[0]] * 3  # nothing compiled after step 1
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
                 "--config.rollout.unstack_decode_layers=False",
                 f"--config.compilation_cache={cache}")
    assert second.returncode == 0, second.stderr[-3000:]
    # The resumed run read the update from the cache (the other decode loop is new there).
    assert sorted(p.name for p in cache.iterdir() if "train_step" in p.name) == train_steps
    resumed_rows = [row for row in read_metrics(workdir) if "train/reward_mean" in row][3:]
    assert resumed_rows[0]["time/compilation_cache_hits"] > 0
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
    ("grpo", {"eval.sampling.top_p": 0.0}, r"eval\.sampling\.top_p must be in \(0, 1\]"),
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
    # settings that cannot learn: one response per group gives every advantage 0
    *[(variant, {"rollout.group_size": 1}, r"rollout\.group_size=1: every advantage estimator")
      for variant in ("grpo", "dr_grpo", "asym_grpo")],
    ("grpo", {"rollout.sampling.temperature": -1.0},
     r"rollout\.sampling\.temperature must be >= 0"),
    ("grpo", {"eval.sampling.top_k": -2}, r"eval\.sampling\.top_k must be an int >= -1"),
    ("grpo", {"eval.sampling.min_p": 1.5}, r"eval\.sampling\.min_p must be in \[0, 1\]"),
    ("grpo", {"rollout.max_new_tokens": -5}, r"^rollout\.max_new_tokens must be >= 1, got -5$"),
    ("grpo", {"eval.max_new_tokens": 0}, r"eval\.max_new_tokens must be >= 1"),
    ("grpo", {"rollout.prompt_bucket": 0}, r"rollout\.prompt_bucket must be >= 1"),
    ("grpo", {"eval.samples_per_prompt": 0}, r"eval\.samples_per_prompt must be >= 1"),
    ("grpo", {"eval.num_prompts": 0}, r"eval\.num_prompts must be >= 1"),
    ("grpo", {"total_steps": -3}, r"total_steps must be >= 1"),
    ("grpo", {"total_steps": 0, "eval.at_start": False}, r"total_steps must be >= 1 \(0: an "),
    ("grpo", {"task.name": "basic_arithmetc"},
     r"task\.name='basic_arithmetc' names no task; did you mean 'basic_arithmetic'\?"),
    ("grpo", {"eval.task": "rg:puzle24"},
     r"eval\.task='rg:puzle24' names no task; did you mean 'rg:puzzle24'"),
    ("grpo", {"advantage.options.eps": -1e-6}, r"advantage\.options\.eps=-1e-06 must be >= 0"),
    ("progrpo", {"advantage.options.rho_low": 0.0}, r"options\.rho_low=0\.0 must be in \(0, 1\]"),
    ("asym_grpo", {"advantage.options.beta_neg": -0.4}, r"options\.beta_neg=-0\.4 must be >= 0"),
    ("lens", {"advantage.options.all_wrong_weighting": "per_token"},
     r"options\.all_wrong_weighting='per_token' must be"),
    # an estimator set without its options: they could not be set on the command line
    ("grpo", {"advantage.estimator": "progrpo"},
     r"advantage\.options lacks \['alpha', .*'rho_low'\] of progrpo.*apply_variant"),
    ("grpo", {"loss.kl_coef": -0.1}, r"loss\.kl_coef must be >= 0"),
    ("grpo", {"model.param_dtype": "bfloat16"},
     r"model\.param_dtype='bfloat16'.*round away.*model\.param_dtype='float32'"),
    ("grpo", {"model.dtype": "bfloat61"}, r"model\.dtype='bfloat61' is not a dtype name"),
    ("grpo", {"model.attention_impl": "flash"},
     r"model\.attention_impl='flash'; expected one of \('einsum', 'xla', 'cudnn'\)"),
    ("grpo", {"model.attention_impl": "cudnn"},
     r"model\.attention_impl='cudnn' needs model\.dtype in \('bfloat16', 'float16'\)"),
    ("grpo", {"checkpoint.keep_last": -1}, r"checkpoint\.keep_last must be >= 0"),
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
    train state (each variant compiles its own update: the estimator runs inside it): the
    rollout (sampling, verification) and the update (log-probs and entropies, the estimator,
    correction weights) give finite figures, and the correction weights are ~1 because the
    sampler and the trainer score the tokens alike."""
    toy.register()
    config = toy.toy_config(model_dir)
    model_config, params = models.load(model_dir)
    tokenizer = models.load_tokenizer(model_dir)
    mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_from_config(None)
    tx, _ = optimizer.make_optimizer(**config.optim)
    state, shardings = train_step.create_train_state(model_config, tx, jax.random.key(0), mesh,
                                                     rules, params=params)
    task = tasks.get(config.task.name)
    sampler = rollout.Sampler(model_config, tokenizer, task, max_prompt_len=16, prompt_bucket=8,
                              length_bucket=4, eos_ids=(tokenizer.eos_token_id,),
                              pad_id=tokenizer.pad_token_id, unstack_layers=True)
    stream = rollout.PromptStream(task, "train", seed=0)
    for i, (variant, correction) in enumerate(BASELINE_VARIANTS):
        config = recipes.apply_variant(toy.toy_config(model_dir), variant)
        config.rollout.correction = correction
        config_lib.validate(config)
        step = train_step.make_train_step(config, model_config, tx, mesh, rules, shardings)
        batch, figures, groups = rollout.collect(sampler, stream, state.params,
                                                 jax.random.key(i), config)
        state, update, rollout_policy = step(state, sharding.place_batch(batch, mesh, rules))
        figures |= rollout.policy_metrics(
            groups, batch, {k: np.asarray(v) for k, v in rollout_policy.items()}, config)
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
    monkeypatch.setattr(train.evaluation, "prompt_records", lambda groups: {})
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


def test_validate_devices_names_the_batch_and_the_mesh():
    config = recipes.apply_variant(config_lib.base_config(), "grpo")
    config.rollout.prompts_per_step, config.rollout.group_size = 3, 4  # 12 sequences
    config_lib.validate_devices(config, 4)  # mesh.fsdp=-1: 4 batch devices
    with pytest.raises(ValueError, match=r"12 sequences do not divide over the 8 devices of the "
                                         r"batch mesh axes \(mesh\.data=1, mesh\.fsdp=8 on 8"):
        config_lib.validate_devices(config, 8)
    config.mesh.fsdp, config.mesh.tensor = 1, -1  # rows not sharded: 1 batch device
    config_lib.validate_devices(config, 8)
    config.mesh.data = 3
    with pytest.raises(ValueError, match=r"mesh\.tensor = -1 cannot be resolved"):
        config_lib.validate_devices(config, 8)


def test_cli_names_a_misspelt_estimator_option_and_sets_any_of_the_variants(tmp_path, model_dir,
                                                                            monkeypatch):
    done = cli(str(tmp_path / "run"), model_dir, "--config.advantage.options.epss=1e-5")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert ("error: unknown config key in --config.advantage.options.epss=1e-5: epss\n"
            'Did you mean "eps" instead of "epss"?') in done.stderr
    done = cli(str(tmp_path / "run"), model_dir, "--config.advantage.options.alpha=0.5")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "choose it as the variant: --config=configs/<recipe>.py:<variant>" in done.stderr
    from absl import flags
    from ml_collections import config_flags

    path = ROOT / "configs" / "smollm2_arith.py"
    for variant in recipes.CONTROLLED:
        options = recipes.estimator_options(recipes.CONTROLLED[variant])
        argv = ["train", f"--config={path}:{variant}",
                *[f"--config.advantage.options.{key}={value}" for key, value in options.items()
                  if isinstance(value, float)]]
        monkeypatch.setattr(sys, "argv", argv)
        flag_values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True)
        flag_values(argv)
        assert dict(flag_values.config.advantage.options) == options
        config_lib.validate(flag_values.config)


def _fail_if_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_a_workdir_in_use_stops_a_second_run_and_a_killed_runs_lock_does_not(tmp_path,
                                                                              model_dir,
                                                                              monkeypatch):
    toy.register()
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    holder = subprocess.Popen(  # a run that holds the workdir
        [sys.executable, "-c", "import sys, time; from rlvr_jax import workdir_guard\n"
         "with workdir_guard.exclusive(sys.argv[1]):\n"
         "    print('held', flush=True); time.sleep(600)", workdir],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline() == "held\n"
        monkeypatch.setattr(train.models.ModelStore, "weights", _fail_if_loaded)
        with pytest.raises(RuntimeError, match=rf"workdir {workdir} is in use by another run "
                                               rf"\(pid {holder.pid} on host .*, started "):
            train.run(toy.toy_config(model_dir), workdir)
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    with pytest.raises(AssertionError, match="the model was loaded"):  # got past the lock
        train.run(toy.toy_config(model_dir), workdir)


def test_a_read_only_checkpoint_directory_stops_the_run_at_start(tmp_path, model_dir):
    """The checkpoint directory has mode 555; the run (root without the capability that lets
    it ignore mode bits, when the tests run as root) must stop before the model loads rather
    than fail in its first background save."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "checkpoints").chmod(0o555)
    code = ("import sys, toy; from rlvr_jax import train; toy.register(); "
            "train.run(toy.toy_config(sys.argv[1]), sys.argv[2])")
    command = [sys.executable, "-c", code, model_dir, str(workdir)]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root ignores mode bits, and setpriv is missing to drop that")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=f"{ROOT}:{E2E}", JAX_PLATFORMS="cpu"))
    (workdir / "checkpoints").chmod(0o755)
    assert done.returncode != 0
    assert (f"PermissionError: checkpoint directory {workdir}/checkpoints is not writable"
            in done.stderr), done.stderr[-3000:]
    assert not (workdir / "metrics.jsonl").exists()


def test_the_final_checkpoint_is_saved_before_the_final_evaluation(tmp_path, model_dir,
                                                                    monkeypatch):
    toy.register()
    config = toy.toy_config(model_dir)
    config.total_steps = 1
    config.logging.tensorboard = False

    def broken(*args, **kwargs):
        raise RuntimeError("the evaluation failed")

    evaluate = train.evaluation.evaluate
    monkeypatch.setattr(train.evaluation, "evaluate", broken)
    with pytest.raises(RuntimeError, match="the evaluation failed"):
        train.run(config, str(tmp_path / "run"))
    assert checkpoint_steps(tmp_path / "run") == [1]  # the trained step is kept
    assert not train.evaluation.recorded(str(tmp_path / "run"), 1)
    monkeypatch.setattr(train.evaluation, "evaluate", evaluate)
    train.run(config, str(tmp_path / "run"))  # resumes at the final step: only evaluates
    assert train.evaluation.recorded(str(tmp_path / "run"), 1)
    assert logged_steps(tmp_path / "run") == [1]  # no step trained twice


def long_prompt_task() -> tasks.Task:
    """The toy task with every other question 30 characters long: its prompt (one token per
    character, plus two) is over the toy recipe's rollout.max_prompt_len=16."""
    data = [{"id": f"toy/{i}", "question": "say a" + "!" * (25 if i % 2 == 0 else i % 3),
             "answer": "a"} for i in range(64)]
    return tasks.Task(name="toy_long_prompts", load_split=lambda split: data,
                      verifier=toy.FirstLetterVerifier(),
                      prompt_format=tasks.PromptFormat(instruction="", system_prompt=None))


def long_prompt_config(model_dir, total_steps):
    if "toy_long_prompts" not in tasks.names():
        tasks.register("toy_long_prompts", lambda **_: long_prompt_task())
    config = toy.toy_config(model_dir)
    config.task.name = "toy_long_prompts"
    config.total_steps = total_steps
    config.checkpoint.save_every_steps = 1
    config.logging.tensorboard = False
    return config


@pytest.fixture(scope="module")
def long_prompt_run(tmp_path_factory, model_dir):
    """Two steps on the task with long prompts (and its final evaluation), with the warnings."""
    workdir = tmp_path_factory.mktemp("long_prompts") / "run"
    with pytest.MonkeyPatch.context() as patch:
        warnings = []
        patch.setattr(train.prompt_stream.logger, "warning",
                      lambda *args: warnings.append(args))
        last = train.run(long_prompt_config(model_dir, 2), str(workdir))
    return workdir, last, [message % tuple(args) for message, *args in warnings]


def test_prompts_over_max_prompt_len_are_passed_over_and_counted(long_prompt_run):
    workdir, last, warnings = long_prompt_run
    long_ones = [int(i) % 2 == 0 for i in epoch_order(64, 0, 0)]  # the stream's first epoch
    usable = [p for p, is_long in enumerate(long_ones) if not is_long]
    rows = [row for row in read_metrics(workdir) if "train/prompts_skipped" in row]
    assert [row["step"] for row in rows] == [1, 2]
    for step, row in enumerate(rows):  # 4 prompts a step
        first = usable[4 * step - 1] + 1 if step else 0
        assert row["train/prompts_skipped"] == sum(long_ones[first:usable[4 * step + 3] + 1])
    assert sum(row["train/prompts_skipped"] for row in rows) > 0
    assert "eval/pass@1" in last  # the evaluation left its long prompts out
    eval_order = tasks.get("toy_long_prompts").examples("test", seed=0, n=8)
    left_out = [e["id"] for e in eval_order if int(e["id"].split("/")[1]) % 2 == 0]
    assert left_out and all(
        f"leaving evaluation example {i!r} out: its prompt has 32 tokens, more than "
        f"rollout.max_prompt_len=16" in warnings for i in left_out)


def test_a_resume_past_a_bad_host_state_falls_back_and_goes_on(long_prompt_run, model_dir,
                                                               tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(long_prompt_run[0], workdir)
    host = workdir / "checkpoints" / "2" / "host" / "metadata"
    host.write_text(json.dumps({**json.loads(host.read_text()), "stream_position": "8"}))
    with caplog.at_level("WARNING", logger="rlvr_jax.checkpoint"):
        train.run(long_prompt_config(model_dir, 3), str(workdir))
    assert any(f"host state {host} of checkpoint step 2 is unusable: stream_position='8' is "
               "not a non-negative integer" in r.getMessage() for r in caplog.records)
    rows = [row for row in read_metrics(workdir) if "train/reward_mean" in row]
    original = [row for row in read_metrics(long_prompt_run[0]) if "train/reward_mean" in row]
    assert [row["step"] for row in rows] == [1, 2, 3]  # step 2 again, from step 1
    for key in ("train/reward_mean", "train/prompts_skipped", "update/loss"):
        assert rows[1][key] == original[1][key], key  # exactly as the first time
