"""Sweeps: one recipe, a list of overrides, one training run per entry.

A sweep file is a Python module with ``get_sweep()`` returning::

    dict(
        name="progrpo_alpha",                        # names SLURM jobs / the TPU job
        config="configs/smollm2_arith.py:progrpo",   # the recipe every run starts from
        overrides=[{"advantage.options.alpha": 0.5, "seed": 0}, ...],
    )

An override entry may also carry ``"config"`` to start that run from another recipe or variant
(an estimator comparison sweeps ``configs/smollm2_arith.py:grpo``, ``...:dapo``, ...).
:func:`product` builds the Cartesian grid; the *last* keyword varies fastest.

Each run's name is derived from the overrides whose values differ between runs, as
``<key>=<value>`` joined by ``__`` (``alpha=0.5__seed=1``); the key is the last component of
the dotted path unless two swept keys share it, then the full path. Names use only
``[A-Za-z0-9._=-]`` (other characters become ``-``) and must be unique. A run's workdir is
``<workdir_root>/<run name>``; rerunning a sweep resumes every run from its checkpoint.

Modes::

    python -m launch.sweep configs/sweeps/progrpo_alpha.py --workdir_root=runs/alpha --print
    python -m launch.sweep FILE --workdir_root=runs/alpha --run         # one by one, here
    python -m launch.sweep FILE --workdir_root=/shared/alpha --slurm -- --nodes=1 --dry_run
    python -m launch.sweep FILE --workdir_root=gs://b/alpha --tpu -- --name=rl-v5e --dry_run

Arguments after ``--`` go to the SLURM launcher (one batch job per run) or the TPU launcher
(all runs one after another on the slice, in the background). Before anything is printed or
launched, every override is applied to the recipe's ConfigDict and the result is validated
(:func:`validate_against_config`), so a misspelt key or a value of the wrong type fails here,
with the closest valid keys, and not in the 30th job.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.train_command import (
    OverrideValue,
    TrainCommand,
    check_config_spec,
    check_override_key,
    format_override_value,
    split_config_spec,
)

CONFIG_KEY = "config"
"""Override key that replaces the recipe for one run."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SWEEP_NAME = re.compile(r"[A-Za-z0-9._=-]+")


class SweepError(ValueError):
    """A malformed sweep file or sweep arguments; the message says what and where."""


@dataclass(frozen=True)
class Run:
    """One expanded run of a sweep."""

    name: str
    command: TrainCommand


def product(**axes: Sequence[OverrideValue]) -> list[dict[str, OverrideValue]]:
    """Cartesian grid of overrides; pass dotted keys with ``**{"a.b": [...]}``.

    ``product(seed=[0, 1], **{"advantage.options.alpha": [0.1, 1.0]})`` ->
    ``[{seed: 0, alpha: 0.1}, {seed: 0, alpha: 1.0}, {seed: 1, alpha: 0.1}, ...]``.
    """
    for key, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise SweepError(f"product(): {key} needs a non-empty list of values, got {values!r}.")
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _value_token(key: str, value: OverrideValue) -> str:
    if key == CONFIG_KEY:
        path, variant = split_config_spec(str(value))
        text = variant or os.path.splitext(os.path.basename(path))[0]
    else:
        text = format_override_value(key, value)
    return _UNSAFE.sub("-", text).strip("-") or "-"


def run_names(overrides: Sequence[Mapping[str, OverrideValue]]) -> list[str]:
    """Names for the runs (see the module docstring); raises SweepError on duplicates."""
    keys: list[str] = []
    for entry in overrides:
        keys += [key for key in entry if key not in keys]
    varying = [
        key for key in keys
        if len({repr(entry.get(key, "<unset>")) for entry in overrides}) > 1
    ]
    shown = varying or keys
    last = [key.rsplit(".", 1)[-1] for key in shown]
    labels = {
        key: short if last.count(short) == 1 else key
        for key, short in zip(shown, last, strict=True)
    }
    names = []
    for entry in overrides:
        parts = [f"{labels[key]}={_value_token(key, entry[key])}" for key in shown if key in entry]
        names.append("__".join(parts) or "base")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SweepError(
            f"runs share the names {duplicates}: two override entries are identical, or differ "
            "only in characters a name cannot hold."
        )
    return names


