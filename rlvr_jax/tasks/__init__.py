"""Tasks: a task's data, prompt format and verifier behind one name.

The interface the RL loop uses::

    from rlvr_jax import tasks

    task = tasks.get("gsm8k", data_dir="~/tfds", manual_dir="~/raw/gsm8k")
    examples = task.examples("train", seed=0, n=8)   # [{'id', 'question', 'answer', ...}]
    stream = task.iterate("train", seed=0)           # endless, shuffled per epoch, host-sharded
    prompts = [task.format_prompt(ex, tokenizer) for ex in examples]  # chat-formatted strings
    verification = task.verify(completions, examples)  # .rewards [N] float32 in {0, 1},
                                                       # .statuses, .timeouts, .crashes, ...
    task.extract_answer(completion, example)         # final answer string (or code) or None
    task.questions_in("train", questions)            # those of the questions that occur in
                                                     # train (by canonical text)
    task.timeouts, task.crashes                      # running totals over all verify calls
    task.close()                                     # stops the verifier's worker processes

For ``B`` prompts with ``G`` completions each, pass the ``B * G`` completions with each
example repeated ``G`` times and reshape the rewards to ``[B, G]``.

Task names: ``names()`` (see ``registry.py``); ``register(name, factory)`` adds one.
``mixture`` trains on several tasks at once, interleaved by weight (see ``mixture.py``).
This package joins ``rlvr_jax.data`` (where examples come from) and ``rlvr_jax.rewards``
(verifiers), which do not import each other; ``order.py`` is the deterministic example order,
``prompts.py`` the prompt format and ``splits.py`` the held-out splits (procedural tasks
split train and test by a hash of the question, so no test question occurs in train) and the
overlap report of an evaluation set.
"""

from rlvr_jax.tasks.mixture import MixtureTask, mixture_task
from rlvr_jax.tasks.prompts import PromptFormat
from rlvr_jax.tasks.registry import get, names, register
from rlvr_jax.tasks.task import Task

register("mixture", mixture_task)

__all__ = ["MixtureTask", "PromptFormat", "Task", "get", "names", "register"]
