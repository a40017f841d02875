"""Pure helpers of the benchmark scripts against hand-computed values (no timing assertions)."""

import dataclasses
import json
import sys

import jax
import numpy as np
import pytest

from benchmarks import decode_roofline as roofline
from benchmarks import harness, shapes
from rlvr_jax import models, sampling

# shapes.TINY_CONFIG: L=2, D=64, H=4, K=2, Dh=16, F=128, V=512, q/k/v biases.
# One layer: q, o 64·64 each; k, v 64·32 each; biases 4·16 + 2·2·16; gate, up, down 64·128
# each; two norms of 64.
TINY_LAYER = 2 * 64 * 64 + 2 * 64 * 32 + (64 + 64) + 3 * 64 * 128 + 2 * 64  # 37120
TINY_MATMUL = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 512 * 64  # 106496


def test_tiny_layer_count_matches_initialised_parameters():
    config = shapes.TINY_CONFIG
    params = models.init_params(config, jax.random.key(0))
    layer_sizes = sum(x.size for x in jax.tree.leaves(params["layers"]))
    assert config.params_per_layer == TINY_LAYER == layer_sizes // 2
    # Tied: the whole tree is the layers + final norm + the embedding used as unembedding.
    total = sum(x.size for x in jax.tree.leaves(params))
    assert total == 2 * TINY_LAYER + 64 + 512 * 64


def test_average_cache_length_is_mean_over_decode_steps():
    prompt, new = 16, 8
    lengths = [prompt + s for s in range(1, new)]  # decode step s attends over P + s slots
    assert roofline.average_cache_length(prompt, new) == pytest.approx(np.mean(lengths)) == 20


def test_decode_bytes_per_step_tiny_bfloat16():
    config = roofline.model_config("tiny", "bfloat16")
    traffic = roofline.decode_bytes_per_step(config, batch=4, prompt_len=16, new_tokens=8)
    params = 2 * (2 * TINY_LAYER + 64 + 512 * 64 + 4 * 64)  # 214656 bytes
    kv = 2 * 2 * 4 * 2 * 20 * 16 * 2  # k and v, L, B, K, S_avg = 16 + 8/2, Dh, bf16: 20480
    assert traffic == {"params": params, "kv": kv, "total": params + kv}
    assert traffic["total"] == 235136


def test_decode_bytes_float32_doubles_bfloat16():
    half = roofline.decode_bytes_per_step(roofline.model_config("tiny", "bfloat16"), 4, 16, 8)
    full = roofline.decode_bytes_per_step(roofline.model_config("tiny", "float32"), 4, 16, 8)
    assert full["total"] == 2 * half["total"]


def test_qwen_0_5b_reads_every_parameter_once_at_batch_one():
    config = roofline.model_config("qwen2.5-0.5b", "bfloat16")
    traffic = roofline.decode_bytes_per_step(config, batch=1, prompt_len=0, new_tokens=2)
    # 494,032,768 parameters (tied embedding) + one embedding row of 896.
    assert traffic["params"] == 2 * (494_032_768 + 896)
    assert traffic["kv"] == 2 * 24 * 1 * 2 * 1 * 64 * 2  # S_avg = 0 + 2/2


def test_decode_flops_per_step_tiny():
    config = shapes.TINY_CONFIG
    assert roofline.matmul_weight_count(config) == TINY_MATMUL
    attention = 4 * 4 * 2 * 4 * 16 * 20  # B, L, H, Dh, S_avg
    assert roofline.decode_flops_per_step(config, 4, 16, 8) == 2 * TINY_MATMUL * 4 + attention


