"""Launchers: argument handling, generated gcloud commands and SLURM scripts, sweep expansion.

Nothing here trains: stand-in programs record their argv and environment, fake ``gcloud``,
``scontrol`` and ``srun`` executables on PATH record or emulate the cluster tools, and the
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

from rlvr_jax.sharding import is_multiprocess_environment

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # launch/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(REPO))

from launch import slurm, sweep, tpu_pod  # noqa: E402
from launch.train_command import (  # noqa: E402
    TrainCommand,
    format_override_value,
    parse_cli_override,
)

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
        "configs/r.py:progrpo", "gs://b/run",
        {"optim.learning_rate": 1e-6, "seed": 3, "rollout.dynamic": True, "name": "a b"},
    )
    assert command.argv(("py",)) == [
        "py", "--config=configs/r.py:progrpo", "--config.optim.learning_rate=1e-06",
        "--config.seed=3", "--config.rollout.dynamic=True", "--config.name=a b",
        "--workdir=gs://b/run",
    ]
    assert float("1e-06") == 1e-6 and format_override_value("x", 0.1) == "0.1"


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
    command = TrainCommand(f"{recipe}:progrpo", "gs://b/w", {
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
    ("kwargs", "message"),
    [
        (dict(config="configs/r.yaml", workdir="w"), "path/to/recipe.py"),
        (dict(config="configs/r.py", workdir=""), "workdir"),
        (dict(config="configs/r.py", workdir="w", overrides={"a..b": 1}), "dotted config path"),
        (dict(config="configs/r.py", workdir="w", overrides={"a": None}), "type NoneType"),
        (dict(config="configs/r.py", workdir="w", overrides={"a": [1, 2]}), "type list"),
        (dict(config="configs/r.py", workdir="w", overrides={"a": float("nan")}), "non-finite"),
        (dict(config="configs/r.py", workdir="w", overrides={"a": "x\ny"}), "one line"),
    ],
)
def test_train_command_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainCommand(**kwargs)


def test_cli_override_parsing():
    assert parse_cli_override("advantage.options.alpha=0.5") == ("advantage.options.alpha", "0.5")
    assert parse_cli_override("name=a=b") == ("name", "a=b")
    for bad in ("seed", "seed=", "=1", "1x=2"):
        with pytest.raises(ValueError):
            parse_cli_override(bad)


# --------------------------------------------------------------------------------------------
# Sweeps: expansion, names, validation against the recipe
# --------------------------------------------------------------------------------------------


def test_product_last_keyword_varies_fastest():
    grid = sweep.product(seed=[0, 1], **{"advantage.options.alpha": [0.1, 1.0, 2.0]})
    assert grid == [
        {"seed": s, "advantage.options.alpha": a} for s in (0, 1) for a in (0.1, 1.0, 2.0)
    ]
    with pytest.raises(sweep.SweepError, match="seed needs a non-empty list"):
        sweep.product(seed=[])
    with pytest.raises(sweep.SweepError, match="non-empty list"):
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
    with pytest.raises(sweep.SweepError, match="share the names"):
        sweep.run_names([{"seed": 1, "x": 0}, {"seed": 1, "x": 0}, {"seed": 2, "x": 0}])
    with pytest.raises(sweep.SweepError, match="share the names"):
        sweep.run_names([{"tag": "a b"}, {"tag": "a/b"}])


def test_expand_builds_workdirs_and_per_run_recipes():
    runs = sweep.expand(
        dict(name="s", config="c/r.py:grpo",
             overrides=[{"seed": 0}, {"seed": 1, "config": "c/r.py:dapo"}]),
        "gs://bucket/root/",
    )
    assert [r.name for r in runs] == ["seed=0", "seed=1__config=dapo"]
    assert runs[0].command == TrainCommand("c/r.py:grpo", "gs://bucket/root/seed=0", {"seed": 0})
    assert runs[1].command.config == "c/r.py:dapo"
    assert runs[1].command.overrides == {"seed": 1}
    assert runs[1].command.workdir == "gs://bucket/root/seed=1__config=dapo"


@pytest.mark.parametrize(
    ("sweep_dict", "message"),
    [
        ([], "must return a dict"),
        (dict(name="s", config="c/r.py"), "no 'overrides'"),
        (dict(name="s", config="c/r.py", overrides=[], extra=1), "unknown sweep field"),
        (dict(name="s", config="c/r.py", overrides=[]), "non-empty list"),
        (dict(name="s", config="c/r.py", overrides=[1]), r"overrides\[0\] must be a dict"),
        (dict(name="s", config="c/r.py", overrides=[{"a-b": 1}]), r"overrides\[0\].*dotted"),
        (dict(name="s", config="c/r.py", overrides=[{"config": "x"}]), r"overrides\[0\].*recipe"),
        (dict(name="a b", config="c/r.py", overrides=[{}]), "sweep name"),
        (dict(name="s", config="c/r", overrides=[{}]), "recipe.py"),
    ],
)
def test_expand_rejects_malformed_sweeps(sweep_dict, message):
    with pytest.raises(ValueError, match=message):
        sweep.expand(sweep_dict, "root")


def test_validation_accepts_good_overrides_and_names_the_closest_keys(recipe):
    good = sweep.expand(dict(name="s", config=f"{recipe}:progrpo", overrides=[
        {"advantage.options.alpha": 2, "optim.learning_rate": "3e-6", "total_steps": "7",
         "logging.tensorboard": "false", "rollout.group_size": 8},
    ]), "root")
    sweep.validate_against_config(good)

    def check(config, override, message):
        runs = sweep.expand(dict(name="s", config=config, overrides=[override]), "root")
        with pytest.raises(sweep.SweepError, match=message):
            sweep.validate_against_config(runs)

    check(recipe, {"advantage.option.alpha": 0.5}, r"did you mean advantage\.options")
    check(recipe, {"optim.learning_rat": 0.5}, r"did you mean optim\.learning_rate")
    check(recipe, {"seed.x": 1}, "seed is a value, not a section")
    check(recipe, {"nothing.x": 1}, "nothing is missing")
    # free-form options are checked against the estimator's keyword arguments
    check(f"{recipe}:progrpo", {"advantage.options.alhpa": 0.5}, "advantage.options.alpha")
    check(f"{recipe}:asym_grpo", {"advantage.options.alpha": 0.5}, "beta_pos")
    for override, field_type in [({"rollout.group_size": 2.5}, "int"),
                                 ({"seed": "one"}, "int"),
                                 ({"logging.tensorboard": "maybe"}, "bool"),
                                 ({"advantage.estimator": 3}, "str")]:
        check(recipe, override, f"type {field_type}")
    check(recipe, {"advantage.estimator": "nope"}, "unknown advantage estimator")
    check("nope/recipe.py", {}, "does not exist")


def test_print_mode_prints_shell_lines_that_split_back_to_the_argv(tmp_path, recipe, capsys):
    path = write_sweep(tmp_path, f"""\
        return dict(name="s", config="{recipe}",
                    overrides=product(**{{"model.cache_dir": ["it's", "b c"]}}))
        """)
    assert sweep.main([path, "--workdir_root=/tmp/r r"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line) for line in lines] == [
        ["python3", "-m", "rlvr_jax.train", f"--config={recipe}",
         f"--config.model.cache_dir={value}", f"--workdir=/tmp/r r/cache_dir={name}"]
        for value, name in [("it's", "it-s"), ("b c", "b-c")]
    ]


def test_run_mode_runs_each_command_continues_past_failures_and_summarises(
    tmp_path, recipe, recorder, capsys
):
    script, calls = recorder
    path = write_sweep(tmp_path, f"""\
        return dict(name="s", config="{recipe}:lens",
                    overrides=product(seed=[0, 1, 2], **{{"advantage.options.alpha": [0.5]}}))
        """)
    root = tmp_path / "runs"
    code = sweep.main([path, f"--workdir_root={root}", "--run",
                       f"--train_cmd={sys.executable} {script}"])
    assert code == 1  # seed=1 fails in the stand-in
    assert [call["argv"] for call in calls()] == [
        [f"--config={recipe}:lens", f"--config.seed={seed}",
         "--config.advantage.options.alpha=0.5", f"--workdir={root}/seed={seed}"]
        for seed in (0, 1, 2)
    ]
    summary = json.loads((root / "sweep_summary.json").read_text())
    assert [(r["name"], r["returncode"]) for r in summary] == [
        ("seed=0", 0), ("seed=1", 3), ("seed=2", 0)
    ]
    out = capsys.readouterr().out
    assert "2 of 3 runs succeeded." in out and "rc=3" in out


def test_run_mode_only_filter_and_log_dir(tmp_path, recipe, recorder):
    script, calls = recorder
    path = write_sweep(tmp_path, f"""\
        return dict(name="s", config="{recipe}", overrides=product(seed=[0, 2, 4]))
        """)
    logs = tmp_path / "logs"
    assert sweep.main([path, "--workdir_root=w", "--run", "--only=seed=[24]", f"--log_dir={logs}",
                       f"--train_cmd={sys.executable} {script}"]) == 0
    assert [call["argv"][1] for call in calls()] == ["--config.seed=2", "--config.seed=4"]
    assert sorted(p.name for p in logs.iterdir()) == [
        "seed=2.log", "seed=4.log", "sweep_summary.json"
    ]


def test_sweep_cli_errors_are_clear(tmp_path, recipe, capsys):
    path = write_sweep(tmp_path, f"""\
        return dict(name="s", config="{recipe}", overrides=[{{"sead": 1}}])
        """)
    for argv, message in [
        ([path, "--workdir_root=w"], "did you mean seed"),
        ([str(tmp_path / "missing.py"), "--workdir_root=w"], "does not exist"),
        ([path, "--workdir_root=w", "--no_validate", "--", "--nodes=2"], "need --slurm or --tpu"),
        ([path, "--workdir_root=w", "--no_validate", "--only=zzz"], "matches no run"),
        ([path, "--workdir_root=w", "--run", "--print"], "not allowed with"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            sweep.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    no_function = tmp_path / "empty.py"
    no_function.write_text("X = 1\n")
    with pytest.raises(SystemExit):
        sweep.main([str(no_function), "--workdir_root=w"])
    assert "defines no get_sweep()" in capsys.readouterr().err


SHIPPED = {
    "progrpo_alpha": (15, {"advantage.options.alpha", "seed"}),
    "asym_grpo_betas": (27, {"advantage.options.beta_pos", "advantage.options.beta_neg", "seed"}),
    "estimators": (18, {"seed"}),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sweeps_expand(name):
    count, keys = SHIPPED[name]
    sweep_dict = sweep.load_sweep(str(REPO / "configs" / "sweeps" / f"{name}.py"))
    runs = sweep.expand(sweep_dict, "gs://b/r")
    assert len(runs) == count and len({r.name for r in runs}) == count
    assert all(set(r.command.overrides) == keys for r in runs)
    assert {r.command.overrides["seed"] for r in runs} == {0, 1, 2}
    assert all(r.command.config.startswith("configs/smollm2_arith.py:") for r in runs)
    if name == "estimators":
        variants = {r.command.config.split(":")[1] for r in runs}
        assert variants == {"grpo", "dr_grpo", "dapo", "progrpo", "asym_grpo", "lens"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sweeps_apply_to_the_real_recipe(name, monkeypatch):
    """config_flags rejects an override whose key the recipe lacks; so does the validation."""
    monkeypatch.chdir(REPO)
    runs = sweep.expand(sweep.load_sweep(f"configs/sweeps/{name}.py"), "gs://b/r")
    sweep.validate_against_config(runs)


# --------------------------------------------------------------------------------------------
# Cloud TPU pods
# --------------------------------------------------------------------------------------------


def dry_run_lines(capsys, argv):
    assert tpu_pod.main([*argv, "--dry_run"]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]


def test_tpu_create_and_lifecycle_commands(capsys):
    where = ["--name=rl-v4", "--zone=us-central2-b", "--project=p"]
    loc = ["--zone=us-central2-b", "--project=p"]
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    lines = dry_run_lines(capsys, ["create", *where, "--accelerator_type=v4-32", "--spot"])
    assert [shlex.split(line) for line in lines] == [
        [*gcloud, "describe", "rl-v4", *loc, "--format=value(state)"],
        [*gcloud, "create", "rl-v4", *loc, "--accelerator-type=v4-32",
         "--version=tpu-ubuntu2204-base", "--spot"],
    ]
    lines = dry_run_lines(capsys, ["create", "--name=x", "--accelerator_type=v5litepod-16",
                                   "--runtime_version=custom", "--preemptible"])
    assert shlex.split(lines[1]) == [*gcloud, "create", "x", "--accelerator-type=v5litepod-16",
                                     "--version=custom", "--preemptible"]
    assert [shlex.split(x) for x in dry_run_lines(capsys, ["delete", *where])] == [
        [*gcloud, "delete", "rl-v4", *loc, "--quiet"]
    ]
    status = [shlex.split(x) for x in dry_run_lines(capsys, ["status", *where])]
    assert status[0] == [*gcloud, "describe", "rl-v4", *loc, "--format=value(state)"]
    assert status[1][:8] == [*gcloud, "ssh", "rl-v4", *loc]
    assert status[1][8] == "--worker=all"
    logs = shlex.split(dry_run_lines(capsys, ["logs", *where, "--worker=3", "--lines=7"])[0])
    assert logs[8] == "--worker=3" and "tail -n 7" in logs[9]


def test_tpu_setup_from_git_and_from_a_local_checkout(capsys, tmp_path):
    lines = dry_run_lines(capsys, ["setup", "--name=t", "--repo=https://example.com/r.git",
                                   "--ref=v1.0"])
    (argv,) = [shlex.split(line) for line in lines]
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t"]
    assert argv[6] == "--worker=all"
    script = argv[7].removeprefix("--command=")
    assert "git clone https://example.com/r.git rlvr_jax" in script
    assert "git -C rlvr_jax fetch origin v1.0 && git -C rlvr_jax checkout --detach FETCH_HEAD" \
        in script
    assert script.endswith("python3 -m pip install -e '.[tpu]'")

    checkout = tmp_path / "my checkout"
    checkout.mkdir()
    lines = dry_run_lines(capsys, ["setup", "--name=t", f"--repo={checkout}"])
    argvs = [shlex.split(line) for line in lines]
    assert argvs[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse",
                        str(checkout), "t:rlvr_jax_upload/", "--worker=all"]
    assert "mv rlvr_jax_upload/'my checkout' rlvr_jax" in argvs[2][-1]


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_tpu_setup_script_clones_checks_out_and_installs(tmp_path):
    """Runs the setup script in a fake home against a local git repo; pip is a stand-in."""
    source = tmp_path / "source"
    source.mkdir()
    _git("init", "-q", "-b", "main", cwd=source)
    commits = []
    for version in ("one", "two"):
        (source / "VERSION").write_text(version)
        _git("add", "VERSION", cwd=source)
        _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", version,
             cwd=source)
        _git("tag", f"v-{version}", cwd=source)
        commits.append(_git("rev-parse", "HEAD", cwd=source))
    home = tmp_path / "home"
    home.mkdir()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    pip_log = tmp_path / "pip.log"
    write_executable(fake_bin / "python3", f'#!/bin/sh\necho "$PWD $*" >> {pip_log}\n')
    env = {**os.environ, "HOME": str(home), "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    tpu = tpu_pod.Slice("t")

    def setup(ref):
        (argv,) = tpu_pod.setup_commands(tpu, f"file://{source}", ref)
        subprocess.run(["bash", "-c", _remote_script([argv])], cwd=home, env=env, check=True,
                       capture_output=True, timeout=60)
        return _git("rev-parse", "HEAD", cwd=home / "rlvr_jax")

    assert setup("v-one") == commits[0]  # fresh clone, then the tag
    assert setup(commits[1]) == commits[1]  # existing clone, a commit id
    assert setup("v-one") == commits[0]
    installs = pip_log.read_text().splitlines()
    assert installs[-1] == f"{home}/rlvr_jax -m pip install -e .[tpu]"
    assert len(installs) == 6  # 'pip install -U pip' and the project, three times


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--name=Bad_Name", "--accelerator_type=v4-8"], "a TPU name is"),
        (["create", "--name=ok", "--accelerator_type=tpu-big"], "GENERATION-CORES"),
        (["create", "--name=ok", "--accelerator_type=v9-8"], "no default --runtime_version"),
        (["create", "--name=ok", "--accelerator_type=v4-8", "--spot", "--preemptible"],
         "not allowed with"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=/local/dir"], "must be a GCS path"),
        (["run", "--name=ok", "--config=c/r.yaml", "--workdir=gs://b/w"], "recipe.py"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=gs://b/w", "--set=seed"],
         "KEY=VALUE"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=gs://b/w", "--env=1X=2"], "NAME=VALUE"),
        (["run", "--name=ok", "--config=c/r.py", "--workdir=gs://b/w", "--job_name=a b"],
         "job name"),
        (["setup", "--name=ok", "--repo=not/a/dir"], "neither an existing local directory"),
        (["setup", "--name=ok", "--repo=https://x/r.git", "--remote_dir=../x"], "--remote_dir"),
        (["logs", "--name=ok", "--worker=first"], "expected 'all' or a worker index"),
        (["logs", "--name=ok", "--lines=0"], "must be positive"),
        (["run", "--name=ok", "--workdir=gs://b/w"], "--config"),
    ],
)
def test_tpu_bad_input_fails_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tpu_pod.main([*argv, "--dry_run"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tpu_reuses_an_existing_slice_and_creates_a_missing_one(tmp_path, monkeypatch):
    log = tmp_path / "gcloud.jsonl"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    write_executable(fake_bin / "gcloud", textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
        exists = os.environ.get("SLICE_EXISTS") == "1"
        sys.exit(1 if sys.argv[4] == "describe" and not exists else 0)
        """))
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    argv = ["create", "--name=t", "--zone=z", "--accelerator_type=v6e-8"]

    monkeypatch.setenv("SLICE_EXISTS", "1")
    tpu_pod.main(argv)
    assert [json.loads(x)[3] for x in log.read_text().splitlines()] == ["describe"]

    log.unlink()
    monkeypatch.setenv("SLICE_EXISTS", "0")
    tpu_pod.main(argv)
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert [c[3] for c in calls] == ["describe", "create"]
    assert calls[1][4:] == ["t", "--zone=z", "--accelerator-type=v6e-8",
                            "--version=v2-alpha-tpuv6e"]


