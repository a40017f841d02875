"""Tests for rlvr_jax.metric_writer: JSONL files, resume truncation, TensorBoard, wandb."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
import time
import types

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from rlvr_jax.metric_writer import MetricWriter, read_metrics

CONFIG = {"model": {"name": "tiny", "layers": 2}, "lr": 1e-6, "estimator": "grpo"}


def _raw_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")


def _strict_json(line: str) -> dict:
    """json.loads that refuses the non-standard NaN/Infinity tokens."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token} in {line!r}")

    return json.loads(line, parse_constant=refuse)


def _log_steps(workdir: str, steps: range, resume_step: int | None = None) -> None:
    with MetricWriter(workdir, CONFIG, is_main_process=True, resume_step=resume_step) as writer:
        for step in steps:
            writer.scalars(step, {"train/reward_mean": step / 10, "train/loss": -step})
            writer.texts(step, {"samples/completion_0": f"completion at step {step}"})


# ----------------------------------------------------------------------------- JSONL


def test_scalars_jsonl_has_one_strict_line_per_call_with_plain_floats(tmp_path):
    workdir = str(tmp_path / "run")
    before = time.time()
    with MetricWriter(workdir, CONFIG, tensorboard=False, is_main_process=True) as writer:
        writer.scalars(
            1,
            {
                "python_int": 3,
                "numpy_f32": np.float32(0.25),
                "jax_scalar": jnp.asarray(1.5, dtype=jnp.bfloat16),
                "one_element": np.array([[2.0]]),
                "flag": np.bool_(True),
            },
        )
        writer.scalars(np.int64(2), {"eval/pass@1": 0.5})
    after = time.time()

    lines = _raw_lines(os.path.join(workdir, "metrics.jsonl"))
    assert lines[-1] == ""  # every line ends with a newline
    first, second = (_strict_json(line) for line in lines[:-1])
    assert first["step"] == 1 and type(first["step"]) is int
    assert before <= first["time"] <= after
    assert {k: v for k, v in first.items() if k not in ("step", "time")} == {
        "python_int": 3.0,
        "numpy_f32": 0.25,
        "jax_scalar": 1.5,
        "one_element": 2.0,
        "flag": 1.0,
    }
    assert all(type(v) is float for k, v in first.items() if k != "step")
    assert second == {"step": 2, "time": second["time"], "eval/pass@1": 0.5}


def test_non_finite_values_are_strings_on_disk_and_floats_after_read_metrics(tmp_path):
    workdir = str(tmp_path)
    with MetricWriter(workdir, CONFIG, tensorboard=False, is_main_process=True) as writer:
        writer.scalars(0, {"a": float("nan"), "b": np.float32(np.inf), "c": -math.inf, "d": 1})
    (line,) = _raw_lines(os.path.join(workdir, "metrics.jsonl"))[:-1]
    on_disk = _strict_json(line)
    assert (on_disk["a"], on_disk["b"], on_disk["c"], on_disk["d"]) == (
        "NaN",
        "Infinity",
        "-Infinity",
        1.0,
    )
    (record,) = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert math.isnan(record["a"])
    assert record["b"] == math.inf and record["c"] == -math.inf and record["d"] == 1.0


def test_texts_go_to_samples_jsonl_verbatim(tmp_path):
    workdir = str(tmp_path)
    text = 'Q: 2+3?\nA: <think>easy</think> \\boxed{5} "quoted" é'
    with MetricWriter(workdir, CONFIG, tensorboard=False, is_main_process=True) as writer:
        writer.texts(7, {"samples/completion_0": text, "samples/completion_1": ""})
    (record,) = read_metrics(os.path.join(workdir, "samples.jsonl"))
    assert record["step"] == 7
    assert record["samples/completion_0"] == text and record["samples/completion_1"] == ""
    assert not os.path.exists(os.path.join(workdir, "tensorboard"))


def test_config_is_written_once_as_json(tmp_path):
    from ml_collections import ConfigDict

    workdir = str(tmp_path)
    config = ConfigDict({"lr": 3e-6, "model": {"layers": np.int32(4)}, "shape": (2, 3)})
    MetricWriter(workdir, config.to_dict(), tensorboard=False, is_main_process=True).close()
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written == {"lr": 3e-6, "model": {"layers": 4}, "shape": [2, 3]}