def test_roofline_fraction():
    # 2.01 GB in 1 ms at 3350 GB/s: the roofline time is 0.6 ms, 60% of the step.
    assert roofline.roofline_fraction(2.01e9, 1e-3, 3350.0) == pytest.approx(0.6)
    assert roofline.roofline_fraction(1e6, 2e-3, 1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        roofline.roofline_fraction(1e6, 0.0, 3350.0)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("NVIDIA H100 80GB HBM3", (989.0, 3350.0, 80e9)), ("NVIDIA H200", (989.0, 4800.0, 141e9)),
     ("NVIDIA H100 PCIe", (756.0, 2000.0, 80e9)), ("NVIDIA A100-SXM4-40GB", (312.0, 1555.0, 40e9)),
     ("NVIDIA A100 80GB PCIe", (312.0, 1935.0, 80e9)), ("cpu", None),
     ("TPU v4", (275.0, 1200.0, 32 * 2**30)), ("TPU v5", (459.0, 2765.0, 95 * 2**30)),
     ("TPU v5 lite", (197.0, 819.0, 16 * 2**30)), ("TPU v6 lite", (918.0, 1640.0, 32 * 2**30))],
)
def test_accelerator_data_sheet_from_device_kind(kind, expected):
    """The device kinds JAX reports (TPU kinds as libtpu's topologies name them: a v5p is
    "TPU v5", a v5e "TPU v5 lite") find their data-sheet row."""
    sheet = harness.data_sheet(kind)
    assert expected == (None if sheet is None else
                        (sheet.bf16_tflops, sheet.bandwidth_gbs, sheet.memory_bytes))


def test_result_files_and_tables(tmp_path, capsys):
    path = tmp_path / "deep" / "r.json"
    assert harness.read_result(path) is None
    harness.write_result({"rows": [1.5]}, path)
    assert harness.read_result(path) == {"rows": [1.5]} == json.loads(path.read_text())
    assert path.read_text().endswith("\n") and f"wrote {path}" in capsys.readouterr().out
    assert harness.result_path("x").endswith("benchmarks/results/x.json")
    harness.print_table(["name", "value"], [["a", "1.0"], ["long name", 22]])
    assert capsys.readouterr().out.splitlines() == [
        "name       value", "a            1.0", "long name     22",
    ]
    harness.print_table(["k", "v"], [["a", "b c"]], align="<<")
    assert capsys.readouterr().out.splitlines() == ["k  v", "a  b c"]
    record = harness.machine(extra="1.0")
    assert record["device"]["platform"] == jax.devices()[0].platform
    assert record["versions"]["extra"] == "1.0" and record["cpu_count"] >= 1


@pytest.mark.parametrize(
    "argv",
    [["--presets", "qwen9"], ["--new-tokens", "1"], ["--dtype", "bfloat17"],
     ["--batches", "0"], ["--bandwidth-gbs", "-1"]],
)
def test_bad_arguments_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        roofline.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_one_and_n_token_calls_share_one_compiled_program():
    config = shapes.TINY_CONFIG
    params = models.init_params(config, jax.random.key(0))
    # 65 new tokens: generate's default 64-step buckets would give the 1-token call its own
    # (64-step) program and the 65-token call a 128-step one.
    args = roofline.parse_args(["--presets", "tiny", "--prompt-len", "8", "--new-tokens", "65",
                                "--repeats", "1", "--dtype", "float32"])
    before = sampling._generate_bucketed._cache_size()
    times = roofline.time_decode_step(config, params, 2, args)
    assert sampling._generate_bucketed._cache_size() == before + 1
    assert times["full_s"] > 0 and times["one_token_s"] > 0
    assert times["step_s"] == pytest.approx((times["full_s"] - times["one_token_s"]) / 64)


def _fake_timing(full_s, one_token_s, new_tokens):
    def time_decode_step(config, params, batch, args):
        return {"first_call_s": 1.0, "full_s": full_s, "one_token_s": one_token_s,
                "step_s": (full_s - one_token_s) / (new_tokens - 1)}
    return time_decode_step