def _remote_script(argv: list[str]) -> str:
    (ssh,) = argv
    assert ssh[4] == "ssh" and ssh[-2] == "--worker=all"
    return ssh[-1].removeprefix("--command=")


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_tpu_run_script_executes_every_run_in_the_background_with_exact_argv(
    tmp_path, recorder, monkeypatch
):
    """Runs the remote script with a real bash in a fake home; argv survives both quotings."""
    script, calls = recorder
    home = tmp_path / "home"
    (home / "rlvr_jax").mkdir(parents=True)
    tpu = tpu_pod.Slice("t")
    runs = [(f"seed={s}", TrainCommand("configs/r.py:dapo", f"gs://b/w/seed={s}",
                                       {"seed": s, "tag": "a 'quoted' $value"}))
            for s in (0, 1, 2)]
    remote = _remote_script(tpu_pod.run_commands(tpu, runs, "job", env=[("MY_VAR", "x y")]))
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


def test_tpu_stop_terminates_the_job_process_group_and_refuses_a_second_start(tmp_path):
    home = tmp_path / "home"
    (home / "rlvr_jax").mkdir(parents=True)
    env = {**os.environ, "HOME": str(home)}
    tpu = tpu_pod.Slice("t")
    sleeper = [(sys.executable, "-c", "import time; time.sleep(60)")]
    start = tpu_pod.background_script([("sleep", sleeper[0])], "job")
    subprocess.run(["bash", "-c", start], env=env, check=True, timeout=30)
    pid_file = home / tpu_pod.LOG_DIR / "job" / "pid"
    assert _wait_for(pid_file.exists)
    group = int(pid_file.read_text())
    try:
        second = subprocess.run(["bash", "-c", start], env=env, capture_output=True, text=True,
                                timeout=30)
        assert second.returncode == 1 and "already running" in second.stderr
        stop = _remote_script([tpu_pod.stop_command(tpu, "job")])
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


