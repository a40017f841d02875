"""``tensorflow-datasets`` builders for math RL data from files the user already has.

Nothing is downloaded: each builder reads JSONL (``.jsonl``) or Parquet (``.parquet``) files
from a manual directory and writes ArrayRecord shards (no TensorFlow needed), read back with
random access through ``tfds.data_source``. Every example has the string features
``id``, ``question``, ``answer`` (the reference final answer) and ``solution`` (worked
solution, possibly empty).

Where to get the files (download them yourself, e.g. with ``huggingface-cli download``), and
the file names each builder looks for in ``manual_dir`` (a split reads every matching file,
at the top level or one folder down; a row that cannot be read raises with file and line):

* ``rlvr_gsm8k``: GSM8K, github.com/openai/grade-school-math (``grade_school_math/data``) or
  huggingface.co/datasets/openai/gsm8k (``main/*.parquet``). Splits ``train``/``test`` from
  ``train*`` / ``test*``; rows ``{question, answer}``, the answer after ``####``.
* ``rlvr_math``: MATH (Hendrycks et al.), huggingface.co/datasets/EleutherAI/hendrycks_math
  (per-subject folders of ``train-*.parquet``/``test-*.parquet``) or any JSONL with rows
  ``{problem, solution[, answer, level, type]}``; the answer is the last ``\\boxed{}`` of the
  solution unless given. Splits ``train``, ``test``, and ``math500`` from ``math500*`` files
  (MATH-500: huggingface.co/datasets/HuggingFaceH4/MATH-500, ``test.jsonl`` saved as
  ``math500.jsonl``).
* ``rlvr_dapo_math``: DAPO-Math-17k, huggingface.co/datasets/BytedTsinghua-SIA/DAPO-Math-17k
  (``data/dapo-math-17k.parquet``; rows ``{prompt: [{role, content}], reward_model:
  {ground_truth}}``, or flat ``{prompt|problem, answer|solution}``). Split ``train`` from
  ``*dapo*`` files. The DAPO answer-format wrapper is stripped from the question (the task's
  prompt format adds its own instruction) and repeated questions are kept once.
* ``rlvr_aime``: AIME problems, e.g. huggingface.co/datasets/AI-MO/aimo-validation-aime or
  Maxwell-Jia/AIME_2024 (rows ``{problem|Problem, answer|Answer[, id|ID]}``). Split ``test``
  from ``*aime*`` files.

Usage: ``prepare(name, manual_dir=..., data_dir=...)`` once, then
``load_source(name, split, data_dir=...)`` for a random-access source of ``str`` dicts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from rlvr_jax.boxed import extract_boxed

_FEATURES = ("id", "question", "answer", "solution")
_DAPO_PREFIX = re.compile(r"^Solve the following math problem step by step\..*?\n\n", re.DOTALL)
_DAPO_SUFFIX = re.compile(
    r"\n\nRemember to put your answer on its own line after \"Answer:\"\.\s*$"
)


class MalformedRowError(ValueError):
    """A data row that cannot be turned into an example; the message names file and line."""


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, row)`` for a JSONL (1-based lines) or Parquet (1-based rows) file;
    raises :class:`MalformedRowError` naming the file (and line) for a file without rows, a
    line that is not UTF-8 or not a JSON object."""
    count = 0
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for count, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield count, row
    else:
        with path.open("rb") as file:
            for number, raw in enumerate(file, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise MalformedRowError(
                        f"{path}:{number}: not UTF-8 (byte {raw[error.start]:#04x} at byte offset "
                        f"{error.start})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise MalformedRowError(
                        f"{path}:{number}: invalid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise MalformedRowError(f"{path}:{number}: expected a JSON object")
                count += 1
                yield number, row
    if not count:
        raise MalformedRowError(f"{path}: no rows (an empty file)")


_TEXT = (str,)
_ANSWER = (str, int, float)  # AIME and some GSM8K copies give numeric answers


def _field(row: dict[str, Any], names: tuple[str, ...], where: str,
           kinds: tuple[type, ...] = _TEXT) -> Any:
    """The first present, non-empty field among ``names``, which must be one of ``kinds``
    (never a bool, list or object: its ``str()`` would become the text); a clear error naming
    ``where``."""
    for name in names:
        value = row.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise MalformedRowError(
                f"{where}: field {name!r} is of type {type(value).__name__}, expected "
                f"{' or '.join(kind.__name__ for kind in kinds)}"
            )
        return value
    raise MalformedRowError(f"{where}: missing field (tried {', '.join(names)})")


def _mapping(row: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """Field ``name`` when it is a JSON object, ``{}`` when absent; an error otherwise."""
    value = row.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRowError(
            f"{where}: field {name!r} is of type {type(value).__name__}, expected an object")
    return value


def _find_files(manual_dir: Path, pattern: str) -> list[Path]:
    files = []
    for suffix in (".jsonl", ".parquet"):
        files += manual_dir.glob(pattern + suffix)
        files += manual_dir.glob("*/" + pattern + suffix)
    return sorted(set(files))


class _ManualFilesBuilder(tfds.core.GeneratorBasedBuilder):
    """Reads ``SPLIT_PATTERNS`` files from the manual dir; subclasses convert one row."""

    VERSION = tfds.core.Version("1.0.0")
    SPLIT_PATTERNS: ClassVar[dict[str, str]] = {}
    DEDUPLICATE = False  # keep only the first example of each question
    MANUAL_DOWNLOAD_INSTRUCTIONS = "See the rlvr_jax.data.tfds_builders module docstring."

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({name: tfds.features.Text() for name in _FEATURES})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        manual_dir = Path(dl_manager.manual_dir)
        splits = {}
        for split, pattern in self.SPLIT_PATTERNS.items():
            files = _find_files(manual_dir, pattern)
            if not files:
                raise FileNotFoundError(
                    f"{self.name}: no {pattern}.jsonl or {pattern}.parquet file in {manual_dir}"
                )
            splits[split] = self._generate_examples(files)
        return splits

    def _generate_examples(self, files: list[Path]):
        seen_questions: set[str] = set()
        for path in files:
            for number, row in _rows(path):
                where = f"{path}:{number}"
                example = self.row_to_example(row, where)
                if self.DEDUPLICATE:
                    if example["question"] in seen_questions:
                        continue
                    seen_questions.add(example["question"])
                if example.get("id") is None:
                    example["id"] = f"{path.stem}-{number}"
                yield where, {name: str(example.get(name, "")) for name in _FEATURES}

    def row_to_example(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        raise NotImplementedError


class RlvrGsm8k(_ManualFilesBuilder):
    """GSM8K grade-school word problems; the answer is the number after ``####``."""

    SPLIT_PATTERNS: ClassVar[dict[str, str]] = {"train": "train*", "test": "test*"}

    def row_to_example(self, row, where):
        question = _field(row, ("question",), where)
        solution = _field(row, ("answer",), where)
        if "####" not in solution:
            raise MalformedRowError(f"{where}: answer has no '#### <final answer>' line")
        answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
        return {"question": question, "answer": answer, "solution": solution}


class RlvrMath(_ManualFilesBuilder):
    """MATH competition problems (and MATH-500); the answer is the solution's last box."""

    SPLIT_PATTERNS: ClassVar[dict[str, str]] = {
        "train": "train*",
        "test": "test*",
        "math500": "math500*",
    }

    def row_to_example(self, row, where):
        question = _field(row, ("problem", "question"), where)
        solution = str(row.get("solution") or "")
        answer = (_field(row, ("answer",), where, _ANSWER) if row.get("answer") not in (None, "")
                  else extract_boxed(solution))
        if not answer:
            raise MalformedRowError(f"{where}: no 'answer' field and no \\boxed{{}} in solution")
        return {
            "id": row.get("unique_id") or row.get("id"),
            "question": question,
            "answer": answer,
            "solution": solution,
        }


class RlvrDapoMath(_ManualFilesBuilder):
    """DAPO-Math-17k integer-answer problems, deduplicated, without the DAPO format wrapper."""

    SPLIT_PATTERNS: ClassVar[dict[str, str]] = {"train": "*dapo*"}
    DEDUPLICATE = True

    def row_to_example(self, row, where):
        prompt = _field(row, ("prompt", "problem", "question"), where, (str, list))
        if isinstance(prompt, list):
            if not all(isinstance(turn, dict) for turn in prompt):
                raise MalformedRowError(f"{where}: prompt is a list but not of "
                                        "{role, content} messages")
            user_turns = [turn for turn in prompt if turn.get("role") == "user"]
            if not user_turns:
                raise MalformedRowError(f"{where}: prompt has no user message")
            prompt = _field(user_turns[-1], ("content",), f"{where}: last user message")
        question = _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", prompt)).strip()
        reward_model = _mapping(row, "reward_model", where)
        if reward_model.get("ground_truth") not in (None, ""):
            answer = _field(reward_model, ("ground_truth",), f"{where}: reward_model", _ANSWER)
        else:
            answer = _field(row, ("answer", "solution"), where, _ANSWER)
        index = _mapping(row, "extra_info", where).get("index")
        return {"id": index, "question": question, "answer": answer}


class RlvrAime(_ManualFilesBuilder):
    """AIME problems (integer answers 0-999)."""

    SPLIT_PATTERNS: ClassVar[dict[str, str]] = {"test": "*aime*"}

    def row_to_example(self, row, where):
        return {
            "id": row.get("id") or row.get("ID"),
            "question": _field(row, ("problem", "Problem", "question"), where),
            "answer": _field(row, ("answer", "Answer"), where, _ANSWER),
            "solution": row.get("solution") or row.get("Solution") or "",
        }


BUILDERS = {
    "gsm8k": RlvrGsm8k,
    "math": RlvrMath,
    "dapo_math": RlvrDapoMath,
    "aime": RlvrAime,
}


def _builder(name: str, data_dir: str) -> tfds.core.GeneratorBasedBuilder:
    if name not in BUILDERS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[name](data_dir=data_dir, file_format="array_record")


def prepare(name: str, manual_dir: str, data_dir: str) -> None:
    """Build data set ``name`` (a ``BUILDERS`` key) from ``manual_dir`` into ``data_dir``."""
    builder = _builder(name, data_dir)
    if not Path(manual_dir).is_dir() or not any(Path(manual_dir).iterdir()):
        raise FileNotFoundError(
            f"{name}: manual_dir {manual_dir} is missing or empty; it needs "
            f"{sorted(builder.SPLIT_PATTERNS.values())} .jsonl/.parquet files "
            "(see rlvr_jax.data.tfds_builders for where to get them)"
        )
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=download_config)


class DecodedSource:
    """A ``tfds`` random-access source whose examples are ``str`` dicts, not bytes."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, str]:
        record = self._source[index]
        return {key: value.decode("utf-8") for key, value in record.items()}


def load_source(
    name: str, split: str, data_dir: str, manual_dir: str | None = None
) -> DecodedSource:
    """Random access to a prepared split (prepared first when ``manual_dir`` is given)."""
    if manual_dir is not None:
        prepare(name, manual_dir, data_dir)
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{name} is not prepared in {data_dir}; call prepare() or pass manual_dir"
        )
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    return DecodedSource(tfds.data_source(builder.name, split=split, data_dir=data_dir))
