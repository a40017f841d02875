"""Which runs to launch: one (``--config``) or a sweep file's (``--sweep``), for every launcher.

A sweep file defines ``get_sweep()`` returning ``dict(name=..., config="configs/x.py:variant",
overrides=[{dotted key: value, ...}, ...])``: one run per entry (an entry's ``"config"`` starts
that run from another recipe); :func:`product` builds a grid. Run names come from the keys
that vary (``alpha=0.5__seed=1``) and each run's workdir is ``<workdir>/<run name>``.

Before anything is printed or launched, every run's overrides are applied to its recipe with
``ConfigDict.update_from_flattened_dict`` on the locked config, as ``config_flags`` applies the
trainer's ``--config.<key>`` flags (no new keys; the field's type), then
``rlvr_jax.config.validate`` runs: a misspelt key fails here, not in the 30th job.
``python -m launch.sweep --sweep=FILE --workdir=DIR`` prints one training command per run.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from launch.train_command import (
    TRAIN_PROGRAM,
    LaunchError,
    OverrideValue,
    TrainCommand,
    check_name,
    parse_pairs,
    split_config_spec,
)

CONFIG_KEY = "config"
"""Override key that replaces the recipe for one run."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def product(**axes: Sequence[OverrideValue]) -> list[dict[str, OverrideValue]]:
    """Cartesian grid of overrides; pass dotted keys with ``**{"a.b": [...]}``.

    ``product(seed=[0, 1], **{"advantage.options.alpha": [0.1, 1.0]})`` ->
    ``[{seed: 0, alpha: 0.1}, {seed: 0, alpha: 1.0}, {seed: 1, alpha: 0.1}, ...]``.
    """
    for key, values in axes.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise LaunchError(f"product(): {key} needs a non-empty list of values, got {values!r}.")
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _value_token(key: str, value: OverrideValue) -> str:
    if key == CONFIG_KEY:
        path, variant = split_config_spec(str(value))
        value = variant or os.path.splitext(os.path.basename(path))[0]
    return _UNSAFE.sub("-", str(value)).strip("-") or "-"


def run_names(overrides: Sequence[Mapping[str, OverrideValue]]) -> list[str]:
    """Names for the runs (see the module docstring); raises LaunchError on duplicates."""
    keys = list(dict.fromkeys(key for entry in overrides for key in entry))
    varying = [key for key in keys
               if len({repr(entry.get(key, "<unset>")) for entry in overrides}) > 1]
    shown = varying or keys
    last = [key.rsplit(".", 1)[-1] for key in shown]
    labels = {key: short if last.count(short) == 1 else key
              for key, short in zip(shown, last, strict=True)}
    names = [
        "__".join(f"{labels[key]}={_value_token(key, entry[key])}"
                  for key in shown if key in entry) or "base"
        for entry in overrides
    ]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise LaunchError(
            f"runs share the names {duplicates}: two override entries are identical, or differ "
            "only in characters a name cannot hold."
        )
    return names


def expand(sweep: Mapping[str, Any], workdir_root: str) -> list[TrainCommand]:
    """Turns a ``get_sweep()`` dict into runs (:func:`check_runs` checks their overrides)."""
    if not isinstance(sweep, Mapping) or set(sweep) != {"name", "config", "overrides"}:
        raise LaunchError(
            "get_sweep() must return a dict with exactly the fields name, config, overrides; "
            f"got {sorted(sweep) if isinstance(sweep, Mapping) else type(sweep).__name__}."
        )
    check_name("sweep name", sweep["name"])
    overrides = sweep["overrides"]
    if not isinstance(overrides, Sequence) or isinstance(overrides, str) or not overrides:
        raise LaunchError("'overrides' must be a non-empty list of dicts (use [{}] for one run).")
    if not all(isinstance(entry, Mapping) for entry in overrides):
        raise LaunchError(f"every entry of 'overrides' must be a dict, got {overrides!r}.")
    root = workdir_root.rstrip("/")
    return [
        TrainCommand(name, entry.get(CONFIG_KEY, sweep["config"]), f"{root}/{name}",
                     {key: value for key, value in entry.items() if key != CONFIG_KEY})
        for name, entry in zip(run_names(overrides), overrides, strict=True)
    ]