def test_main_rows_from_given_timings(monkeypatch, tmp_path):
    monkeypatch.setattr(roofline, "time_decode_step", _fake_timing(0.010, 0.003, 8))
    monkeypatch.setattr(roofline, "measure_bandwidth_gbs", lambda mib: {"read": 1.0, "copy": 2.0})
    out = tmp_path / "decode.json"
    roofline.main(["--presets", "tiny", "--batches", "4", "--prompt-len", "16", "--new-tokens",
                   "8", "--dtype", "bfloat16", "--peak-tflops", "1e-6", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["bandwidth_gbs"]["used"] == 2.0  # the larger measured figure
    (row,) = result["rows"]
    assert row["step_s"] == pytest.approx(0.001)  # (10 ms - 3 ms) / 7 steps
    assert row["tokens_per_s"] == pytest.approx(4000.0)
    assert row["achieved_gbs"] == pytest.approx(235136 / 0.001 / 1e9)
    assert row["bandwidth_fraction"] == pytest.approx(235136 / 2e9 / 0.001)
    flops = 2 * TINY_MATMUL * 4 + 4 * 4 * 2 * 4 * 16 * 20
    assert row["compute_roofline_s"] == pytest.approx(flops / 1e6)
    assert row["bound"] == "compute"  # 0.89 s of compute against 0.12 ms of memory traffic
    assert row["roofline_fraction"] == pytest.approx(flops / 1e6 / 0.001)
    assert row["kv_full_buffer_bytes"] == 2 * 2 * 4 * 2 * 24 * 16 * 2  # all P + n = 24 slots


def test_rows_skip_when_memory_would_not_fit_or_runs_out(monkeypatch):
    config = shapes.TINY_CONFIG
    args = roofline.parse_args(["--presets", "tiny", "--prompt-len", "8", "--new-tokens", "4"])

    def must_not_run(*_):
        raise AssertionError("a batch that does not fit must not be run")

    monkeypatch.setattr(roofline, "time_decode_step", must_not_run)
    monkeypatch.setattr(roofline, "free_device_bytes", lambda device: 1.0)
    row = roofline.measure_row("tiny", config, None, 2, args, 1.0, None)
    assert "GiB free" in row["skipped"]

    def out_of_memory(*_):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB")

    monkeypatch.setattr(roofline, "time_decode_step", out_of_memory)
    monkeypatch.setattr(roofline, "free_device_bytes", lambda device: None)
    row = roofline.measure_row("tiny", config, None, 2, args, 1.0, None)
    assert row["skipped"].startswith("out of memory: RESOURCE_EXHAUSTED")


def _result(kind, rows, **settings):
    base = {name: 1 for name in ("prompt_len", "new_tokens", "strategy", "dtype", "repeats",
                                 "attention_impl")}
    base.update(bandwidth_gbs=None, peak_tflops=None, **settings)
    return {"device": {"kind": kind}, "settings": base,
            "rows": [{"preset": preset, "batch": batch, "step_s": step_s}
                     for preset, batch, step_s in rows]}


def test_merge_keeps_rows_not_remeasured_from_same_device_and_settings():
    previous = _result("H100", [("a", 1, 1.0), ("a", 2, 2.0), ("b", 1, 3.0)])
    new = _result("H100", [("a", 2, 9.0), ("c", 4, 5.0)])
    merged = roofline.merge_rows(previous, new)
    assert [(r["preset"], r["batch"], r["step_s"]) for r in merged["rows"]] == [
        ("a", 1, 1.0), ("a", 2, 9.0), ("b", 1, 3.0), ("c", 4, 5.0)
    ]
    assert roofline.merge_rows(None, new) == new
    assert roofline.merge_rows(_result("H200", [("b", 1, 3.0)]), new) == new
    assert roofline.merge_rows(_result("H100", [("b", 1, 3.0)], dtype=2), new) == new


# The GPU suite (benchmarks/gpu_suite.py).

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _arithmetic_tokenizer(directory):
    """A small byte-level BPE with a ChatML template, trained on arithmetic prompts, saved as a
    directory (SmolLM2's tokenizer is read from a 100 MB GGUF, too slow to load for a test)."""
    import tokenizers
    import transformers

    corpus = [f"Calculate {a} + {b}.\n\nAnswer with the number only. {a + b}"
              for a in range(0, 100, 7) for b in range(0, 100, 9)]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return len(fast)


def test_gpu_suite_full_commands_are_accepted_by_their_scripts(tmp_path):
    # The GPU run cannot be retried cheaply: every part's full-mode command line must parse.
    from benchmarks import gpu_suite, rl_step
    from benchmarks import logprobs as logprobs_script
    from benchmarks import train_step as train_step_script

    args = gpu_suite.parse_args(["--out-dir", str(tmp_path), "--tokenizer", "tok"])
    assert args.attention_impl == "cudnn" and not args.tiny
    parsers = {"decode_roofline": roofline.parse_args, "train_step": train_step_script.parse_args,
               "logprobs": logprobs_script.parse_args, "rl_step": rl_step.parse_args}
    budget = 0.0
    for part in gpu_suite.PARTS:
        argv = gpu_suite.command(part, args)
        assert argv[1:3] == ["-m", f"benchmarks.{part.module}"]
        parsed = parsers[part.module](argv[3:])
        assert parsed.out == str(tmp_path / part.result_file)
        if part.module != "logprobs":  # compiled memory analysis only: no model
            assert parsed.attention_impl == "cudnn"
        budget += part.budget_s
    assert budget < 8 * 60


def test_gpu_suite_reports_failed_and_timed_out_parts(monkeypatch, tmp_path, capsys):
    from benchmarks import gpu_suite

    args = gpu_suite.parse_args(["--out-dir", str(tmp_path)])
    part = gpu_suite.PARTS[3]  # logprobs
    script = {"failed": "raise SystemExit(3)", "timed": "import time; time.sleep(60)"}
    with open(tmp_path / "log", "w") as log:
        monkeypatch.setattr(gpu_suite, "command",
                            lambda part, args: [sys.executable, "-c", script["failed"]])
        failed = gpu_suite.run_part(part, args, log)
        monkeypatch.setattr(gpu_suite, "command",
                            lambda part, args: [sys.executable, "-c", script["timed"]])
        slow = dataclasses.replace(part, budget_s=1.0)
        timed_out = gpu_suite.run_part(slow, args, log)
    assert failed["status"] == "failed (exit 3)" and failed["returncode"] == 3
    assert failed["headline"] == "no result (logprobs.json not written)"
    assert timed_out["status"] == "timed out after 1 s" and timed_out["seconds"] < 30


@pytest.mark.slow
def test_gpu_suite_tiny_mode_end_to_end(tmp_path):
    from benchmarks import gpu_suite

    vocab = _arithmetic_tokenizer(tmp_path / "tokenizer")
    out = tmp_path / "results"
    code = gpu_suite.main(["--tiny", "--tokenizer", str(tmp_path / "tokenizer"),
                           "--out-dir", str(out), "--workdir-root", str(tmp_path / "scratch")])
    summary = json.loads((out / "gpu_suite.json").read_text())
    assert [p["part"] for p in summary["parts"]] == list(gpu_suite.PART_NAMES)
    assert [p["status"] for p in summary["parts"]] == ["ok"] * 5, (out / "gpu_suite.log")
    assert code == 0 and summary["mode"] == "tiny" and summary["attention_impl"] == "xla"

    decode = json.loads((out / "decode_roofline.json").read_text())  # both parts' rows merged
    assert [(r["preset"], r["batch"]) for r in decode["rows"]] == [("tiny", 1), ("tiny", 2)]
    assert decode["settings"]["attention_impl"] == "xla"
    (train,) = json.loads((out / "train_step.json").read_text())["entries"]
    assert train["settings"]["remat"] == "full" and train["settings"]["attention_impl"] == "xla"
    assert train["tokens_per_step"] == 2 * 16 and np.isfinite(train["final_loss"])
    assert 0 < train["mfu"] < 1
    memory = json.loads((out / "logprobs.json").read_text())
    assert [r["mode"] for r in memory["rows"]] == ["forward", "forward+backward"]

    rl = json.loads((out / "rl_step.json").read_text())
    assert rl["error"] is None and rl["steps_logged"] == 2
    assert rl["model"]["vocab_size"] == vocab and rl["settings"]["attention_impl"] == "xla"
    assert rl["job"] == {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 24,
                         "estimator": "grpo"}  # configs/smollm2_arith.py:grpo
    for step in rl["steps"]:
        split = [step[f"time/{name}_seconds"]
                 for name in ("generation", "verification", "scoring", "update")]
        assert min(split) > 0 and sum(split) <= step["time/step_seconds"] * (1 + 1e-6)
    run_config = json.loads((tmp_path / "scratch" / "rl_step_run" / "run" / "config.json")
                            .read_text())
    assert run_config["model"]["attention_impl"] == "xla"
