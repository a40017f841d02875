"""Held-out splits: train and test told apart by the question itself, and the check that an
evaluation set shares no question with the training data.

A question's *canonical text* is its Unicode NFKC form, case-folded, with every whitespace
character removed, so ``"Calculate 3 + 4."`` and ``"calculate 3+4."`` are one question. Its
*split* is a function of that text alone: the first 8 bytes of its SHA-256, read as a fraction
``u`` in ``[0, 1)``, put it in ``test`` when ``u < test_fraction`` and in ``train`` otherwise.
A question therefore lands in the same split in every task, under every option and seed, on
every machine and Python process (unlike the salted built-in ``hash``), and no question of a
``test`` split built this way can occur in the matching ``train`` split.

:class:`QuestionSplit` turns any random-access stream of generated candidates (a procedural
generator) into one split: example ``k`` is the first candidate of block ``k`` (candidates
``k * block, ..., (k + 1) * block - 1``) whose question falls in the split. The block is long
enough that an honest split misses a block with probability below ``e^-60``. A split is checked
when it is built: if its first block holds too few of its questions (a question space too
small or too lopsided for the split), it fails with an error that counts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import unicodedata
from collections.abc import Sequence
from typing import Any

from rlvr_jax.tasks.order import RandomAccessSource

SPLITS = ("train", "test")
MISS_EXPONENT = 60  # a block misses an honest split with probability <= exp(-MISS_EXPONENT)
SHARE_MARGIN = 20  # a split's first block must hold >= ln(size) + SHARE_MARGIN of its questions
SHOWN_OVERLAPS = 3  # overlapping questions quoted in a report


def canonical_question(text: str) -> str:
    """``text`` in NFKC form, case-folded, without whitespace (see the module docstring)."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def question_fraction(text: str) -> float:
    """The canonical text's SHA-256 as a fraction in ``[0, 1)`` (its first 8 bytes)."""
    digest = hashlib.sha256(canonical_question(text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_test_fraction(test_fraction: float) -> None:
    """Raises ValueError unless ``0 < test_fraction < 1``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


def split_of(text: str, test_fraction: float) -> str:
    """``"test"`` or ``"train"``: the split the question ``text`` belongs to."""
    return "test" if question_fraction(text) < test_fraction else "train"


def block_length(test_fraction: float) -> int:
    """Candidates per example: ``ceil(MISS_EXPONENT / min(f, 1 - f))``, so a block holds no
    question of a split with probability ``(1 - share)^block <= exp(-MISS_EXPONENT)``."""
    check_test_fraction(test_fraction)
    return math.ceil(MISS_EXPONENT / min(test_fraction, 1.0 - test_fraction))


class QuestionSplit:
    """One split of generated candidates, chosen by question (see the module docstring).

    Args:
      candidates: random access to at least ``size * block_length(test_fraction)`` example
        dicts with a ``"question"``.
      split: ``"train"`` or ``"test"``.
      test_fraction: the share of questions that are test questions.
      size: examples in this split.
      name: the task's name, for error messages.
    """

    def __init__(self, candidates: RandomAccessSource, split: str, test_fraction: float,
                 size: int, name: str):
        if split not in SPLITS:
            raise ValueError(f"task {name} has splits {SPLITS}, not {split!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.block = block_length(test_fraction)
        if len(candidates) < size * self.block:
            raise ValueError(f"{len(candidates)} candidates cannot fill {size} examples of "
                             f"{self.block} candidates each")
        self.candidates, self.split, self.test_fraction = candidates, split, test_fraction
        self.size, self.name = size, name
        self._chosen: dict[int, int] = {}  # example index -> candidate index
        self._check_share()

    def __len__(self) -> int:
        return self.size

    def _check_share(self) -> None:
        """Raises ValueError, with counts, when the first block holds so few questions of this
        split that some of the ``size`` blocks would likely hold none (fewer than
        ``ln(size) + SHARE_MARGIN``: a block then misses with probability about
        ``exp(-count)``)."""
        questions = [self.candidates[i]["question"] for i in range(self.block)]
        inside = [q for q in questions if split_of(q, self.test_fraction) == self.split]
        if len(inside) < math.log(self.size) + SHARE_MARGIN:
            raise ValueError(
                f"task {self.name}: only {len(inside)} of the first {self.block} generated "
                f"questions ({len({canonical_question(q) for q in questions})} distinct) belong "
                f"to split {self.split!r} (test_fraction={self.test_fraction}), too few to fill "
                f"{self.size} examples: widen the task's options (more digits or terms) or "
                "change test_fraction"
            )

    def _choose(self, index: int) -> dict[str, Any]:
        """The first candidate of block ``index`` in this split (its index is remembered)."""
        for candidate in range(index * self.block, (index + 1) * self.block):
            example = self.candidates[candidate]
            if split_of(example["question"], self.test_fraction) == self.split:
                self._chosen[index] = candidate
                return example
        raise ValueError(f"task {self.name}: none of the {self.block} questions generated for "
                         f"example {index} belongs to split {self.split!r}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} examples")
        if index in self._chosen:
            return self.candidates[self._chosen[index]]
        return self._choose(index)


def split_questions(source: RandomAccessSource) -> frozenset[str]:
    """The canonical questions of every example of ``source``."""
    return frozenset(canonical_question(source[i]["question"]) for i in range(len(source)))


@dataclasses.dataclass(frozen=True)
class OverlapReport:
    """How an evaluation set relates to the training split.

    Attributes:
      prompts: evaluation examples.
      distinct: distinct canonical questions among them.
      in_train: evaluation examples whose question occurs in the training split.
      train: ``"<task>/<split>"`` of the training data compared against.
      shown: up to ``SHOWN_OVERLAPS`` of the overlapping questions, as written.
    """

    prompts: int
    distinct: int
    in_train: int
    train: str
    shown: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = (f"evaluation set: {self.prompts} prompts, {self.distinct} distinct questions, "
                f"{self.in_train} of the prompts in the training split {self.train}")
        return text + (f", e.g. {list(self.shown)}" if self.shown else "")


def overlap_report(examples: Sequence[dict[str, Any]], train_task: Any,
                   train_split: str) -> OverlapReport:
    """Compares the questions of evaluation ``examples`` with ``train_task``'s ``train_split``
    (by canonical text, through ``train_task.questions_in``)."""
    questions = [example["question"] for example in examples]
    found = train_task.questions_in(train_split, questions)
    overlapping = [question for question in questions if question in found]
    distinct = len({canonical_question(question) for question in questions})
    return OverlapReport(len(examples), distinct, len(overlapping),
                         f"{train_task.name}/{train_split}",
                         tuple(dict.fromkeys(overlapping))[:SHOWN_OVERLAPS])