def _check_workdir_root(workdir_root: str) -> str:
    if not workdir_root:
        raise SweepError("--workdir_root must be a directory or gs:// URL.")
    return workdir_root.rstrip("/")


def expand(sweep: Mapping[str, Any], workdir_root: str) -> list[Run]:
    """Turns a ``get_sweep()`` dict into runs; validates its shape and every key and value."""
    if not isinstance(sweep, Mapping):
        raise SweepError(f"get_sweep() must return a dict, got {type(sweep).__name__}.")
    unknown = sorted(set(sweep) - {"name", "config", "overrides"})
    if unknown:
        raise SweepError(f"unknown sweep field(s) {unknown}; expected name, config, overrides.")
    for field_name in ("name", "config", "overrides"):
        if field_name not in sweep:
            raise SweepError(f"the sweep has no {field_name!r} field.")
    name = sweep["name"]
    if not isinstance(name, str) or not _SWEEP_NAME.fullmatch(name):
        raise SweepError(f"sweep name {name!r}: use letters, digits, '.', '_', '=', '-'.")
    base_config = check_config_spec(sweep["config"])
    overrides = sweep["overrides"]
    if not isinstance(overrides, Sequence) or isinstance(overrides, str) or not overrides:
        raise SweepError("'overrides' must be a non-empty list of dicts (use [{}] for one run).")
    for index, entry in enumerate(overrides):
        if not isinstance(entry, Mapping):
            raise SweepError(f"overrides[{index}] must be a dict, got {entry!r}.")
        for key, value in entry.items():
            try:
                if key == CONFIG_KEY:
                    check_config_spec(value)
                else:
                    format_override_value(check_override_key(key), value)
            except ValueError as error:
                raise SweepError(f"overrides[{index}]: {error}") from None
    root = _check_workdir_root(workdir_root)
    runs = []
    for run_name, entry in zip(run_names(overrides), overrides, strict=True):
        config = entry.get(CONFIG_KEY, base_config)
        rest = {key: value for key, value in entry.items() if key != CONFIG_KEY}
        runs.append(Run(run_name, TrainCommand(config, f"{root}/{run_name}", rest)))
    return runs


def load_module(path: str, what: str) -> Any:
    """Imports a Python file by path (a sweep file or a recipe)."""
    if not os.path.isfile(path):
        raise SweepError(f"{what} {path!r} does not exist (paths are relative to {os.getcwd()}).")
    module_name = "_rlvr_launch_" + _UNSAFE.sub("_", os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str) -> dict[str, Any]:
    module = load_module(path, "sweep file")
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"sweep file {path!r} defines no get_sweep() function.")
    return module.get_sweep()


def _dotted_keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if hasattr(value, "items"):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def load_config(config: str) -> Any:
    """``get_config(variant)`` (or ``get_config()``) of a ``path.py[:variant]`` recipe."""
    path, variant = split_config_spec(config)
    module = load_module(path, "recipe")
    if not callable(getattr(module, "get_config", None)):
        raise SweepError(f"recipe {path!r} defines no get_config() function.")
    return module.get_config(variant) if variant is not None else module.get_config()


def validate_against_config(runs: Sequence[Run]) -> None:
    """Applies every run's overrides to its recipe's ConfigDict and validates the result.

    Mirrors what the trainer accepts: a key must exist in the recipe, except below an
    ``options`` dictionary (estimator and task keyword arguments are free-form there, as in
    ``rlvr_jax.config.check_override_keys``). Values are converted to the existing field's type
    the way config_flags converts command-line text (``1`` is fine for a float field, ``"x"``
    for an int field is not). The overridden config must then pass
    ``rlvr_jax.config.validate`` (which checks, e.g., that an option is a keyword argument of
    the chosen estimator). Raises SweepError naming the run.
    """
    from rlvr_jax import config as run_config

    recipes: dict[str, Any] = {}
    for run in runs:
        if run.command.config not in recipes:
            recipes[run.command.config] = load_config(run.command.config)
        config = recipes[run.command.config].copy_and_resolve_references()
        for key, value in run.command.overrides.items():
            _apply_override(config, key, value, run)
        try:
            run_config.validate(config)
        except (ValueError, KeyError, TypeError) as error:
            raise SweepError(f"run {run.name} ({run.command.config}): {error}") from None