def test_sweep_tpu_mode_starts_all_runs_as_one_job(tmp_path, recipe, capsys):
    path = write_sweep(tmp_path, f"""\
        return dict(name="alpha", config="{recipe}", overrides=product(seed=[0, 1]))
        """)
    assert sweep.main([path, "--workdir_root=gs://b/a", "--tpu", "--", "--name=t",
                       "--zone=z", "--dry_run"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("#")]
    argv = shlex.split(line)
    assert argv[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t", "--zone=z"]
    script = argv[-1]
    assert script.count("rlvr_jax.train") == 2
    assert f"--config={recipe} --config.seed=1 --workdir=gs://b/a/seed=1" in script
    assert "rlvr_jax_logs/alpha/seed=1.log" in script
    with pytest.raises(SystemExit):
        sweep.main([path, "--workdir_root=local/dir", "--tpu", "--", "--name=t", "--dry_run"])
    assert "must be a GCS path" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------------------------


def _slurm_script(capsys, argv):
    assert slurm.main([*argv, "--dry_run"]) == 0
    return capsys.readouterr().out


def test_slurm_dry_run_prints_the_batch_script(capsys):
    out = _slurm_script(capsys, [
        "--nodes=4", "--gpus_per_node=8", "--partition=gpu", "--account=lab", "--time=1-00:00:00",
        "--cpus_per_task=32", "--setup=module load cuda", "--repo_dir=/shared/rlvr jax",
        "--config=configs/r.py:progrpo", "--workdir=/shared/runs/x",
        "--set=advantage.options.alpha=0.5", "--job_name=alpha",
    ])
    lines = out.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")]
    assert sbatch == [
        "--job-name=alpha", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
        "--output=slurm_logs/%x-%j.out", "--cpus-per-task=32", "--partition=gpu",
        "--account=lab", "--time=1-00:00:00", "--signal=TERM@300",
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
        (["--time=tomorrow"], "SLURM's format"),
        (["--job_name=my job"], "--job_name"),
        (["--partition=a b"], "no spaces"),
        (["--env=NOVALUE"], "NAME=VALUE"),
        (["--env=1A=2"], "not a shell variable"),
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


def test_sweep_slurm_mode_writes_one_job_per_run(tmp_path, recipe, capsys):
    path = write_sweep(tmp_path, f"""\
        return dict(name="grid", config="{recipe}",
                    overrides=product(seed=[0, 1], **{{"optim.learning_rate": [1e-6]}}))
        """)
    assert sweep.main([path, "--workdir_root=/shared/g", "--slurm", "--", "--nodes=2",
                       "--partition=gpu", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 2
    assert "#SBATCH --job-name=grid-seed=1" in out
    assert "--config.optim.learning_rate=1e-06 --workdir=/shared/g/seed=1" in out
    assert "# submit with: sbatch slurm_scripts/grid/seed=0.sbatch" in out
    with pytest.raises(SystemExit):
        sweep.main([path, "--workdir_root=/g", "--slurm", "--", "--nodes=0", "--dry_run"])
    assert "--nodes=0" in capsys.readouterr().err


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
    assert tpu_pod.main(["delete", "--name=t"]) == 127
    assert "gcloud is not installed or not on PATH" in capsys.readouterr().err
    assert tpu_pod.main(["create", "--name=t", "--accelerator_type=v4-8"]) == 127
    assert "gcloud is not installed" in capsys.readouterr().err
    assert slurm.main(["--config=c/r.py", "--workdir=w"]) == 1
    assert "sbatch is not on PATH; the script is in slurm_scripts/rlvr_jax.sbatch" in (
        capsys.readouterr().err
    )
    write_executable(empty_bin / "sbatch", "#!/bin/sh\necho 'invalid partition' >&2\nexit 1\n")
    assert slurm.main(["--config=c/r.py", "--workdir=w"]) == 1
    assert "failed (exit 1): invalid partition" in capsys.readouterr().err
