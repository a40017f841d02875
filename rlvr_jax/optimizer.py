"""Optax optimizer and learning-rate schedule; the ``optim`` config section is the keyword
arguments of :func:`make_optimizer` (its signature holds the defaults).

The schedule counts optimizer *updates* (several per rollout when PPO mini-batches or epochs
are used), as optax does.
"""

from __future__ import annotations

import optax

OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def learning_rate_schedule(
    learning_rate: float, schedule: str, warmup_steps: int, total_steps: int,
    final_lr_fraction: float,
) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps`` updates, then constant,
    or cosine decay to ``learning_rate * final_lr_fraction`` at ``total_steps``."""
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
            decay_steps=total_steps, end_value=learning_rate * final_lr_fraction,
        )
    if warmup_steps == 0:
        return optax.constant_schedule(learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps),
         optax.constant_schedule(learning_rate)], [warmup_steps],
    )


def make_optimizer(
    *,
    name: str = "adamw",
    learning_rate: float = 1e-6,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int = 1000,
    final_lr_fraction: float = 0.1,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    grad_clip_norm: float = 1.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer (global-norm gradient clipping in front) and its learning-rate schedule.

    Args:
      name: ``"adamw"`` (decoupled ``weight_decay``), ``"adam"`` or ``"sgd"``.
      learning_rate: peak learning rate.
      schedule: ``"constant"`` or ``"cosine"`` (see :func:`learning_rate_schedule`).
      warmup_steps, total_steps, final_lr_fraction: schedule shape, in optimizer updates.
      b1, b2, eps: Adam moments and epsilon.
      grad_clip_norm: clip the gradient's global norm to this; ``0`` disables clipping.

    Raises ``ValueError`` naming the ``optim.<key>`` that is out of range.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r}; expected one of {OPTIMIZERS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r}; expected one of {SCHEDULES}")
    if learning_rate <= 0:
        raise ValueError(f"optim.learning_rate must be > 0, got {learning_rate}")
    if warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {warmup_steps}")
    if schedule == "cosine" and total_steps <= warmup_steps:
        raise ValueError(
            f"optim.total_steps={total_steps} must exceed optim.warmup_steps={warmup_steps} "
            "for the cosine schedule"
        )
    lr = learning_rate_schedule(learning_rate, schedule, warmup_steps, total_steps,
                                final_lr_fraction)
    if name == "adamw":
        base = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    elif name == "adam":
        base = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    else:
        base = optax.sgd(lr)
    if grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), base), lr
    return base, lr