def _apply_override(config: Any, key: str, value: OverrideValue, run: Run) -> None:
    *parents, leaf = key.split(".")
    node = config
    for depth, part in enumerate(parents):
        if part not in node:
            _raise_unknown_key(config, key, f"{'.'.join(parents[: depth + 1])} is missing", run)
        node = node[part]
        if not hasattr(node, "keys"):
            _raise_unknown_key(
                config, key, f"{'.'.join(parents[: depth + 1])} is a value, not a section", run
            )
    if leaf not in node:
        if not parents or parents[-1] != "options":
            _raise_unknown_key(config, key, f"{key} is missing", run)
        with node.unlocked():
            setattr(node, leaf, value)
        return
    current = node[leaf]
    try:
        if isinstance(current, bool):
            converted: Any = _parse_bool(value)
        elif isinstance(current, (int, float)) and not isinstance(value, bool):
            converted = type(current)(value) if isinstance(value, str) else value
            if isinstance(current, int) and isinstance(converted, float):
                raise TypeError("a float for an int field")
        else:
            converted = value
        setattr(node, leaf, converted)
    except (TypeError, ValueError) as error:
        raise SweepError(
            f"run {run.name}: {key}={value!r} does not fit the field's type "
            f"{type(current).__name__} ({error})."
        ) from None


