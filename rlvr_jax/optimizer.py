"""Optax optimizer and learning-rate schedule; the ``optim`` config section is the keyword
arguments of :func:`make_optimizer` (its signature holds the defaults).

The schedule counts **RL steps** (rollouts), as verl and DAPO do: ``warmup_steps=10`` warms
up over the first 10 rollouts whatever the number of optimizer updates per rollout
(``batching.mini_batches * batching.epochs``). Every update of one RL step uses the same
learning rate: the optimizer evaluates the schedule at ``update_count // updates_per_step``.
"""

from __future__ import annotations

import ml_collections
import optax

OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def updates_per_rl_step(batching: ml_collections.ConfigDict) -> int:
    """Optimizer updates per RL step under the ``batching`` config section."""
    return batching.mini_batches * batching.epochs


def learning_rate_schedule(
    learning_rate: float, schedule: str, warmup_steps: int, total_steps: int,
    final_lr_fraction: float,
) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then constant, or
    cosine decay to ``learning_rate * final_lr_fraction`` at ``total_steps`` (any step unit)."""
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
    updates_per_step: int = 1,
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
      updates_per_step: optimizer updates per RL step (:func:`updates_per_rl_step` of the
        ``batching`` section; the trainer passes it, it is not an ``optim`` key). The
        optimizer's update ``n`` uses the schedule's value at RL step ``n // updates_per_step``.
      name: ``"adamw"`` (decoupled ``weight_decay``), ``"adam"`` or ``"sgd"``.
      learning_rate: peak learning rate.
      schedule: ``"constant"`` or ``"cosine"`` (see :func:`learning_rate_schedule`).
      warmup_steps, total_steps, final_lr_fraction: schedule shape, in **RL steps**.
      b1, b2, eps: Adam moments and epsilon.
      grad_clip_norm: clip the gradient's global norm to this; ``0`` disables clipping.

    Returns:
      ``(optimizer, schedule)``; ``schedule(step)`` is the learning rate of RL step ``step``
      (0-based), the value to log for it.

    Raises ``ValueError`` naming the ``optim.<key>`` that is out of range.
    """
    if updates_per_step < 1:
        raise ValueError(f"updates_per_step must be >= 1, got {updates_per_step}")
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
    per_step = learning_rate_schedule(learning_rate, schedule, warmup_steps, total_steps,
                                      final_lr_fraction)

    def per_update(count):
        return per_step(count // updates_per_step)

    if name == "adamw":
        base = optax.adamw(per_update, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    elif name == "adam":
        base = optax.adam(per_update, b1=b1, b2=b2, eps=eps)
    else:
        base = optax.sgd(per_update)
    if grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), base), per_step
    return base, per_step
