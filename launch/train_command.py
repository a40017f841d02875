"""The ``python -m rlvr_jax.train`` command line every launcher runs, and running a command.

A training run is ``(config, overrides, workdir)``::

    python3 -m rlvr_jax.train --config=configs/smollm2_arith.py:progrpo \
        --config.advantage.options.alpha=0.5 --config.seed=1 --workdir=DIR

``config`` is ``path/to/recipe.py`` optionally followed by ``:variant`` (the argument passed to
the recipe's ``get_config``). Override keys are dotted paths into the ConfigDict; values are
written with ``str`` (``1e-06``, ``True``), which ``ml_collections.config_flags`` parses back to
the field's type.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

OverrideValue = bool | int | float | str

TRAIN_PROGRAM: tuple[str, ...] = ("python3", "-m", "rlvr_jax.train")

NAME = re.compile(r"[A-Za-z0-9._=-]+")
"""Job and run names: safe as a path component, a shell word and an ``#SBATCH`` value."""
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_CONFIG_SPEC = re.compile(r"[^:\s]+\.py(:[^\s]*)?")


class LaunchError(ValueError):
    """Bad launcher input, or a tool that could not run; the message says which and why."""


def split_config_spec(config: str) -> tuple[str, str | None]:
    """``'configs/x.py:progrpo'`` -> ``('configs/x.py', 'progrpo')``; no variant -> ``None``."""
    if not isinstance(config, str) or not _CONFIG_SPEC.fullmatch(config):
        raise LaunchError(
            f"config must be 'path/to/recipe.py' or 'path/to/recipe.py:variant', got {config!r}."
        )
    path, _, variant = config.partition(":")
    return path, (variant or None)


def check_name(what: str, name: str) -> str:
    """Returns ``name`` if it matches :data:`NAME`, else raises naming ``what``."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise LaunchError(f"{what} {name!r}: use letters, digits, '.', '_', '=', '-'.")
    return name


def parse_pairs(items: Iterable[str], flag: str) -> list[tuple[str, str]]:
    """``['seed=1', 'name=a=b']`` -> ``[('seed', '1'), ('name', 'a=b')]`` for ``--set``/``--env``.

    ``--env`` names must be shell variable names; ``--set`` keys dotted config paths.
    """
    pattern = ENV_NAME if flag == "--env" else _DOTTED_KEY
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not pattern.fullmatch(key) or (flag == "--set" and not value):
            example = "MY_VAR=1" if flag == "--env" else "advantage.options.alpha=0.5"
            raise LaunchError(f"{flag}={item!r}: expected KEY=VALUE, e.g. {example}.")
        pairs.append((key, value))
    return pairs


@dataclass(frozen=True)
class TrainCommand:
    """One training run: its name (log files, job names), recipe, overrides and workdir.

    Override keys and values are checked where they come from: ``--set`` by
    :func:`parse_pairs`, a sweep's against its recipe (``launch.sweep.check_runs``).
    """

    name: str
    config: str
    workdir: str
    overrides: Mapping[str, OverrideValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("run name", self.name)
        split_config_spec(self.config)
        if not self.workdir:
            raise LaunchError("workdir must be a non-empty path or gs:// URL.")

    def argv(self, program: Sequence[str] = TRAIN_PROGRAM) -> list[str]:
        """The full argument vector, ``program`` first."""
        overrides = [f"--config.{key}={value}" for key, value in self.overrides.items()]
        return [*program, f"--config={self.config}", *overrides, f"--workdir={self.workdir}"]


def execute(argv: Sequence[str], dry_run: bool) -> int:
    """Prints ``argv`` as a shell line; unless ``dry_run``, runs it and returns its exit status."""
    print(shlex.join(argv), flush=True)
    if dry_run:
        return 0
    try:
        return subprocess.run(list(argv)).returncode
    except FileNotFoundError:
        raise LaunchError(f"{argv[0]} is not installed or not on PATH.") from None
