"""Task mixtures: several registered tasks trained together, interleaved by weight.

``tasks.get("mixture", components=[...], seed=0)`` takes:

* ``components``: a non-empty list of ``{"name": <registered task>, "weight": <number > 0>,
  "options": {<that task's keyword arguments>}}``, each optionally with a ``"label"`` (default:
  its name) under which its examples and metrics are reported; labels must be distinct, so
  two components of the same task need different labels. Mixtures do not nest.
* ``seed``: seeds the interleaving and each component's own order (not the run's seed).

The examples of a split, exactly (a function of the seed and the components' split sizes
only, so every host builds the same mixture and a stream resumed at position ``k`` goes on
identically):

1. Component ``k`` has ``n_k`` examples in the split and the share ``p_k = w_k / sum(w)``.
2. The split has ``L = max_k ceil(n_k / p_k)`` positions, the fewest with which every
   component fills its share and shows each of its examples at least once. Component ``k``
   gets ``c_k = floor(p_k * L)`` positions, plus one for each of the components with the
   largest remainders ``p_k * L - floor(p_k * L)`` (ties: the earlier component) until the
   counts sum to ``L``; so ``|c_k - p_k * L| < 1`` and ``c_k >= n_k``. The arithmetic is
   exact, on the weights read as the decimals they print as (``0.3`` is ``3/10``).
3. The ``L`` component labels (``c_k`` copies of ``k``) are shuffled once by
   ``numpy.random.default_rng([seed, TAG]).permutation``.
4. Position ``i`` holding label ``k`` is component ``k``'s slot ``j`` (the number of earlier
   positions holding ``k``), which is its example ``order_k(j // n_k)[j % n_k]`` with
   ``order_k(r) = default_rng([seed, TAG, k, r]).permutation(n_k)``: the component walks its
   own seeded order, reshuffled on each pass, when it is repeated to fill its share.

Each example is the component's example with ``"task": <label>`` added; verification, prompt
formatting and answer extraction dispatch on that key to the component. The RL loop's
``PromptStream`` reshuffles the ``L`` positions every epoch, so each epoch of the stream holds
exactly ``c_k`` examples of component ``k`` and any window of it about ``p_k`` of them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from rlvr_jax.rewards.verification import Status, Verification
from rlvr_jax.tasks.order import RandomAccessSource
from rlvr_jax.tasks.prompts import RenderedPrompt
from rlvr_jax.tasks.registry import get
from rlvr_jax.tasks.task import Task

TAG = 0x6D6978  # separates the mixture's random streams from the prompt stream's epoch orders
MAX_POSITIONS = 10_000_000
TASK_KEY = "task"
_ENTRY_KEYS = ("name", "weight", "options", "label")


@dataclasses.dataclass(frozen=True)
class Component:
    """One validated ``components`` entry."""

    label: str
    name: str
    weight: Fraction
    options: dict[str, Any]


def parse_components(components: Any) -> list[Component]:
    """Validates the ``components`` option; raises ValueError naming the bad entry."""
    if isinstance(components, str | bytes) or not isinstance(components, Sequence):
        raise ValueError(
            f"mixture components must be a list of {{'name', 'weight', 'options'}} dicts, "
            f"got {type(components).__name__}"
        )
    if not components:
        raise ValueError("mixture components is empty; give at least one task")
    parsed = []
    for index, entry in enumerate(components):
        where = f"mixture component {index}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a dict with 'name', 'weight' and 'options', "
                             f"got {entry!r}")
        unknown = sorted(set(entry) - set(_ENTRY_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {list(_ENTRY_KEYS)}")
        for key in ("name", "weight"):
            if key not in entry:
                raise ValueError(f"{where}: missing {key!r}")
        name = entry["name"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: 'name' must be a task name, got {name!r}")
        if name == "mixture":
            raise ValueError(f"{where}: mixtures do not nest; list the tasks directly")
        weight = entry["weight"]
        if (isinstance(weight, bool) or not isinstance(weight, numbers.Real)
                or not math.isfinite(weight) or weight <= 0):
            raise ValueError(f"{where} ({name}): 'weight' must be a number > 0, got {weight!r}")
        options = entry.get("options", {})
        if not isinstance(options, Mapping):
            raise ValueError(f"{where} ({name}): 'options' must be a dict, got {options!r}")
        label = entry.get("label", name)
        if not isinstance(label, str) or not label:
            raise ValueError(f"{where} ({name}): 'label' must be a non-empty string")
        parsed.append(Component(label, name, Fraction(str(weight)), dict(options)))
    labels = [component.label for component in parsed]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"mixture components share the labels {repeated}; give each a "
                         "distinct 'label'")
    return parsed


def position_counts(sizes: Sequence[int], weights: Sequence[Fraction]) -> list[int]:
    """``c_k`` of rule 2: positions per component, ``sum = L = max_k ceil(n_k / p_k)``."""
    total = sum(weights)
    shares = [weight / total for weight in weights]
    length = max(math.ceil(size / share) for size, share in zip(sizes, shares, strict=True))
    quotas = [share * length for share in shares]
    counts = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in by_remainder[:length - sum(counts)]:
        counts[k] += 1
    return counts


class MixtureSource:
    """Random-access examples of one split of a mixture, in the order of the module rule."""

    def __init__(self, labels: Sequence[str], sources: Sequence[RandomAccessSource],
                 weights: Sequence[Fraction], seed: int):
        self.labels = list(labels)
        self.sources = list(sources)
        self.seed = seed
        self.sizes = [len(source) for source in sources]
        empty = [label for label, size in zip(self.labels, self.sizes, strict=True) if not size]
        if empty:
            raise ValueError(f"mixture components {empty} have no examples in this split")
        self.counts = position_counts(self.sizes, weights)
        length = sum(self.counts)
        if length > MAX_POSITIONS:
            raise ValueError(
                f"mixture weights {[float(w) for w in weights]} over split sizes {self.sizes} "
                f"need {length} positions (more than {MAX_POSITIONS}); make the weights less "
                "uneven"
            )
        labels_in_order = np.repeat(np.arange(len(self.sizes), dtype=np.int32), self.counts)
        self.component_of = np.random.default_rng([seed, TAG]).permutation(labels_in_order)  # [L]
        self.slot_of = np.empty(length, np.int64)  # [L]
        for k, count in enumerate(self.counts):
            self.slot_of[self.component_of == k] = np.arange(count)
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.component_of)

    def _order(self, k: int, walk: int) -> np.ndarray:
        """Component ``k``'s order on its ``walk``-th pass: ``[n_k]`` (computed once)."""
        if (k, walk) not in self._orders:
            rng = np.random.default_rng([self.seed, TAG, k, walk])
            self._orders[k, walk] = rng.permutation(self.sizes[k])
        return self._orders[k, walk]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} mixture positions")
        k = int(self.component_of[index])
        slot = int(self.slot_of[index])
        size = self.sizes[k]
        example = self.sources[k][int(self._order(k, slot // size)[slot % size])]
        return {**example, TASK_KEY: self.labels[k]}


def label_of(example: Any, labels: Sequence[str]) -> str:
    """The component label of ``example``; raises ValueError when it is not one of ``labels``."""
    label = example.get(TASK_KEY) if isinstance(example, Mapping) else None
    if label not in labels:
        name = example.get("id") if isinstance(example, Mapping) else example
        raise ValueError(f"example {name!r} has {TASK_KEY}={label!r}, not one of this "
                         f"mixture's components {list(labels)}")
    return label


class ComponentVerifier:
    """The verifier of a mixture: each item goes to the task its example's label names.

    Its references are the whole examples (the label picks the component, whose own
    ``Task.verify`` takes the reference from the example and counts its timeouts/crashes).
    """

    def __init__(self, components: Mapping[str, Task]):
        self.components = dict(components)

    def extract(self, completion: str) -> str | None:
        raise ValueError("a mixture extracts answers with its components' extractors: call "
                         "extract_answer(completion, example)")

    def verify(self, completions: Sequence[str], examples: Sequence[dict]) -> Verification:
        """Rewards and statuses in input order, each item verified by its component."""
        labels = list(self.components)
        rows_of: dict[str, list[int]] = {}
        for row, example in enumerate(examples):
            rows_of.setdefault(label_of(example, labels), []).append(row)
        rewards = np.zeros(len(completions), np.float32)  # [N]
        statuses = [Status.OK] * len(completions)
        for label, rows in rows_of.items():
            part = self.components[label].verify([completions[r] for r in rows],
                                                 [examples[r] for r in rows])
            rewards[rows] = part.rewards
            for row, status in zip(rows, part.statuses, strict=True):
                statuses[row] = status
        return Verification(rewards, tuple(statuses))

    def close(self) -> None:
        """Closes every component."""
        for task in self.components.values():
            task.close()


@dataclasses.dataclass
class MixtureTask(Task):
    """A :class:`Task` whose examples come from several tasks (see the module docstring)."""

    components: dict[str, Task] = dataclasses.field(default_factory=dict)

    def component_of(self, example: Mapping[str, Any]) -> Task:
        """The component task ``example`` belongs to (by its ``"task"`` label)."""
        return self.components[label_of(example, list(self.components))]

    def render_prompt(self, example: dict[str, Any], tokenizer: Any = None) -> RenderedPrompt:
        """The prompt in the format of the example's component."""
        return self.component_of(example).render_prompt(example, tokenizer)

    def extract_answer(self, completion: str, example: dict[str, Any] | None = None) -> str | None:
        """The final answer by the extractor of ``example``'s component (required here)."""
        if example is None:
            return self.verifier.extract(completion)  # raises: the example is required
        return self.component_of(example).extract_answer(completion, example)

    def questions_in(self, split: str, questions: Sequence[str]) -> set[str]:
        """The ``questions`` that occur in ``split`` of any component (each component's own
        check; the mixture's positions are never enumerated)."""
        return set().union(*(task.questions_in(split, questions)
                             for task in self.components.values()))

    def group_metrics(self, examples: Sequence[Mapping[str, Any]],
                      rewards: np.ndarray) -> dict[str, float]:
        """Per component: ``groups/<label>`` (how many of the ``B`` groups are its) and, when
        it has any, ``reward_mean/<label>`` (mean reward over its groups); ``rewards [B, G]``."""
        labels = [label_of(example, list(self.components)) for example in examples]
        out = {}
        for label in self.components:
            rows = [b for b, row_label in enumerate(labels) if row_label == label]
            out[f"groups/{label}"] = float(len(rows))
            if rows:
                out[f"reward_mean/{label}"] = float(np.asarray(rewards)[rows].mean())
        return out


def mixture_task(*, components: Any, seed: int = 0) -> MixtureTask:
    """The ``mixture`` task factory (see the module docstring for the options and the rule)."""
    parsed = parse_components(components)
    tasks: dict[str, Task] = {}
    for index, component in enumerate(parsed):
        try:
            tasks[component.label] = get(component.name, **component.options)
        except (ValueError, TypeError) as error:
            for task in tasks.values():
                task.close()
            raise ValueError(f"mixture component {index} ({component.name}): {error}") from error

    def load_split(split: str) -> MixtureSource:
        return MixtureSource(list(tasks), [task.source(split) for task in tasks.values()],
                             [component.weight for component in parsed], seed)

    return MixtureTask(
        name="mixture",
        load_split=load_split,
        verifier=ComponentVerifier(tasks),
        prompt_format=None,
        reference=lambda example: example,
        components=tasks,
    )
