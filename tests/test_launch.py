"""Launchers: argument handling, generated gcloud commands and SLURM scripts, sweep expansion.

Nothing here trains: stand-in programs record their argv and environment, fake ``gcloud``,
``scontrol``, ``srun`` and ``sbatch`` executables on PATH emulate the cluster tools, and the
generated shell is executed by a real bash so the quoting is checked end to end.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from launch import slurm, sweep, tpu_pod
from launch.train_command import LaunchError, TrainCommand, parse_pairs
from rlvr_jax import recipes
from rlvr_jax.sharding import is_multiprocess_environment

REPO = Path(__file__).resolve().parents[1]

RECORDER = """\
import json, os, sys
with open(os.environ["RECORD_FILE"], "a") as f:
    env = {k: v for k, v in os.environ.items() if k.startswith(("JAX_", "SLURM_", "MY_"))}
    f.write(json.dumps({"argv": sys.argv[1:], "env": env}) + "\\n")
sys.exit(3 if "--config.seed=1" in sys.argv else 0)
"""


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    """A stand-in program; returns (script path, function reading the recorded calls)."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RECORD_FILE", str(record))

    def calls():
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    return script, calls


@pytest.fixture
def recipe(tmp_path):
    """A recipe written like configs/*.py: the project's base config plus a variant."""
    path = tmp_path / "recipe.py"
    path.write_text(textwrap.dedent("""\
        from rlvr_jax.config import base_config
        from rlvr_jax.recipes import apply_variant

        def get_config(variant="grpo"):
            config = base_config()
            config.total_steps = 10
            return apply_variant(config, variant)
        """))
    return str(path)


def write_sweep(tmp_path: Path, body: str) -> str:
    path = tmp_path / "my_sweep.py"
    path.write_text("from launch.sweep import product\n\n\ndef get_sweep():\n"
                    + textwrap.indent(textwrap.dedent(body), "    "))
    return str(path)

# --------------------------------------------------------------------------------------------
# The training command
# --------------------------------------------------------------------------------------------


def test_train_command_formats_values_the_way_config_flags_reads_them():
    command = TrainCommand(
        "run", "configs/r.py:progrpo", "gs://b/run",
        {"optim.learning_rate": 1e-6, "seed": 3, "rollout.dynamic": True, "name": "a b"},
    )
    assert command.argv(("py",)) == [
        "py", "--config=configs/r.py:progrpo", "--config.optim.learning_rate=1e-06",
        "--config.seed=3", "--config.rollout.dynamic=True", "--config.name=a b",
        "--workdir=gs://b/run",
    ]


def test_generated_argv_is_parsed_back_by_ml_collections_config_flags(tmp_path):
    """The format is checked by the parser the trainer uses, not by our own reading of it."""
    from absl import flags
    from ml_collections import config_flags

    recipe = tmp_path / "tiny_recipe.py"
    recipe.write_text(textwrap.dedent("""\
        import ml_collections

        def get_config(variant):
            return ml_collections.ConfigDict({
                "seed": 0, "optim": {"learning_rate": 1e-5}, "rollout": {"dynamic": False},
                "advantage": {"estimator": variant, "options": {"alpha": 1.0}},
            })
        """))
    command = TrainCommand("run", f"{recipe}:progrpo", "gs://b/w", {
        "seed": 3, "optim.learning_rate": 1e-06, "rollout.dynamic": True,
        "advantage.options.alpha": 2, "advantage.estimator": "a b=c",
    })
    argv = command.argv(("prog",))
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "run directory", flag_values=flag_values)
    flag_values(argv)
    config = flag_values.config
    assert (config.seed, config.optim.learning_rate, config.rollout.dynamic) == (3, 1e-6, True)
    assert config.advantage.options.alpha == 2.0
    assert isinstance(config.advantage.options.alpha, float)
    assert config.advantage.estimator == "a b=c"  # the override beats the variant
    assert flag_values.workdir == "gs://b/w"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("r", "configs/r.yaml", "w"), "path/to/recipe.py"),
        (("r", "configs/r.py", ""), "workdir"),
        (("a b", "configs/r.py", "w"), "run name 'a b'"),
    ],
)
def test_train_command_rejects_bad_input(args, message):
    with pytest.raises(LaunchError, match=message):
        TrainCommand(*args)