def load_function(path: str, name: str) -> Any:
    """``name`` (``get_sweep``, ``get_config``) defined by the Python file at ``path``."""
    if not os.path.isfile(path):
        raise LaunchError(f"{path!r} does not exist (paths are relative to {os.getcwd()}).")
    spec = importlib.util.spec_from_file_location("_launch_" + _UNSAFE.sub("_", path), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, name, None)):
        raise LaunchError(f"{path!r} defines no {name}() function.")
    return getattr(module, name)


def load_config(config: str) -> Any:
    """``get_config(variant)`` (or ``get_config()``) of a ``path.py[:variant]`` recipe."""
    path, variant = split_config_spec(config)
    get_config = load_function(path, "get_config")
    return get_config(variant) if variant is not None else get_config()


def _reason(error: Exception) -> str:
    """ml_collections' message, without the dump of every sibling field a locked config adds."""
    text = str(error.args[0] if error.args else error)
    head, _, fields = text.partition(" Other fields present")
    hint = fields.rsplit("\n", 1)[-1]
    return f"{head} {hint}" if hint.startswith("Did you mean") else head


def resolve_runs(runs: Sequence[TrainCommand]) -> list[Any]:
    """Every run's recipe ConfigDict with the run's overrides applied (locked, so an override
    can only change an existing key, as ``config_flags`` does).

    Raises LaunchError naming the run and the override that does not apply.
    """
    recipes: dict[str, Any] = {}
    configs = []
    for run in runs:
        if run.config not in recipes:
            recipes[run.config] = load_config(run.config)
        config = recipes[run.config].copy_and_resolve_references()
        config.lock()
        for key, value in run.overrides.items():
            try:
                config.update_from_flattened_dict({key: value})
            except (KeyError, TypeError, ValueError) as error:
                raise LaunchError(f"run {run.name} ({run.config}): override {key}={value!r}: "
                                  f"{_reason(error)}") from None
        configs.append(config)
    return configs


def check_runs(runs: Sequence[TrainCommand]) -> None:
    """Resolves every run (:func:`resolve_runs`) and validates the result; raises LaunchError
    naming the run."""
    from rlvr_jax import config as config_lib  # here: launching one run needs no JAX

    for run, config in zip(runs, resolve_runs(runs), strict=True):
        try:
            config_lib.validate(config)
        except (KeyError, TypeError, ValueError) as error:
            raise LaunchError(f"run {run.name} ({run.config}): {error}") from None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags naming the runs, shared by every launcher: one run or a sweep."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="One run: configs/<recipe>.py[:variant].")
    what.add_argument("--sweep", help="Many runs: configs/sweeps/<name>.py with get_sweep().")
    parser.add_argument("--workdir", required=True,
                        help="The run's directory; with --sweep, runs go to <workdir>/<run name>.")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="With --config: config override (repeatable).")
    parser.add_argument("--only", help="With --sweep: keep runs whose name matches this regex.")


def runs_from_args(args: argparse.Namespace, name: str) -> tuple[str | None, list[TrainCommand]]:
    """``(sweep name, its runs)``, checked against their recipes; ``--config``: ``(None, [run])``.

    ``name`` names the one run of ``--config``.
    """
    if args.config:
        if args.only:
            raise LaunchError("--only selects runs of a --sweep.")
        overrides = dict(parse_pairs(args.overrides, "--set"))
        return None, [TrainCommand(name, args.config, args.workdir, overrides)]
    if args.overrides:
        raise LaunchError("--set applies to --config; put a sweep's overrides in its file.")
    sweep = load_function(args.sweep, "get_sweep")()
    runs = [run for run in expand(sweep, args.workdir) if re.search(args.only or "", run.name)]
    if not runs:
        raise LaunchError(f"--only={args.only!r} matches no run name.")
    check_runs(runs)
    return sweep["name"], runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.sweep",
        description="Print the training command of each run (pipe to bash to run them here).",
    )
    add_run_arguments(parser)
    parser.add_argument("--train_cmd", help="Program to run instead of 'python3 -m "
                        "rlvr_jax.train' (shell words), e.g. a wrapper script.")
    args = parser.parse_args(argv)
    try:
        _, runs = runs_from_args(args, "run")
    except (LaunchError, re.error) as error:
        parser.error(str(error))
    program = shlex.split(args.train_cmd) if args.train_cmd else TRAIN_PROGRAM
    for run in runs:
        print(shlex.join(run.argv(program)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