@pytest.mark.parametrize(
    ("step", "values", "error", "match"),
    [
        (1, {"vector": np.zeros(3)}, TypeError, "'vector'.*shape \\(3,\\)"),
        (1, {"name": "text"}, TypeError, "'name'"),
        (1, {"none": None}, TypeError, "'none'"),
        (1, {"step": 1.0}, ValueError, "reserved"),
        (1, {"": 1.0}, TypeError, "non-empty"),
        (-1, {"a": 1.0}, ValueError, "step must be >= 0"),
        (1.5, {"a": 1.0}, TypeError, "'float' object cannot be interpreted as an integer"),
    ],
)
def test_bad_scalars_raise_clear_errors(tmp_path, step, values, error, match):
    with (
        MetricWriter(str(tmp_path), CONFIG, tensorboard=False, is_main_process=True) as writer,
        pytest.raises(error, match=match),
    ):
        writer.scalars(step, values)
    assert _raw_lines(str(tmp_path / "metrics.jsonl")) == [""]


def test_bad_texts_and_writes_after_close_raise(tmp_path):
    writer = MetricWriter(str(tmp_path), CONFIG, tensorboard=False, is_main_process=True)
    with pytest.raises(TypeError, match="text 'sample' must be a str"):
        writer.texts(1, {"sample": 3})
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed file"):
        writer.scalars(1, {"a": 1.0})


# ----------------------------------------------------------------------------- resume


def test_resume_drops_lines_after_the_checkpoint_and_a_partial_crash_line(tmp_path):
    workdir = str(tmp_path)
    _log_steps(workdir, range(1, 6))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    samples_path = os.path.join(workdir, "samples.jsonl")
    # A crash in the middle of writing step 6.
    for path in (metrics_path, samples_path):
        with open(path, "a", encoding="utf-8") as f:
            f.write('{"step": 6, "time": 1.0, "train/rew')

    _log_steps(workdir, range(4, 8), resume_step=3)

    for path in (metrics_path, samples_path):
        lines = _raw_lines(path)
        assert lines[-1] == ""
        steps = [_strict_json(line)["step"] for line in lines[:-1]]
        assert steps == [1, 2, 3, 4, 5, 6, 7]
    metrics = read_metrics(metrics_path)
    assert [r["train/reward_mean"] for r in metrics] == [s / 10 for s in range(1, 8)]
    samples = read_metrics(samples_path)
    assert samples[4]["samples/completion_0"] == "completion at step 5"
    leftovers = [n for n in os.listdir(workdir) if n.endswith(".tmp")]
    assert leftovers == []


def test_resume_with_nothing_to_drop_keeps_the_file_byte_for_byte(tmp_path):
    workdir = str(tmp_path)
    _log_steps(workdir, range(1, 4))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    with open(metrics_path, "rb") as f:
        before = f.read()
    MetricWriter(workdir, CONFIG, tensorboard=False, is_main_process=True, resume_step=3).close()
    with open(metrics_path, "rb") as f:
        assert f.read() == before


def test_fresh_run_in_a_used_workdir_replaces_old_lines(tmp_path):
    workdir = str(tmp_path)
    _log_steps(workdir, range(1, 4))
    _log_steps(workdir, range(1, 3), resume_step=None)
    assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))] == [1, 2]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    workdir = str(tmp_path)
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"step": 1, "time": 0.0, "a": 1.0}\n{"step": 2, "ti\n{"step": 3, "time": 0.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: malformed JSON line"):
        read_metrics(path)
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        MetricWriter(workdir, CONFIG, tensorboard=False, is_main_process=True, resume_step=3)