def test_key_value_flag_parsing():
    assert parse_pairs(["advantage.options.alpha=0.5", "name=a=b"], "--set") == [
        ("advantage.options.alpha", "0.5"), ("name", "a=b"),
    ]
    assert parse_pairs(["MY_VAR=", "X=a b"], "--env") == [("MY_VAR", ""), ("X", "a b")]
    for bad in ("seed", "seed=", "=1", "1x=2", "a..b=1"):
        with pytest.raises(LaunchError, match="expected KEY=VALUE"):
            parse_pairs([bad], "--set")
    with pytest.raises(LaunchError, match="MY_VAR=1"):
        parse_pairs(["a.b=1"], "--env")


# --------------------------------------------------------------------------------------------
# Sweeps: expansion, names, checks against the recipe
# --------------------------------------------------------------------------------------------


def test_product_last_keyword_varies_fastest():
    grid = sweep.product(seed=[0, 1], **{"advantage.options.alpha": [0.1, 1.0, 2.0]})
    assert grid == [
        {"seed": s, "advantage.options.alpha": a} for s in (0, 1) for a in (0.1, 1.0, 2.0)
    ]
    with pytest.raises(LaunchError, match="seed needs a non-empty list"):
        sweep.product(seed=[])
    with pytest.raises(LaunchError, match="non-empty list"):
        sweep.product(name="abc")


def test_run_names_show_only_varying_keys_and_disambiguate_shared_leaves():
    overrides = [
        {"a.alpha": 0.5, "b.alpha": 1, "seed": 0, "total_steps": 100},
        {"a.alpha": 1.0, "b.alpha": 2, "seed": 0, "total_steps": 100},
        {"a.alpha": 1.0, "b.alpha": 2, "seed": 1, "total_steps": 100},
    ]
    assert sweep.run_names(overrides) == [
        "a.alpha=0.5__b.alpha=1__seed=0",
        "a.alpha=1.0__b.alpha=2__seed=0",
        "a.alpha=1.0__b.alpha=2__seed=1",
    ]
    assert sweep.run_names([{"seed": 4, "lr": 1e-6}]) == ["seed=4__lr=1e-06"]
    assert sweep.run_names([{}]) == ["base"]
    assert sweep.run_names([{"tag": "x y/z"}, {"tag": "q"}]) == ["tag=x-y-z", "tag=q"]
    assert sweep.run_names([{"config": "c/r.py:dapo"}, {"config": "c/other.py"}]) == [
        "config=dapo", "config=other",
    ]
    with pytest.raises(LaunchError, match="share the names"):
        sweep.run_names([{"seed": 1, "x": 0}, {"seed": 1, "x": 0}, {"seed": 2, "x": 0}])
    with pytest.raises(LaunchError, match="share the names"):
        sweep.run_names([{"tag": "a b"}, {"tag": "a/b"}])


def test_expand_builds_workdirs_and_per_run_recipes():
    runs = sweep.expand(
        dict(name="s", config="c/r.py:grpo",
             overrides=[{"seed": 0}, {"seed": 1, "config": "c/r.py:dapo"}]),
        "gs://bucket/root/",
    )
    assert runs == [
        TrainCommand("seed=0", "c/r.py:grpo", "gs://bucket/root/seed=0", {"seed": 0}),
        TrainCommand("seed=1__config=dapo", "c/r.py:dapo",
                     "gs://bucket/root/seed=1__config=dapo", {"seed": 1}),
    ]


