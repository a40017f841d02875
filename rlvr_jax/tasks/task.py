"""The Task: one task's data, prompt format and verifier, as the RL loop uses them."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from rlvr_jax.rewards.verification import Verification, Verifier
from rlvr_jax.tasks.order import RandomAccessSource, epoch_order, iterate_examples
from rlvr_jax.tasks.prompts import PromptFormat, RenderedPrompt, render_prompt
from rlvr_jax.tasks.splits import canonical_question, split_questions


@dataclasses.dataclass
class Task:
    """Everything the RL loop needs about one task.

    Attributes:
      name: registry name.
      load_split: ``split -> random-access source`` of example dicts with at least
        ``{'id', 'question', 'answer'}`` (``answer`` is the reference answer).
      verifier: checks completions against references (``rlvr_jax.rewards.Verifier``); its
        ``extract`` gives a completion's final answer.
      prompt_format: instruction and system prompt of this task (None for a task whose
        examples carry their own format, like a mixture, which overrides ``render_prompt``).
      reference: ``example -> reference`` the verifier checks against (default: its answer).
      split_of: ``question -> split`` for a task whose splits are chosen by question
        (procedural tasks, ``tasks.splits``); None when a question's split is not known
        without reading the split.
      timeouts, crashes: totals over every ``verify`` call of this task.
    """

    name: str
    load_split: Callable[[str], RandomAccessSource]
    verifier: Verifier
    prompt_format: PromptFormat | None
    reference: Callable[[dict[str, Any]], Any] = operator.itemgetter("answer")
    split_of: Callable[[str], str] | None = None
    timeouts: int = 0
    crashes: int = 0
    _sources: dict[str, RandomAccessSource] = dataclasses.field(default_factory=dict)
    _questions: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    def source(self, split: str) -> RandomAccessSource:
        """Random-access examples of ``split`` (loaded once)."""
        if split not in self._sources:
            self._sources[split] = self.load_split(split)
        return self._sources[split]

    def questions_in(self, split: str, questions: Sequence[str]) -> set[str]:
        """The ``questions`` (as given) that occur in ``split``, compared by canonical text
        (``tasks.splits.canonical_question``). The split's questions are read once, and only
        when a question could be in it (by ``split_of``)."""
        candidates = [q for q in questions if self.split_of is None or self.split_of(q) == split]
        if not candidates:
            return set()
        if split not in self._questions:
            self._questions[split] = split_questions(self.source(split))
        return {q for q in candidates if canonical_question(q) in self._questions[split]}

    def examples(
        self,
        split: str = "train",
        seed: int = 0,
        n: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ) -> list[dict[str, Any]]:
        """The first ``n`` examples (default: one epoch) of this host's seeded shuffle."""
        source = self.source(split)
        order = epoch_order(len(source), seed, 0, process_index, process_count)
        if n is not None:
            if n > len(order):
                raise ValueError(f"asked for {n} examples; {split} has {len(order)} per host")
            order = order[:n]
        return [source[int(index)] for index in order]

    def iterate(self, split: str = "train", seed: int = 0, **kwargs) -> Iterator[dict[str, Any]]:
        """Endless seeded, host-sharded examples (see ``tasks.order.iterate_examples``)."""
        return iterate_examples(self.source(split), seed, **kwargs)

    def render_prompt(self, example: dict[str, Any], tokenizer: Any = None) -> RenderedPrompt:
        """The chat-formatted prompt of ``example`` (plain text when ``tokenizer`` is None) and
        the character spans of its question and user message (``prompts.render_prompt``)."""
        return render_prompt(example["question"], self.prompt_format, tokenizer)

    def format_prompt(self, example: dict[str, Any], tokenizer: Any = None) -> str:
        """The chat-formatted prompt of ``example`` (plain text when ``tokenizer`` is None)."""
        return self.render_prompt(example, tokenizer).text

    def extract_answer(self, completion: str, example: dict[str, Any] | None = None) -> str | None:
        """The final answer (math, procedural) or code (code tasks) of a completion.

        ``example`` is the example it answers; a single task ignores it, a mixture needs it to
        pick the component's extractor.
        """
        return self.verifier.extract(completion)

    def group_metrics(self, examples: Sequence[dict], rewards: np.ndarray) -> dict[str, float]:
        """Task-specific metrics of ``B`` groups (``rewards [B, G]``) for the step's log; none
        for a single task (a mixture reports each component's share and reward)."""
        del examples, rewards
        return {}

    def verify(self, completions: Sequence[str], examples: Sequence[dict]) -> Verification:
        """Rewards ``[N]`` float32 and statuses for ``completions[i]`` answering
        ``examples[i]``; adds this call's timeouts and crashes to the task's totals."""
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        verification = self.verifier.verify(
            list(completions), [self.reference(example) for example in examples]
        )
        self.timeouts += verification.timeouts
        self.crashes += verification.crashes
        return verification

    def close(self) -> None:
        """Stops the verifier's worker processes (they start again when needed)."""
        self.verifier.close()
