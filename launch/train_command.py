"""The ``python -m rlvr_jax.train`` command line shared by every launcher.

A training run is ``(config, overrides, workdir)``::

    python -m rlvr_jax.train --config=configs/smollm2_arith.py:progrpo \
        --config.advantage.options.alpha=0.5 --config.seed=1 --workdir=DIR

``config`` is ``path/to/recipe.py`` optionally followed by ``:variant`` (the argument passed to
the recipe's ``get_config``). Override keys are dotted paths into the ConfigDict; values are
formatted the way ``ml_collections.config_flags`` parses them back (``repr`` for floats, so
``1e-06`` stays exact; ``True``/``False`` for booleans; strings as they are).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

OverrideValue = bool | int | float | str
Overrides = Mapping[str, OverrideValue]

DEFAULT_TRAIN_MODULE: tuple[str, ...] = ("python3", "-m", "rlvr_jax.train")
"""The program every launcher runs (``python3`` on remote hosts; sweeps run locally with the
current interpreter)."""

_DOTTED_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_CONFIG_SPEC = re.compile(r"[^:\s]+\.py(:[^\s]*)?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a shell variable name


class LaunchError(ValueError):
    """Bad launcher input; the message names the argument and what is expected."""


def check_config_spec(config: str) -> str:
    """Returns ``config`` if it looks like ``path/recipe.py[:variant]``, else raises ValueError."""
    if not isinstance(config, str) or not _CONFIG_SPEC.fullmatch(config):
        raise ValueError(
            f"config must be 'path/to/recipe.py' or 'path/to/recipe.py:variant', got {config!r}."
        )
    return config


def split_config_spec(config: str) -> tuple[str, str | None]:
    """``'configs/x.py:progrpo'`` -> ``('configs/x.py', 'progrpo')``; no variant -> ``None``."""
    path, _, variant = check_config_spec(config).partition(":")
    return path, (variant or None)


def check_override_key(key: str) -> str:
    """Returns ``key`` if it is a dotted Python-identifier path, else raises ValueError."""
    if not isinstance(key, str) or not _DOTTED_KEY.fullmatch(key):
        raise ValueError(
            f"override key {key!r} is not a dotted config path like 'advantage.options.alpha'."
        )
    return key


def format_override_value(key: str, value: OverrideValue) -> str:
    """Formats ``value`` for ``--config.<key>=<value>``; rejects types config_flags cannot parse.

    Strings may not be empty or contain newlines (the value must survive a shell and a SLURM
    script line).
    """
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"override {key}={value!r}: non-finite values are not allowed.")
        return repr(value)
    if isinstance(value, str):
        if not value or "\n" in value or "\r" in value:
            raise ValueError(f"override {key}={value!r}: strings must be non-empty, one line.")
        return value
    raise ValueError(
        f"override {key}={value!r} has type {type(value).__name__}; "
        "only bool, int, float and str values are supported."
    )


def parse_cli_override(text: str) -> tuple[str, str]:
    """``'optim.learning_rate=1e-6'`` -> ``('optim.learning_rate', '1e-6')`` (value verbatim)."""
    key, sep, value = text.partition("=")
    if not sep or not value:
        raise ValueError(f"override {text!r} must look like KEY=VALUE, e.g. seed=1.")
    return check_override_key(key.strip()), value


@dataclass(frozen=True)
class TrainCommand:
    """One training run: recipe, overrides and workdir, plus any extra flags for the trainer."""

    config: str
    workdir: str
    overrides: Overrides = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_config_spec(self.config)
        if not self.workdir:
            raise ValueError("workdir must be a non-empty path or gs:// URL.")
        for key, value in self.overrides.items():
            format_override_value(check_override_key(key), value)

    def argv(self, program: Sequence[str] = DEFAULT_TRAIN_MODULE) -> list[str]:
        """The full argument vector, ``program`` first."""
        flags = [f"--config={self.config}"]
        flags += [
            f"--config.{key}={format_override_value(key, value)}"
            for key, value in self.overrides.items()
        ]
        flags.append(f"--workdir={self.workdir}")
        return [*program, *flags, *self.extra_args]
