"""Verifiable rewards: tasks, their data, prompt formats and verifiers, behind one registry.

The interface the RL loop uses::

    from rlvr_jax import rewards

    task = rewards.get_task("gsm8k", data_dir="~/tfds", manual_dir="~/raw/gsm8k")
    examples = task.examples("train", seed=0, n=8)   # [{'id', 'question', 'answer', ...}]
    stream = task.iterate("train", seed=0)           # endless, shuffled per epoch, host-sharded
    prompts = [task.format_prompt(ex, tokenizer) for ex in examples]  # chat-formatted strings
    rewards_ = task.score(completions, examples)     # np.ndarray [N] float32 in {0, 1}
    report = task.score_report(completions, examples)  # .rewards, .statuses, .timeouts, ...
    task.extract_answer(completion, example)         # final answer string (or code) or None
    task.timeouts, task.crashes                      # running totals over all score calls

For ``B`` prompts with ``G`` completions each, pass the ``B * G`` completions with each
example repeated ``G`` times and reshape the rewards to ``[B, G]``.

Scoring never raises on model output and never runs it in this process: math equivalence
(``math-verify``) and reasoning-gym scorers run in a process pool with a hard per-item
timeout; code runs in a sandbox (``sandbox.py`` lists the isolation layers). A timeout or
crash scores 0 and is counted. Rewards are binary; partial credit is not a correct answer.

Task names: ``list_tasks()`` (see ``tasks.py``); ``register_task(name, factory)`` adds one.
``mixture`` trains on several tasks at once, interleaved by weight (see ``mixture.py``).
"""

from rlvr_jax.rewards.extraction import extract_answer, extract_boxed
from rlvr_jax.rewards.mixture import MixtureTask, mixture_task
from rlvr_jax.rewards.report import ScoreReport
from rlvr_jax.rewards.tasks import Task, get_task, list_tasks, register_task

register_task("mixture", mixture_task)

__all__ = [
    "MixtureTask",
    "ScoreReport",
    "Task",
    "extract_answer",
    "extract_boxed",
    "get_task",
    "list_tasks",
    "register_task",
]