def _raise_unknown_key(config: Any, key: str, reason: str, run: Run) -> None:
    close = difflib.get_close_matches(key, _dotted_keys(config), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "."
    raise SweepError(f"run {run.name}: {run.command.config} has no key {key!r} ({reason}){hint}")


def _parse_bool(value: OverrideValue) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "t", "1"):
        return True
    if text in ("false", "f", "0"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


# --------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------


def print_runs(runs: Sequence[Run], program: Sequence[str]) -> None:
    for run in runs:
        print(shlex.join(run.command.argv(program)))


def run_locally(
    runs: Sequence[Run], program: Sequence[str], log_dir: str | None = None
) -> list[dict[str, Any]]:
    """Runs each command in turn (continuing past failures); returns one record per run.

    With ``log_dir`` each run's output goes to ``<log_dir>/<run name>.log``; otherwise it is
    inherited (the terminal). Prints a summary table at the end.
    """
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    results = []
    for index, run in enumerate(runs, 1):
        argv = run.command.argv(program)
        print(f"[{index}/{len(runs)}] {run.name}: {shlex.join(argv)}", flush=True)
        start = time.monotonic()
        try:
            if log_dir:
                with open(os.path.join(log_dir, f"{run.name}.log"), "w") as log:
                    code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
            else:
                code = subprocess.run(argv).returncode
        except OSError as error:  # the program itself could not be started
            print(f"  could not start: {error}", flush=True)
            code = 127
        seconds = time.monotonic() - start
        results.append({"name": run.name, "returncode": code, "seconds": round(seconds, 3),
                        "workdir": run.command.workdir})
    print_summary(results)
    return results


def print_summary(results: Sequence[Mapping[str, Any]]) -> None:
    width = max([len("run"), *(len(r["name"]) for r in results)])
    print(f"\n{'run':<{width}}  status  seconds")
    for r in results:
        status = "ok" if r["returncode"] == 0 else f"rc={r['returncode']}"
        print(f"{r['name']:<{width}}  {status:<6}  {r['seconds']:>7.1f}")
    failed = sum(r["returncode"] != 0 for r in results)
    print(f"{len(results) - failed} of {len(results)} runs succeeded.", flush=True)


def _write_summary(results: Sequence[Mapping[str, Any]], directory: str) -> None:
    """Writes ``sweep_summary.json`` to a local ``directory`` (not to gs://)."""
    if directory.startswith("gs://"):
        return
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "sweep_summary.json"), "w") as f:
        json.dump(list(results), f, indent=2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch.sweep",
        description="Expand a sweep file into training runs; print, run, or launch them.",
        epilog="Arguments after -- go to launch.slurm (--slurm) or launch.tpu_pod run (--tpu).",
    )
    parser.add_argument("sweep_file", help="configs/sweeps/<name>.py with get_sweep()")
    parser.add_argument("--workdir_root", required=True, help="Runs go to <root>/<run name>.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", dest="mode", action="store_const", const="print",
                      help="Print one command per run (the default).")
    mode.add_argument("--run", dest="mode", action="store_const", const="run",
                      help="Run them here, one by one.")
    mode.add_argument("--slurm", dest="mode", action="store_const", const="slurm",
                      help="One SLURM batch job per run.")
    mode.add_argument("--tpu", dest="mode", action="store_const", const="tpu",
                      help="All runs in turn on a TPU slice.")
    parser.add_argument("--only", help="Regular expression; keep runs whose name matches.")
    parser.add_argument("--train_cmd", help="Program to run instead of 'python -m "
                        "rlvr_jax.train' (shell words), e.g. a wrapper script.")
    parser.add_argument("--log_dir", help="--run: write each run's output to <dir>/<run>.log.")
    parser.add_argument("--no_validate", action="store_true",
                        help="Skip applying the overrides to the recipe here (e.g. when the "
                        "recipe only exists on the cluster).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    launcher_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own_args = argv[: argv.index("--")] if "--" in argv else argv
    parser = build_parser()
    args = parser.parse_args(own_args)
    mode = args.mode or "print"
    if launcher_args and mode not in ("slurm", "tpu"):
        parser.error(f"arguments after -- ({shlex.join(launcher_args)}) need --slurm or --tpu.")
    try:
        sweep = load_sweep(args.sweep_file)
        runs = expand(sweep, args.workdir_root)
        if args.only:
            runs = [run for run in runs if re.search(args.only, run.name)]
            if not runs:
                raise SweepError(f"--only={args.only!r} matches no run name.")
        if not args.no_validate:
            validate_against_config(runs)
    except (ValueError, re.error) as error:
        parser.error(str(error))
    default_program = (sys.executable, "-m", "rlvr_jax.train") if mode == "run" else None
    program = tuple(shlex.split(args.train_cmd)) if args.train_cmd else default_program
    if mode == "print":
        print_runs(runs, program or ("python3", "-m", "rlvr_jax.train"))
        return 0
    if mode == "run":
        assert program is not None
        results = run_locally(runs, program, args.log_dir)
        _write_summary(results, args.log_dir or args.workdir_root)
        return 0 if all(r["returncode"] == 0 for r in results) else 1
    if args.train_cmd:
        parser.error("--train_cmd applies to --print and --run only.")
    if mode == "slurm":
        return _launch_slurm(sweep["name"], runs, launcher_args)
    return _launch_tpu(sweep["name"], runs, launcher_args)


def _launch_slurm(sweep_name: str, runs: Sequence[Run], launcher_args: list[str]) -> int:
    from launch import slurm

    parser = argparse.ArgumentParser(prog="launch.sweep --slurm --")
    slurm.add_job_arguments(parser)
    args = parser.parse_args(launcher_args)
    try:
        jobs = [(run, slurm.job_from_args(args, f"{sweep_name}-{run.name}")) for run in runs]
    except ValueError as error:
        parser.error(str(error))
    failed = 0
    for run, job in jobs:
        script_path = os.path.join(args.script_dir, sweep_name, f"{run.name}.sbatch")
        try:
            slurm.submit(slurm.render_script(job, run.command), script_path, job.log_dir,
                         args.dry_run)
        except slurm.LaunchError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    if failed:
        print(f"{failed} of {len(jobs)} submissions failed.", file=sys.stderr)
    return 1 if failed else 0


def _launch_tpu(sweep_name: str, runs: Sequence[Run], launcher_args: list[str]) -> int:
    from launch import tpu_pod

    parser = argparse.ArgumentParser(prog="launch.sweep --tpu --")
    tpu_pod.add_slice_arguments(parser)
    tpu_pod.add_remote_dir_argument(parser)
    tpu_pod.add_run_arguments(parser, training=False)
    args = parser.parse_args(launcher_args)
    try:
        tpu = tpu_pod.Slice(args.name, args.zone, args.project)
        commands = tpu_pod.run_commands(
            tpu, [(run.name, run.command) for run in runs], sweep_name, args.remote_dir,
            tpu_pod.check_env(args.env),
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        tpu_pod.execute(commands, args.dry_run)
    except tpu_pod.CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.returncode
    print(f"# logs: python -m launch.tpu_pod logs --name={args.name} --job_name={sweep_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
