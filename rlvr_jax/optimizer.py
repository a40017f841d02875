"""Optax optimizer and learning-rate schedule from the ``optim`` config section.

Config keys (``config.optim``)::

    name: "adamw"            # "adamw" | "adam" | "sgd"
    learning_rate: 1e-6      # peak learning rate
    schedule: "constant"     # "constant" | "cosine" (to final_lr_fraction at total_steps)
    warmup_steps: 0          # linear warm-up from 0 to the peak
    total_steps: 1000        # optimizer updates over the run (cosine only)
    final_lr_fraction: 0.1   # cosine floor as a fraction of the peak
    weight_decay: 0.0        # AdamW decoupled weight decay
    b1: 0.9
    b2: 0.999
    eps: 1e-8
    grad_clip_norm: 1.0      # clip by global norm; 0 or None disables

The schedule counts optimizer *updates* (several per rollout when PPO mini-batches or epochs
are used), as optax does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")

DEFAULTS: dict[str, Any] = {
    "name": "adamw",
    "learning_rate": 1e-6,
    "schedule": "constant",
    "warmup_steps": 0,
    "total_steps": 1000,
    "final_lr_fraction": 0.1,
    "weight_decay": 0.0,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "grad_clip_norm": 1.0,
}


def settings(optim: Mapping[str, Any]) -> dict[str, Any]:
    """``optim`` merged over :data:`DEFAULTS` and checked; errors name the key."""
    unknown = sorted(set(optim) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"optim: unknown key(s) {unknown}; known keys are {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **dict(optim)}
    if merged["name"] not in OPTIMIZERS:
        raise ValueError(f"optim.name={merged['name']!r}; expected one of {OPTIMIZERS}")
    if merged["schedule"] not in SCHEDULES:
        raise ValueError(f"optim.schedule={merged['schedule']!r}; expected one of {SCHEDULES}")
    if merged["learning_rate"] <= 0:
        raise ValueError(f"optim.learning_rate must be > 0, got {merged['learning_rate']}")
    if merged["warmup_steps"] < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {merged['warmup_steps']}")
    if merged["schedule"] == "cosine" and merged["total_steps"] <= merged["warmup_steps"]:
        raise ValueError(
            f"optim.total_steps={merged['total_steps']} must exceed optim.warmup_steps="
            f"{merged['warmup_steps']} for the cosine schedule"
        )
    return merged


def learning_rate_schedule(optim: Mapping[str, Any]) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then constant or cosine decay."""
    s = settings(optim)
    peak, warmup = s["learning_rate"], s["warmup_steps"]
    if s["schedule"] == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup,
            decay_steps=s["total_steps"], end_value=peak * s["final_lr_fraction"],
        )
    if warmup == 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )


def make_optimizer(optim: Mapping[str, Any]) -> optax.GradientTransformation:
    """The configured optimizer, with global-norm gradient clipping in front."""
    s = settings(optim)
    schedule = learning_rate_schedule(optim)
    if s["name"] == "adamw":
        base = optax.adamw(schedule, b1=s["b1"], b2=s["b2"], eps=s["eps"],
                           weight_decay=s["weight_decay"])
    elif s["name"] == "adam":
        base = optax.adam(schedule, b1=s["b1"], b2=s["b2"], eps=s["eps"])
    else:
        base = optax.sgd(schedule)
    if s["grad_clip_norm"]:
        return optax.chain(optax.clip_by_global_norm(s["grad_clip_norm"]), base)
    return base