def test_read_metrics_skips_a_partial_last_line(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        # The last line parses as JSON but lacks its newline: still being written.
        f.write('{"step": 1, "time": 0.0, "a": 1.0}\n{"step": 2, "time": 0.0, "a": 2}')
    assert read_metrics(path) == [{"step": 1, "time": 0.0, "a": 1.0}]


# ----------------------------------------------------------------------------- TensorBoard


def _crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(path: str) -> list[event_pb2.Event]:
    """Parse a TFRecord event file, checking each record's framing and checksums."""
    with open(path, "rb") as f:
        data = f.read()
    events, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert length_crc == _masked_crc(header)
        payload = data[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert payload_crc == _masked_crc(payload)
        events.append(event_pb2.Event.FromString(payload))
        offset += 16 + length
    return events


def _tensorboard_events(workdir: str) -> list[list[event_pb2.Event]]:
    logdir = os.path.join(workdir, "tensorboard")
    files = sorted(n for n in os.listdir(logdir) if "tfevents" in n)
    return [_read_events(os.path.join(logdir, name)) for name in files]


def test_tensorboard_event_files_hold_the_scalars_and_texts(tmp_path):
    workdir = str(tmp_path)
    with MetricWriter(workdir, CONFIG, tensorboard=True, is_main_process=True) as writer:
        writer.scalars(1, {"train/reward_mean": 0.25, "eval/pass@1": np.float32(0.5)})
        writer.scalars(2, {"train/reward_mean": 0.75})
        writer.texts(2, {"samples/completion_0": "line one\nline two"})
    (events,) = _tensorboard_events(workdir)
    assert events[0].file_version.startswith("brain.Event")
    scalars = [
        (event.step, value.tag, value.simple_value)
        for event in events
        for value in event.summary.value
        if value.HasField("simple_value")
    ]
    # TensorBoard tags allow [-/\w.] only: "eval/pass@1" is written as "eval/pass_1".
    assert sorted(scalars) == [
        (1, "eval/pass_1", 0.5),
        (1, "train/reward_mean", 0.25),
        (2, "train/reward_mean", 0.75),
    ]
    (text_value,) = [
        (event.step, value)
        for event in events
        for value in event.summary.value
        if value.metadata.plugin_data.plugin_name == "text"
    ]
    step, value = text_value
    assert step == 2 and value.tag == "samples/completion_0/text_summary"
    assert value.tensor.string_val[0].decode() == "    line one\n    line two"


def test_tensorboard_resume_purges_steps_after_the_checkpoint(tmp_path):
    workdir = str(tmp_path)
    _log_steps(workdir, range(1, 6))
    _log_steps(workdir, range(4, 6), resume_step=3)
    first_run, resumed_run = _tensorboard_events(workdir)  # possibly created in the same second
    assert not any(event.HasField("session_log") for event in first_run)
    session_logs = [event for event in resumed_run if event.HasField("session_log")]
    assert [(e.step, e.session_log.status) for e in session_logs] == [
        (4, event_pb2.SessionLog.START)
    ]
    resumed_steps = sorted({e.step for e in resumed_run if len(e.summary.value)})
    assert resumed_steps == [4, 5]


def test_tensorboard_writes_stay_quiet_for_metric_names_with_illegal_characters(
    tmp_path, caplog, capfd
):
    # tensorboardX logs "Summary name train/pass@1 is illegal" at INFO on every write, which
    # absl's handler prints once per metric and step; the writer passes legal tags instead.
    with caplog.at_level(logging.DEBUG), MetricWriter(
        str(tmp_path), CONFIG, is_main_process=True
    ) as writer:
        for step in (1, 2):
            writer.scalars(step, {"train/pass@1": 0.5, "eval/pass@4": 1.0})
            writer.texts(step, {"samples/q&a": "text"})
    assert not [r.getMessage() for r in caplog.records if "illegal" in r.getMessage()]
    assert "illegal" not in capfd.readouterr().err


# ----------------------------------------------------------------------------- processes, wandb


def test_non_main_process_writes_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    with MetricWriter(workdir, CONFIG, tensorboard=True, is_main_process=False) as writer:
        writer.scalars(1, {"train/reward_mean": 0.5})
        writer.texts(1, {"samples/completion_0": "x"})
        with pytest.raises(TypeError):  # inputs are still checked on every process
            writer.scalars(1, {"bad": "x"})
    assert not os.path.exists(workdir)


def test_wandb_enabled_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    workdir = str(tmp_path / "run")
    with pytest.raises(ImportError, match=r"wandb=True.*pip install 'rlvr_jax\[wandb\]'"):
        MetricWriter(workdir, CONFIG, wandb=True, is_main_process=True)
    assert not os.path.exists(workdir)


class _RecordingWandb(types.ModuleType):
    """A stand-in for the wandb module that records what the logger asks of it."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[dict, int]] = []
        self.finished = 0
        self.util = types.SimpleNamespace(generate_id=lambda: f"id{len(self.inits)}")
        self.Html = lambda page: ("html", page)

    def init(self, **kwargs):
        self.inits.append(kwargs)
        wandb_module = self

        class Run:
            def log(self, values, step):
                wandb_module.logged.append((values, step))

            def finish(self):
                wandb_module.finished += 1

        return Run()


def test_wandb_gets_config_scalars_texts_and_the_same_run_id_on_resume(tmp_path, monkeypatch):
    fake = _RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    workdir = str(tmp_path)
    for resume_step in (None, 1):
        with MetricWriter(
            workdir, CONFIG, tensorboard=False, wandb=True, wandb_project="proj",
            is_main_process=True, resume_step=resume_step,
        ) as writer:  # fmt: skip
            writer.scalars(2, {"train/loss": np.float32(0.5)})
            writer.texts(2, {"samples/completion_0": "a<b"})
    assert [init["id"] for init in fake.inits] == ["id0", "id0"]
    assert fake.inits[0]["project"] == "proj" and fake.inits[0]["config"] == CONFIG
    assert fake.logged[:2] == [
        ({"train/loss": 0.5}, 2),
        ({"samples/completion_0": ("html", "<pre>a&lt;b</pre>")}, 2),
    ]
    assert fake.finished == 2
