"""The GPU measurement in one command: decode against the HBM roofline, train-step MFU, log-prob
memory and one RL step of the main job, each part a subprocess with its own time budget.

Parts (full mode, sized for one H100 / H200; results in ``--out-dir``):

==============  ======  ====================================================================
part            budget  runs
==============  ======  ====================================================================
decode-0.5b     105 s   ``decode_roofline`` on Qwen2.5-0.5B-shaped bf16 random weights,
                        batches 1, 8, 64, 256, prompt 128, 256 new tokens (target: >= 70 %
                        of the HBM roofline at batch 64)
decode-1.5b     115 s   the same on Qwen2.5-1.5B (rows merge into one ``decode_roofline.json``)
train_step      110 s   ``train_step``: Qwen2.5-1.5B, bf16 compute, f32 parameters, full
                        remat, 32 x (512 + 512) tokens (target: MFU >= 40 %)
logprobs        35 s    ``logprobs``: chunked log-prob memory against full logits (compiled
                        memory analysis, B 8, T 4096, V 151,936)
rl_step         110 s   ``rl_step``: 3 steps of ``rlvr_jax.train.run`` with
                        ``configs/smollm2_arith.py:grpo`` on a Qwen2.5-0.5B-shaped random model
                        with SmolLM2's vocabulary, bf16; time split per step
==============  ======  ====================================================================

Every part runs attention through ``attention_impl="cudnn"`` (``--attention-impl``). The
budgets add up to 475 s, under 8 minutes; each is a hard limit (the part's process group is
killed), so the whole suite ends in time. Where the time goes is estimated in
``benchmarks/README.md`` (compilation dominates every part but ``train_step``'s steps).

A part that fails or runs out of time is reported and the next one runs; the suite exits
non-zero if any part failed. Each part writes its JSON into ``--out-dir`` (decode rows are
written after every batch, so a part stopped by its budget keeps what it measured; the RL
part's steps are read from the job's ``metrics.jsonl`` even when it was stopped). The output
of every part goes to the terminal and to ``gpu_suite.log``; the summary with a headline per
part to ``gpu_suite.json`` and a final table. This driver never imports JAX, so it holds no
accelerator memory while the parts run.

``--tiny`` runs the same parts and code paths with tiny shapes, ``attention_impl="xla"`` (the
same ``jax.nn.dot_product_attention`` code, the kernel cuDNN replaces on a GPU) and generous
budgets: a CPU check of the whole suite (``tests/test_benchmark_scripts.py`` runs it).

    bash benchmarks/gpu_suite.sh run "$OUT"                    # on the GPU machine
    python -m benchmarks.gpu_suite --tiny --tokenizer <dir> --out-dir /tmp/gpu_suite   # CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import harness
from benchmarks.step_metrics import read_steps, summarize
from rlvr_jax.models.config import ATTENTION_IMPLS  # imports JAX, which allocates nothing

ROOT = harness.RESULTS_DIR.parent.parent  # the repository: the parts run there
LOG_FILE = "gpu_suite.log"
SUMMARY_FILE = "gpu_suite.json"
TINY_BUDGET_S = 600.0  # per part on a loaded CPU: the tiny mode checks code paths, not time
RL_WORKDIR = "rl_step_run"  # under the --workdir-root


@dataclasses.dataclass(frozen=True)
class Part:
    """One measurement: ``python -m benchmarks.<module> <args>`` under a time budget."""

    name: str
    module: str
    budget_s: float
    result_file: str
    full_args: Callable[[argparse.Namespace], list[str]]
    tiny_args: Callable[[argparse.Namespace], list[str]]
    headline: Callable[[dict[str, Any]], str]


def _decode_full(preset: str) -> Callable[[argparse.Namespace], list[str]]:
    return lambda a: ["--presets", preset, "--batches", "1", "8", "64", "256",
                      "--prompt-len", "128", "--new-tokens", "256", "--repeats", "3",
                      "--dtype", "bfloat16", "--attention-impl", a.attention_impl]


def _decode_tiny(batch: int) -> Callable[[argparse.Namespace], list[str]]:
    return lambda a: ["--presets", "tiny", "--batches", str(batch), "--prompt-len", "8",
                      "--new-tokens", "8", "--repeats", "1", "--dtype", "float32",
                      "--bandwidth-mib", "8", "--attention-impl", a.attention_impl]


def _decode_headline(preset: str) -> Callable[[dict[str, Any]], str]:
    def headline(result: dict[str, Any]) -> str:
        rows = [r for r in result["rows"] if r["preset"] in (preset, "tiny")]
        measured = [r for r in rows if "skipped" not in r]
        at_64 = [r for r in measured if r["batch"] == 64]
        if at_64:
            return (f"batch 64: {1e3 * at_64[0]['step_s']:.3f} ms/step, "
                    f"{100 * at_64[0]['bandwidth_fraction']:.0f} % of the HBM roofline")
        return (f"{len(measured)} of {len(rows)} batches measured"
                + (" (batch 64 not measured)" if preset != "tiny" else ""))
    return headline


def _train_step_headline(result: dict[str, Any]) -> str:
    entry = result["entries"][-1]
    return (f"MFU {100 * entry['mfu']:.1f} %, {entry['step_s_median']:.3f} s/step, "
            f"{entry['tokens_per_s']:,.0f} tokens/s")


def _logprobs_headline(result: dict[str, Any]) -> str:
    row = {r["mode"]: r for r in result["rows"]}["forward+backward"]
    return (f"forward+backward scratch {row['chunked']['temp_gib']:.2f} GiB chunked vs "
            f"{row['naive']['temp_gib']:.2f} GiB naive")


def _rl_headline(result: dict[str, Any]) -> str:
    later = result.get("median_after_first") or result.get("first_step")
    if not later:
        return "no step logged"
    which = "median after the first" if result.get("median_after_first") else "first step"
    parts = [f"{name} {later.get(f'time/{name}_seconds', float('nan')):.3f}"
             for name in ("generation", "verification", "scoring", "update")]
    return f"step {later['time/step_seconds']:.3f} s ({which}): " + ", ".join(parts)


def _rl_args(a: argparse.Namespace, preset: str, dtype: str, steps: int) -> list[str]:
    return ["--preset", preset, "--dtype", dtype, "--attention-impl", a.attention_impl,
            "--tokenizer", a.tokenizer, "--steps", str(steps),
            "--workdir", os.path.join(a.workdir_root, RL_WORKDIR)]


PARTS = (
    Part("decode-0.5b", "decode_roofline", 105, "decode_roofline.json",
         _decode_full("qwen2.5-0.5b"), _decode_tiny(1), _decode_headline("qwen2.5-0.5b")),
    Part("decode-1.5b", "decode_roofline", 115, "decode_roofline.json",
         _decode_full("qwen2.5-1.5b"), _decode_tiny(2), _decode_headline("qwen2.5-1.5b")),
    Part("train_step", "train_step", 110, "train_step.json",
         lambda a: ["--preset", "qwen2.5-1.5b", "--dtype", "bfloat16", "--param-dtype",
                    "float32", "--remat", "full", "--attention-impl", a.attention_impl,
                    "--batch", "32", "--prompt-len", "512", "--response-len", "512",
                    "--warmup", "1", "--repeats", "5"],
         lambda a: ["--preset", "tiny", "--dtype", "bfloat16", "--param-dtype", "float32",
                    "--remat", "full", "--attention-impl", a.attention_impl, "--batch", "2",
                    "--prompt-len", "8", "--response-len", "8", "--warmup", "0",
                    "--repeats", "1", "--peak-matmul-size", "64"],
         _train_step_headline),
    Part("logprobs", "logprobs", 35, "logprobs.json",
         lambda a: [],
         lambda a: ["--batch", "2", "--length", "32", "--vocab", "512", "--hidden", "64",
                    "--chunk-size", "16"],
         _logprobs_headline),
    Part("rl_step", "rl_step", 110, "rl_step.json",
         lambda a: _rl_args(a, "qwen2.5-0.5b", "bfloat16", 3),
         lambda a: _rl_args(a, "tiny", "float32", 2),
         _rl_headline),
)
PART_NAMES = tuple(part.name for part in PARTS)


def command(part: Part, args: argparse.Namespace) -> list[str]:
    extra = part.tiny_args(args) if args.tiny else part.full_args(args)
    out = os.path.join(args.out_dir, part.result_file)
    return [sys.executable, "-m", f"benchmarks.{part.module}", *extra, "--out", out]


def _stream(process: subprocess.Popen, log: Any) -> None:
    for line in process.stdout:
        sys.stdout.write(line)
        log.write(line)
    sys.stdout.flush()
    log.flush()


def run_part(part: Part, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Runs one part under its budget; its status, seconds and headline."""
    budget = TINY_BUDGET_S if args.tiny else part.budget_s
    argv = command(part, args)
    banner = f"\n=== {part.name} (budget {budget:.0f} s): {' '.join(argv)}\n"
    sys.stdout.write(banner)
    log.write(banner)
    start = time.perf_counter()
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True, cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1",
                                    "PYTHONPATH": python_path})
    reader = threading.Thread(target=_stream, args=(process, log))
    reader.start()
    try:
        returncode = process.wait(timeout=budget)
        status = "ok" if returncode == 0 else f"failed (exit {returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the part and its children (verifier pool)
        returncode = process.wait()
        status = f"timed out after {budget:.0f} s"
    reader.join()
    seconds = time.perf_counter() - start
    record = {"part": part.name, "status": status, "returncode": returncode,
              "seconds": seconds, "budget_s": budget, "command": argv,
              "result_file": part.result_file}
    record["headline"] = headline(part, args)
    return record