@pytest.mark.parametrize(
    ("sweep_dict", "message"),
    [
        ([], "must return a dict"),
        (dict(name="s", config="c/r.py"), r"got \['config', 'name'\]"),
        (dict(name="s", config="c/r.py", overrides=[], extra=1), "exactly the fields"),
        (dict(name="s", config="c/r.py", overrides=[]), "non-empty list"),
        (dict(name="s", config="c/r.py", overrides=[1]), "must be a dict"),
        (dict(name="s", config="c/r.py", overrides=[{"config": "x"}]), "recipe.py"),
        (dict(name="a b", config="c/r.py", overrides=[{}]), "sweep name"),
        (dict(name="s", config="c/r", overrides=[{}]), "recipe.py"),
    ],
)
def test_expand_rejects_malformed_sweeps(sweep_dict, message):
    with pytest.raises(LaunchError, match=message):
        sweep.expand(sweep_dict, "root")


def test_overrides_are_checked_against_the_recipe_as_config_flags_would_apply_them(recipe):
    good = sweep.expand(dict(name="s", config=f"{recipe}:progrpo", overrides=[
        {"advantage.options.alpha": 2, "optim.learning_rate": 3e-6, "total_steps": 7,
         "logging.tensorboard": False, "rollout.group_size": 8},
    ]), "root")
    sweep.check_runs(good)

    def check(config, override, message):
        runs = sweep.expand(dict(name="s", config=config, overrides=[override]), "root")
        with pytest.raises(LaunchError, match=message) as error:
            sweep.check_runs(runs)
        assert "Other fields present" not in str(error.value)  # no dump of the whole config

    check(recipe, {"sead": 1}, r"override sead=1: .*Did you mean \"seed\"")
    check(recipe, {"optim.learning_rat": 0.5},
          r"optim.learning_rat=0.5: .*Did you mean \"learning_rate\"")
    check(recipe, {"advantage.option.alpha": 0.5}, r"\"advantage.option\" was not found")
    check(recipe, {"seed.x": 1}, "seed.x=1: .*is not a ConfigDict")
    # No new keys, not even below options: config_flags would not add them either.
    check(recipe, {"advantage.options.alpha": 0.5}, "advantage.options.alpha=0.5: .*alpha")
    check(f"{recipe}:progrpo", {"advantage.options.alhpa": 0.5}, "Did you mean \"alpha\"")
    for override, field_type in [({"rollout.group_size": 2.5}, "int"),
                                 ({"seed": "one"}, "int"),
                                 ({"logging.tensorboard": "false"}, "bool"),
                                 ({"advantage.estimator": 3}, "str")]:
        check(recipe, override, f"cannot be casted to type <class '{field_type}'>")
    check(recipe, {"advantage.estimator": "nope"}, "unknown advantage estimator")
    check("nope/recipe.py", {}, "does not exist")


