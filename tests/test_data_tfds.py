"""TFDS builders from JSONL/Parquet fixtures, random access, malformed rows, clear errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr_jax.data.tfds_builders import MalformedRowError, load_source, prepare


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _by_question(source):
    return {source[i]["question"]: source[i] for i in range(len(source))}


def test_gsm8k_from_jsonl_and_parquet(tmp_path):
    manual = tmp_path / "manual"
    _write_jsonl(
        manual / "train.jsonl",
        [
            {"question": "Q1?", "answer": "3 + 4 = 7\n#### 7"},
            {"question": "Q2?", "answer": "#### 1,200"},
        ],
    )
    _write_parquet(
        manual / "main" / "test-00000-of-00001.parquet",
        [{"question": "T1?", "answer": "so\n#### -3"}],
    )
    train = load_source("gsm8k", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    assert len(train) == 2
    examples = _by_question(train)
    assert examples["Q1?"]["answer"] == "7" and examples["Q1?"]["solution"] == "3 + 4 = 7\n#### 7"
    assert examples["Q2?"]["answer"] == "1200"
    assert {example["id"] for example in examples.values()} == {"train-1", "train-2"}
    test = load_source("gsm8k", "test", data_dir=str(tmp_path / "tfds"))
    assert [test[0]["question"], test[0]["answer"]] == ["T1?", "-3"]


def test_math_with_math500_split(tmp_path):
    manual = tmp_path / "manual"
    _write_parquet(
        manual / "algebra" / "train-00000.parquet",
        [
            {"problem": "P1", "solution": r"so $\boxed{\frac{1}{2}}$.", "level": "Level 1"},
        ],
    )
    _write_parquet(
        manual / "geometry" / "train-00000.parquet",
        [
            {"problem": "P2", "solution": r"\boxed{1} then \boxed{\{3, 4\}}", "level": "Level 2"},
        ],
    )
    _write_jsonl(manual / "test.jsonl", [{"problem": "T", "solution": r"\boxed{9}"}])
    _write_jsonl(
        manual / "math500.jsonl",
        [
            {"problem": "M", "solution": "...", "answer": "3\\pi", "unique_id": "test/x/1.json"},
        ],
    )
    data_dir = str(tmp_path / "tfds")
    prepare("math", str(manual), data_dir)
    train = _by_question(load_source("math", "train", data_dir))
    assert {q: e["answer"] for q, e in train.items()} == {"P1": r"\frac{1}{2}", "P2": r"\{3, 4\}"}
    math500 = load_source("math", "math500", data_dir)
    assert (math500[0]["answer"], math500[0]["id"]) == ("3\\pi", "test/x/1.json")
    assert load_source("math", "test", data_dir)[0]["answer"] == "9"
    with pytest.raises(ValueError, match="no split 'valid'"):
        load_source("math", "valid", data_dir)


def test_dapo_math_strips_wrapper_and_deduplicates(tmp_path):
    wrapper = (
        "Solve the following math problem step by step. The last line of your response should "
        "be of the form Answer: $Answer (without quotes) where $Answer is the answer to the "
        'problem.\n\n{}\n\nRemember to put your answer on its own line after "Answer:".'
    )
    rows = [
        {
            "prompt": [{"role": "user", "content": wrapper.format("What is 6*7?")}],
            "reward_model": {"ground_truth": "42", "style": "rule"},
            "extra_info": {"index": "a-1"},
        },
        {
            "prompt": [{"role": "user", "content": wrapper.format("What is 6*7?")}],
            "reward_model": {"ground_truth": "42", "style": "rule"},
            "extra_info": {"index": "a-2"},
        },
        {
            "prompt": [{"role": "user", "content": wrapper.format("Smallest prime?")}],
            "reward_model": {"ground_truth": "2", "style": "rule"},
            "extra_info": {"index": "b-1"},
        },
    ]
    manual = tmp_path / "manual"
    _write_parquet(manual / "data" / "dapo-math-17k.parquet", rows)
    source = load_source("dapo_math", "train", str(tmp_path / "tfds"), manual_dir=str(manual))
    examples = _by_question(source)
    assert set(examples) == {"What is 6*7?", "Smallest prime?"}
    assert examples["What is 6*7?"]["answer"] == "42" and examples["What is 6*7?"]["id"] == "a-1"


def test_aime_from_jsonl(tmp_path):
    manual = tmp_path / "manual"
    _write_jsonl(
        manual / "aime_2024.jsonl",
        [
            {"ID": "2024-I-1", "Problem": "Find x.", "Solution": "...", "Answer": 204},
        ],
    )
    source = load_source("aime", "test", str(tmp_path / "tfds"), manual_dir=str(manual))
    assert source[0] == {
        "id": "2024-I-1",
        "question": "Find x.",
        "answer": "204",
        "solution": "...",
    }


@pytest.mark.parametrize(
    ("lines", "line_number", "message"),
    [
        (['{"question": "ok", "answer": "#### 1"}', '{"question": "broken",'], 2, "invalid JSON"),
        (
            ['{"question": "ok", "answer": "#### 1"}', "", '{"answer": "#### 2"}'],
            3,
            "missing field",
        ),
        (['{"question": "no marker", "answer": "42"}'], 1, "no '#### <final answer>'"),
        (['["a", "list"]'], 1, "expected a JSON object"),
    ],
)
def test_malformed_jsonl_row_names_file_and_line(tmp_path, lines, line_number, message):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "train.jsonl").write_text("\n".join(lines) + "\n")
    (manual / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(MalformedRowError, match=f"train.jsonl:{line_number}: .*{message}"):
        prepare("gsm8k", str(manual), str(tmp_path / "tfds"))


def test_malformed_parquet_row_names_file_and_row(tmp_path):
    manual = tmp_path / "manual"
    _write_parquet(
        manual / "aime.parquet",
        [
            {"problem": "ok", "answer": "1"},
            {"problem": "no answer", "answer": None},
        ],
    )
    with pytest.raises(MalformedRowError, match=r"aime.parquet:2: missing field \(tried answer"):
        prepare("aime", str(manual), str(tmp_path / "tfds"))


def test_missing_files_and_unprepared_data_are_clear_errors(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(FileNotFoundError, match="missing or empty"):
        prepare("gsm8k", str(tmp_path / "manual"), str(tmp_path / "tfds"))
    (tmp_path / "manual" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(FileNotFoundError, match="no test"):
        prepare("gsm8k", str(tmp_path / "manual"), str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        load_source("aime", "test", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown data set 'gsm9k'"):
        load_source("gsm9k", "test", str(tmp_path / "tfds"))


_OK_ROW = '{"question": "q", "answer": "#### 1"}\n'


@pytest.mark.parametrize(
    ("name", "files", "message"),
    [
        ("gsm8k", {"train.jsonl": _OK_ROW.encode() + b'{"question": "caf\xe9", "answer": "1"}\n'},
         r"train.jsonl:2: not UTF-8 \(byte 0xe9 at byte offset 17\)"),
        ("gsm8k", {"train.jsonl": b"\n"}, r"train.jsonl: no rows \(an empty file\)"),
        ("gsm8k", {"train.jsonl": b'{"question": {"text": "q"}, "answer": "#### 1"}\n'},
         r"train.jsonl:1: field 'question' is of type dict, expected str"),
        ("aime", {"aime.jsonl": b'{"problem": "p", "answer": [204]}\n'},
         r"aime.jsonl:1: field 'answer' is of type list, expected str or int or float"),
        ("dapo_math", {"dapo.jsonl": b'{"prompt": ["What is 6*7?"], "answer": "42"}\n'},
         r"dapo.jsonl:1: prompt is a list but not of \{role, content\} messages"),
        ("dapo_math", {"dapo.jsonl": b'{"prompt": [{"role": "user"}], "answer": "42"}\n'},
         r"dapo.jsonl:1: last user message: missing field \(tried content\)"),
        ("dapo_math", {"dapo.jsonl": b'{"prompt": "What?", "reward_model": "42"}\n'},
         r"dapo.jsonl:1: field 'reward_model' is of type str, expected an object"),
        ("dapo_math", {"dapo.jsonl": b'{"prompt": "What?", "answer": "1", "extra_info": 3}\n'},
         r"dapo.jsonl:1: field 'extra_info' is of type int, expected an object"),
    ],
    ids=["invalid-utf8", "empty-file", "question-object", "answer-list", "dapo-turn-text",
         "dapo-turn-without-content", "dapo-reward-model-text", "dapo-extra-info-number"],
)
def test_bad_rows_and_files_name_the_file_and_line(tmp_path, name, files, message):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "test.jsonl").write_text(_OK_ROW)  # gsm8k's other split
    for file_name, content in files.items():
        (manual / file_name).write_bytes(content)
    with pytest.raises(MalformedRowError, match=f"{manual}/{message}"):
        prepare(name, str(manual), str(tmp_path / "tfds"))