def headline(part: Part, args: argparse.Namespace) -> str:
    """The part's key figure from its JSON (the RL part's from the job's metrics when its JSON
    is missing, e.g. stopped by its budget); the reason when there is none."""
    path = os.path.join(args.out_dir, part.result_file)
    result = harness.read_result(path)
    if result is None and part.module == "rl_step":
        steps = read_steps(os.path.join(args.workdir_root, RL_WORKDIR, "run"))
        if steps:
            result = summarize(steps)
    if result is None:
        return f"no result ({part.result_file} not written)"
    try:
        return part.headline(result)
    except (KeyError, IndexError, TypeError) as error:
        return f"result without the expected fields ({type(error).__name__}: {error})"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(harness.RESULTS_DIR / "gpu_suite"),
                        help="folder of the results, the log and the summary")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes, attention 'xla', long budgets: a CPU check")
    parser.add_argument("--parts", nargs="+", default=list(PART_NAMES), choices=PART_NAMES)
    parser.add_argument("--attention-impl", default=None, choices=ATTENTION_IMPLS,
                        help="ModelConfig.attention_impl of every part (default: cudnn, or "
                             "xla with --tiny)")
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct",
                        help="the RL part's tokenizer (models.load_tokenizer argument); on a "
                             "machine without network, a saved directory")
    parser.add_argument("--workdir-root", default="/tmp/gpu_suite",
                        help="scratch folder (the RL part's checkpoint and run)")
    args = parser.parse_args(argv)
    for name in ("out_dir", "workdir_root"):  # the parts run in the repository root
        setattr(args, name, os.path.abspath(getattr(args, name)))
    if os.path.exists(args.tokenizer):
        args.tokenizer = os.path.abspath(args.tokenizer)
    if args.attention_impl is None:
        args.attention_impl = "xla" if args.tiny else "cudnn"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    selected = [part for part in PARTS if part.name in args.parts]
    for part in selected:  # results of an earlier suite run must not pass for this one's
        path = os.path.join(args.out_dir, part.result_file)
        if os.path.exists(path):
            os.remove(path)
    start = time.perf_counter()
    with open(os.path.join(args.out_dir, LOG_FILE), "w") as log:
        records = [run_part(part, args, log) for part in selected]
    total = time.perf_counter() - start
    summary = {
        "mode": "tiny" if args.tiny else "full",
        "attention_impl": args.attention_impl,
        "host": {"node": platform.node(), "cpu_count": os.cpu_count(),
                 "python": platform.python_version()},
        "total_s": total,
        "budget_total_s": sum(r["budget_s"] for r in records),
        "parts": records,
    }
    harness.write_result(summary, os.path.join(args.out_dir, SUMMARY_FILE))
    print(f"\nGPU suite ({summary['mode']}, attention {args.attention_impl}): {total:.0f} s")
    harness.print_table(
        ["part", "status", "seconds", "budget", "result"],
        [[r["part"], r["status"], f"{r['seconds']:.0f}", f"{r['budget_s']:.0f}", r["headline"]]
         for r in records], align="<<>><")
    failed = [r["part"] for r in records if r["status"] != "ok"]
    if failed:
        print(f"parts not ok: {', '.join(failed)} (their output is in "
              f"{os.path.join(args.out_dir, LOG_FILE)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