def test_sweep_prints_shell_lines_that_bash_runs_past_a_failure(
    tmp_path, recipe, recorder, capsys
):
    script, calls = recorder
    path = write_sweep(tmp_path, f"""\
        return dict(name="s", config="{recipe}:lens",
                    overrides=product(**{{"model.cache_dir": ["it's", "b c"]}}, seed=[1, 0]))
        """)
    assert sweep.main([f"--sweep={path}", "--workdir=/tmp/r r",
                       f"--train_cmd={sys.executable} {script}"]) == 0
    printed = capsys.readouterr().out
    expected = [
        [f"--config={recipe}:lens", f"--config.model.cache_dir={value}",
         f"--config.seed={seed}", f"--workdir=/tmp/r r/cache_dir={name}__seed={seed}"]
        for value, name in [("it's", "it-s"), ("b c", "b-c")] for seed in (1, 0)
    ]
    assert [shlex.split(line)[2:] for line in printed.splitlines()] == expected
    result = subprocess.run(["bash"], input=printed, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0  # bash goes on after each seed=1 run exits 3
    assert [call["argv"] for call in calls()] == expected


def test_sweep_cli_errors_are_clear(tmp_path, recipe, capsys):
    path = write_sweep(tmp_path, f"""\
        return dict(name="s", config="{recipe}", overrides=[{{"sead": 1}}, {{"seed": 2}}])
        """)
    no_function = tmp_path / "empty.py"
    no_function.write_text("X = 1\n")
    for argv, message in [
        ([f"--sweep={path}", "--workdir=w"], 'Did you mean "seed"'),
        ([f"--sweep={tmp_path / 'missing.py'}", "--workdir=w"], "does not exist"),
        ([f"--sweep={no_function}", "--workdir=w"], "defines no get_sweep()"),
        ([f"--sweep={path}", "--workdir=w", "--only=zzz"], "matches no run"),
        ([f"--sweep={path}", "--workdir=w", "--only=("], "missing ), unterminated"),
        ([f"--sweep={path}", "--workdir=w", "--set=seed=1"], "--set applies to --config"),
        ([f"--config={recipe}", "--workdir=w", "--only=x"], "--only selects runs of a --sweep"),
        ([f"--config={recipe}", f"--sweep={path}", "--workdir=w"], "not allowed with"),
        ([f"--sweep={path}"], "--workdir"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            sweep.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert sweep.main([f"--sweep={path}", "--workdir=w", "--only=seed=2"]) == 0  # skips sead
    assert capsys.readouterr().out.count("rlvr_jax.train") == 1


SHIPPED = {
    "progrpo_alpha": (15, {"advantage.options.alpha", "seed"}),
    "asym_grpo_betas": (27, {"advantage.options.beta_pos", "advantage.options.beta_neg", "seed"}),
    "estimators": (3 * len(recipes.CONTROLLED), {"seed"}),  # every controlled variant x 3 seeds
    "exploration_smollm2": (12, {"seed", "optim.learning_rate", "total_steps",
                                 "eval.every_steps", "eval.samples_per_prompt",
                                 "eval.samples_per_prompt_at_ends", "checkpoint.save_every_steps",
                                 "checkpoint.keep_last", "rollout.prompt_bucket"}),
    # 4 methods x 3 seeds
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sweeps_expand_and_apply_to_the_real_recipe(name, monkeypatch):
    """config_flags rejects an override whose key the recipe lacks; so does check_runs."""
    monkeypatch.chdir(REPO)
    count, keys = SHIPPED[name]
    sweep_dict = sweep.load_function(f"configs/sweeps/{name}.py", "get_sweep")()
    runs = sweep.expand(sweep_dict, "gs://b/r")
    assert len(runs) == count and len({r.name for r in runs}) == count
    assert all(set(r.overrides) == keys for r in runs)
    assert {r.overrides["seed"] for r in runs} == {0, 1, 2}
    assert all(r.config.startswith("configs/smollm2_arith.py:") for r in runs)
    if name == "estimators":
        variants = {r.config.split(":")[1] for r in runs}
        assert variants == set(recipes.CONTROLLED)
    sweep.check_runs(runs)


# --------------------------------------------------------------------------------------------
# Cloud TPU pods
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--name=Bad_Name", "--config=c/r.py", "--workdir=gs://b/w"], "a TPU name is"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=/local/dir"], "must be a GCS path"),
        (["run", "--name=ok", "--config=c/r.yaml", "--workdir=gs://b/w"], "recipe.py"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=gs://b/w", "--set=seed"],
         "KEY=VALUE"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=gs://b/w", "--env=1X=2"],
         "KEY=VALUE"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=gs://b/w", "--job_name=a b"],
         "--job_name 'a b'"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=gs://b/w", "--remote_dir=../x"],
         "--remote_dir"),
        (["run", "--name=ok", "--workdir=gs://b/w"], "--config --sweep"),
        (["stop", "--name=ok", "--job_name=a/b"], "--job_name 'a/b'"),
    ],
)
def test_tpu_bad_input_fails_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tpu_pod.main([*argv, "--dry_run"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _remote_script(argv: list[str]) -> str:
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    assert argv[-2] == "--worker=all"
    return argv[-1].removeprefix("--command=")


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_tpu_run_script_executes_every_run_in_the_background_with_exact_argv(
    tmp_path, recorder
):
    """Runs the remote script with a real bash in a fake home; argv survives both quotings."""
    script, calls = recorder
    home = tmp_path / "home"
    (home / "rlvr_jax").mkdir(parents=True)
    runs = [TrainCommand(f"seed={s}", "configs/r.py:dapo", f"gs://b/w/seed={s}",
                         {"seed": s, "tag": "a 'quoted' $value"}) for s in (0, 1, 2)]
    remote = tpu_pod.start_script(runs, "job", env=[("MY_VAR", "x y")])
    remote = remote.replace("python3 -m rlvr_jax.train", f"{sys.executable} {script}")
    subprocess.run(["bash", "-c", remote], env={**os.environ, "HOME": str(home)}, check=True,
                   timeout=30)
    log_dir = home / tpu_pod.LOG_DIR / "job"
    assert _wait_for(lambda: len(calls()) == 3 and (log_dir / "seed=2.log").exists())
    recorded = calls()
    assert [c["argv"] for c in recorded] == [
        ["--config=configs/r.py:dapo", f"--config.seed={s}", "--config.tag=a 'quoted' $value",
         f"--workdir=gs://b/w/seed={s}"] for s in (0, 1, 2)
    ]
    assert all(c["env"]["MY_VAR"] == "x y" for c in recorded)
    assert sorted(p.name for p in log_dir.iterdir()) == [
        "pid", "seed=0.log", "seed=1.log", "seed=2.log"
    ]


def test_tpu_stop_terminates_the_job_process_group_and_refuses_a_second_start(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "rlvr_jax").mkdir(parents=True)
    env = {**os.environ, "HOME": str(home)}
    sleeper = TrainCommand("sleep", "c/r.py", "gs://b/w")
    start = tpu_pod.start_script([sleeper], "job",
                                 program=(sys.executable, "-c", "import time; time.sleep(60)"))
    subprocess.run(["bash", "-c", start], env=env, check=True, timeout=30)
    pid_file = home / tpu_pod.LOG_DIR / "job" / "pid"
    assert _wait_for(pid_file.exists)
    group = int(pid_file.read_text())
    try:
        second = subprocess.run(["bash", "-c", start], env=env, capture_output=True, text=True,
                                timeout=30)
        assert second.returncode == 1 and "already running" in second.stderr
        assert tpu_pod.main(["stop", "--name=t", "--zone=z", "--job_name=job", "--dry_run"]) == 0
        stop = _remote_script(shlex.split(capsys.readouterr().out))
        subprocess.run(["bash", "-c", stop], env=env, check=True, timeout=30)
        assert _wait_for(lambda: not _group_alive(group))
        assert not pid_file.exists()
    finally:
        if _group_alive(group):
            os.killpg(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_tpu_run_prints_one_gcloud_ssh_for_a_run_or_a_whole_sweep(tmp_path, recipe, capsys):
    assert tpu_pod.main(["run", "--name=t", "--zone=z", "--project=p", f"--config={recipe}",
                         "--workdir=gs://b/one", "--set=seed=3", "--dry_run"]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t", "--zone=z",
                        "--project=p"]
    assert f"--config={recipe} --config.seed=3 --workdir=gs://b/one" in argv[-1]
    assert "rlvr_jax_logs/train/train.log" in argv[-1]

    path = write_sweep(tmp_path, f"""\
        return dict(name="alpha", config="{recipe}", overrides=product(seed=[0, 1]))
        """)
    assert tpu_pod.main(["run", "--name=t", f"--sweep={path}", "--workdir=gs://b/a",
                         "--dry_run"]) == 0
    script = shlex.split(capsys.readouterr().out)[-1]
    assert script.count("rlvr_jax.train") == 2
    assert f"--config={recipe} --config.seed=1 --workdir=gs://b/a/seed=1" in script
    assert "rlvr_jax_logs/alpha/seed=1.log" in script
    with pytest.raises(SystemExit):
        tpu_pod.main(["run", "--name=t", f"--sweep={path}", "--workdir=local/dir", "--dry_run"])
    assert "must be a GCS path" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------------------------


def _slurm_script(capsys, argv):
    assert slurm.main([*argv, "--dry_run"]) == 0
    return capsys.readouterr().out


def test_slurm_dry_run_prints_the_batch_script(capsys):
    out = _slurm_script(capsys, [
        "--nodes=4", "--gpus_per_node=8", "--sbatch=--partition=gpu", "--sbatch=-A",
        "--sbatch=--time=1-00:00:00", "--setup=module load cuda",
        "--repo_dir=/shared/rlvr jax", "--config=configs/r.py:progrpo",
        "--workdir=/shared/runs/x", "--set=advantage.options.alpha=0.5", "--job_name=alpha",
    ])
    lines = out.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")]
    assert sbatch == [
        "--job-name=alpha", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
        "--output=slurm_logs/%x-%j.out", "--partition=gpu", "-A", "--time=1-00:00:00",
        "--signal=TERM@300",
    ]
    assert "module load cuda" in lines and "cd '/shared/rlvr jax'" in lines
    srun = shlex.split(next(line for line in lines if line.startswith("srun")))
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "bash"]
    assert srun[4].endswith(
        "exec python3 -m rlvr_jax.train --config=configs/r.py:progrpo "
        "--config.advantage.options.alpha=0.5 --workdir=/shared/runs/x"
    )
    assert lines[-1] == "# submit with: sbatch slurm_scripts/alpha.sbatch"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes=0"], "--nodes=0: must be a positive integer"),
        (["--gpus_per_node=-1"], "must be a positive integer"),
        (["--sbatch=--time=1 day"], "expected one sbatch option"),
        (["--sbatch=partition=gpu"], "expected one sbatch option"),
        (["--job_name=my job"], "--job_name"),
        (["--log_dir=a b"], "no spaces"),
        (["--env=NOVALUE"], "KEY=VALUE"),
        (["--env=1A=2"], "KEY=VALUE"),
        (["--signal_seconds=-5"], "--signal_seconds"),
        (["--set=seed"], "KEY=VALUE"),
        (["--nodes=two"], "invalid int value"),
    ],
)
def test_slurm_bad_input_fails_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        slurm.main(["--config=c/r.py", "--workdir=w", *argv, "--dry_run"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_slurm_job_checks_its_environment_names():
    with pytest.raises(LaunchError, match=r"\['1A'\] are not shell variable names"):
        slurm.SlurmJob(env=[("1A", "x")])


FAKE_SRUN = """\
#!{python}
# Emulates srun: runs the command once per task with SLURM's per-task variables.
import os, subprocess, sys
args = [a for a in sys.argv[1:] if not a.startswith("--")]
nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
per_node = int(os.environ["SLURM_NTASKS_PER_NODE"])
codes = []
for rank in range(nodes * per_node):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
               SLURM_NODEID=str(rank // per_node), SLURM_STEP_NODELIST=os.environ[
               "SLURM_JOB_NODELIST"])
    codes.append(subprocess.run(args, env=env).returncode)
sys.exit(max(codes))
"""

FAKE_SCONTROL = """\
#!/bin/bash
# Emulates 'scontrol show hostnames gpu[007-008]'.
[ "$1 $2 $3" = "show hostnames gpu[007-008]" ] || exit 9
printf 'gpu007\\ngpu008\\n'
"""


@pytest.mark.parametrize("per_gpu", [False, True])
def test_slurm_script_gives_each_process_an_environment_jax_distributed_accepts(
    tmp_path, recorder, capsys, per_gpu
):
    script, calls = recorder
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    write_executable(fake_bin / "srun", FAKE_SRUN.format(python=sys.executable))
    write_executable(fake_bin / "scontrol", FAKE_SCONTROL)
    batch = _slurm_script(capsys, [
        "--nodes=2", "--gpus_per_node=4", *(["--per_gpu"] if per_gpu else []),
        f"--python={sys.executable}", "--env=MY_FLAG=on", "--config=c/r.py",
        "--workdir=/runs/x", "--set=seed=5",
    ]).rsplit("# submit with:", 1)[0]
    batch = batch.replace(f"{sys.executable} -m rlvr_jax.train", f"{sys.executable} {script}")
    per_node = 4 if per_gpu else 1
    slurm_env = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[007-008]",
        "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": str(2 * per_node),
        "SLURM_NTASKS_PER_NODE": str(per_node),
    }
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(["bash", "-c", batch], env={**os.environ, **slurm_env, "PATH": path},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    recorded = calls()
    assert len(recorded) == 2 * per_node
    for rank, call in enumerate(recorded):
        env = call["env"]
        assert call["argv"] == ["--config=c/r.py", "--config.seed=5", "--workdir=/runs/x"]
        assert env["JAX_COORDINATOR_ADDRESS"] == f"gpu007:{20000 + 4242 % 1000}"
        assert env["JAX_NUM_PROCESSES"] == str(2 * per_node)
        assert env["JAX_PROCESS_ID"] == str(rank)
        assert env["JAX_LOCAL_DEVICE_IDS"] == (str(rank % 4) if per_gpu else "0,1,2,3")
        assert env["MY_FLAG"] == "on"
        assert is_multiprocess_environment(env)


def test_slurm_sweep_writes_one_job_per_run(tmp_path, recipe, capsys):
    path = write_sweep(tmp_path, f"""\
        return dict(name="grid", config="{recipe}",
                    overrides=product(seed=[0, 1], **{{"optim.learning_rate": [1e-6]}}))
        """)
    out = _slurm_script(capsys, [f"--sweep={path}", "--workdir=/shared/g", "--nodes=2",
                                 "--sbatch=--partition=gpu"])
    assert out.count("#!/bin/bash") == 2
    assert "#SBATCH --job-name=grid-seed=1" in out
    assert "--config.optim.learning_rate=1e-06 --workdir=/shared/g/seed=1" in out
    assert "# submit with: sbatch slurm_scripts/grid/seed=0.sbatch" in out


def test_slurm_submit_writes_the_script_and_calls_sbatch(tmp_path, monkeypatch, capsys):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    write_executable(fake_bin / "sbatch", "#!/bin/bash\necho \"Submitted batch job 77 ($1)\"\n")
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    assert slurm.main(["--config=c/r.py", "--workdir=w", "--job_name=j",
                       "--script_dir=scripts"]) == 0
    assert "Submitted batch job 77 (scripts/j.sbatch)" in capsys.readouterr().out
    assert (tmp_path / "scripts" / "j.sbatch").read_text().startswith("#!/bin/bash")
    assert (tmp_path / "slurm_logs").is_dir()


def test_missing_or_failing_cluster_tools_give_a_clear_error(tmp_path, monkeypatch, capsys):
    empty_bin = tmp_path / "empty"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # neither gcloud nor sbatch can be found
    monkeypatch.chdir(tmp_path)
    assert tpu_pod.main(["stop", "--name=t"]) == 127
    assert "gcloud is not installed or not on PATH" in capsys.readouterr().err
    assert slurm.main(["--config=c/r.py", "--workdir=w"]) == 1
    assert "sbatch is not on PATH; the script is in slurm_scripts/rlvr_jax.sbatch" in (
        capsys.readouterr().err
    )
    write_executable(empty_bin / "sbatch", "#!/bin/sh\necho 'invalid partition' >&2\nexit 1\n")
    assert slurm.main(["--config=c/r.py", "--workdir=w"]) == 1
    assert "failed (exit 1): invalid partition" in capsys.readouterr().err
