"""Time per step, tokens/s and model FLOPs utilisation of the compiled RL train step.

Builds a randomly initialised policy of a preset architecture (no download), a synthetic
rollout batch of ``--batch`` sequences of ``--prompt-len + --response-len`` real tokens, and
``rlvr_jax.train_step.make_train_step`` with one optimizer update per call (AdamW, token-mean
clipped policy loss, ``--micro-batches`` gradient accumulation). Lowering + compiling
(``step.lower(...).compile()``) is timed on its own, then the first call (which may still pay
for jit's dispatch-path compile), then ``--warmup`` untimed steps and ``--repeats`` timed
steps, whose median is reported. tokens/s = batch × (prompt + response) / median step time.

Model FLOPs per step (forward + backward of the policy over every token of the batch):

    analytic = 6 · N_matmul · tokens  +  12 · layers · T² · (heads · head_dim) · batch

``N_matmul`` counts the weights that take part in matmuls (attention and MLP projections and
the unembedding; not the embedding lookup of an untied model, not norms or biases). The
second term is PaLM's attention term: QKᵀ and PV over all ``T × T`` positions (the model
computes the full masked square, so the causal half is not subtracted). The XLA figure is
``step.lower(...).compile().cost_analysis()["flops"]``; XLA's HLO cost analysis counts the
body of a ``while`` loop once, and the layers, the micro-batches and the log-prob chunks are
all ``lax.scan`` loops, so on a scanned model it is far below the true count. **MFU uses the
analytic figure**; both are reported. Rematerialisation adds recomputed FLOPs the analytic
figure does not count (MFU, not hardware utilisation).

Peak FLOP/s: ``--peak-tflops`` if given; otherwise for a GPU the dense bf16 peak of its kind
from ``harness.ACCELERATORS``; otherwise (CPU) a float32 matmul rate measured on this machine
(``--peak-matmul-size`` square matrices, best of 5) just before and just after the timed
steps, the larger of the two. On a shared machine the load changes between the matmul and
the steps; the process CPU time per wall second of the timed steps is reported to show it.

    python -m benchmarks.train_step                              # SmolLM2-135M, 8 × (128+128)
    python -m benchmarks.train_step --batch 2 --prompt-len 32 --response-len 32 --repeats 2
    python -m benchmarks.train_step --preset qwen2.5-1.5b --dtype bfloat16 --batch 32 \\
        --prompt-len 512 --response-len 512 --remat full --attention-impl cudnn   # a GPU
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.shapes import NAMES, model_config
from rlvr_jax import models, sharding
from rlvr_jax import optimizer as optim
from rlvr_jax import train_step as ts
from rlvr_jax.config import base_config
from rlvr_jax.models.config import ATTENTION_IMPLS


def matmul_weight_count(config: models.ModelConfig) -> int:
    """Weights that take part in matmuls per token: projections of every layer + unembedding."""
    D, F, H, K, Dh = (config.hidden_size, config.mlp_dim, config.num_heads, config.num_kv_heads,
                      config.head_dim)
    per_layer = D * H * Dh * 2 + D * K * Dh * 2 + 3 * D * F  # q, o, k, v; gate, up, down
    return config.num_layers * per_layer + config.vocab_size * D


def analytic_flops(config: models.ModelConfig, batch: int, length: int) -> dict[str, float]:
    """Forward + backward model FLOPs of ``batch`` sequences of ``length`` tokens."""
    matmul = 6.0 * matmul_weight_count(config) * batch * length
    attention = 12.0 * config.num_layers * length**2 * config.num_heads * config.head_dim * batch
    return {"matmul": matmul, "attention": attention, "total": matmul + attention}


def measured_matmul_tflops(size: int, repeats: int = 5) -> float:
    """Best float32 ``[size, size] @ [size, size]`` rate on the default device, TFLOP/s."""
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (size, size), jnp.float32)
    b = jax.random.normal(keys[1], (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e12


def synthetic_batch(config: models.ModelConfig, batch: int, prompt_len: int,
                    response_len: int, seed: int) -> dict[str, np.ndarray]:
    """A rollout batch with every token real (see ``train_step`` for the layout)."""
    rng = np.random.default_rng(seed)
    length = prompt_len + response_len
    return {
        "tokens": rng.integers(0, config.vocab_size, (batch, length), dtype=np.int32),
        "attention_mask": np.ones((batch, length), bool),
        "response_mask": np.ones((batch, response_len), np.float32),
        "old_logp": -rng.exponential(2.0, (batch, response_len)).astype(np.float32),
        "advantages": rng.standard_normal(batch).astype(np.float32),
    }


def compile_step(step: Any, state: Any, batch: Any) -> tuple[float, float | None]:
    """Seconds to lower and compile the step, and its XLA ``cost_analysis()["flops"]``.

    The flops are None where the backend reports none.
    """
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    seconds = time.perf_counter() - start
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax returned one dict per device program
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return seconds, None
    return seconds, float(analysis["flops"])


def settings_key(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={settings[k]}" for k in sorted(settings))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="smollm2-135m-instruct", choices=NAMES,
                        help="architecture with random weights ('tiny': two layers, smoke runs)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--response-len", type=int, default=128)
    parser.add_argument("--dtype", default="float32", help="compute dtype (float32, bfloat16)")
    parser.add_argument("--param-dtype", default="float32", help="parameter storage dtype")
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots_saveable"])
    parser.add_argument("--attention-impl", default="einsum", choices=ATTENTION_IMPLS,
                        help="ModelConfig.attention_impl ('cudnn': fused attention on a GPU)")
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--logprob-chunk-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak, TFLOP/s (default: GPU table, or measured on CPU)")
    parser.add_argument("--peak-matmul-size", type=int, default=2048)
    parser.add_argument("--note", default="", help="free text stored with the result")
    parser.add_argument("--out", default=harness.result_path("train_step"))
    args = parser.parse_args(argv)
    for name in ("batch", "prompt_len", "response_len", "micro_batches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch % args.micro_batches:
        parser.error(f"--batch {args.batch} is not divisible by --micro-batches "
                     f"{args.micro_batches}")
    return args


def table_peak(args: argparse.Namespace, device: jax.Device) -> tuple[float, str] | None:
    """The peak from ``--peak-tflops`` or the GPU table, with its source; None to measure."""
    if args.peak_tflops is not None:
        return args.peak_tflops, "--peak-tflops"
    sheet = harness.data_sheet(device.device_kind) if device.platform == "gpu" else None
    if sheet is not None:
        return sheet.bf16_tflops, f"bf16 dense data-sheet peak of {device.device_kind}"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = model_config(args.preset, args.dtype, args.param_dtype,
                          args.attention_impl).replace(remat_policy=args.remat)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    rules = sharding.rules_from_config(None)
    tx, _ = optim.make_optimizer(name="adamw", learning_rate=1e-6)
    state, shardings = ts.create_train_state(config, tx, jax.random.key(0), mesh, rules)
    run_config = base_config()
    run_config.batching.micro_batches = args.micro_batches
    run_config.batching.logprob_chunk_size = args.logprob_chunk_size
    step = ts.make_train_step(run_config, config, tx, mesh, rules, shardings)
    host_batch = synthetic_batch(config, args.batch, args.prompt_len, args.response_len, seed=0)
    batch = jax.device_put(host_batch, sharding.batch_sharding(mesh, rules))

    with sharding.activate(mesh, rules):
        compile_s, compiled_flops = compile_step(step, state, batch)

    start = time.perf_counter()
    state, step_metrics, _ = step(state, batch)
    jax.block_until_ready((state, step_metrics))
    first_call_s = time.perf_counter() - start
    if not np.isfinite(float(step_metrics["loss"])):
        raise RuntimeError(f"train step produced a non-finite loss: {step_metrics['loss']}")
    for _ in range(args.warmup):
        state, step_metrics, _ = step(state, batch)
    jax.block_until_ready(state)

    device = jax.devices()[0]
    fixed_peak = table_peak(args, device)
    measured_peaks = [] if fixed_peak else [measured_matmul_tflops(args.peak_matmul_size)]
    times = []
    cpu_start = time.process_time()
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, step_metrics, _ = step(state, batch)
        jax.block_until_ready((state, step_metrics))
        times.append(time.perf_counter() - start)
    cores_busy = (time.process_time() - cpu_start) / sum(times)
    step_s = statistics.median(times)
    if fixed_peak:
        peak_tflops, peak_source = fixed_peak
    else:
        measured_peaks.append(measured_matmul_tflops(args.peak_matmul_size))
        peak_tflops = max(measured_peaks)
        peak_source = (f"measured float32 {args.peak_matmul_size}^2 matmul on {device.platform}, "
                       "best of 5 just before and just after the timed steps, larger of the two")
    length = args.prompt_len + args.response_len
    tokens = args.batch * length
    flops = analytic_flops(config, args.batch, length)
    achieved = flops["total"] / step_s / 1e12
    settings = {
        "preset": args.preset, "batch": args.batch, "prompt_len": args.prompt_len,
        "response_len": args.response_len, "dtype": args.dtype, "param_dtype": args.param_dtype,
        "remat": args.remat, "attention_impl": args.attention_impl,
        "micro_batches": args.micro_batches,
        "logprob_chunk_size": args.logprob_chunk_size,
    }
    return {
        "key": f"{device.platform}:{device.device_kind} x{jax.device_count()} | "
               + settings_key(settings),
        **harness.machine(),
        "settings": settings,
        "num_params": config.num_params,
        "matmul_params": matmul_weight_count(config),
        "compile_s": compile_s,
        "first_step_s": first_call_s,
        "step_s_median": step_s,
        "step_s_all": times,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "model_flops_analytic": flops,
        "model_flops_xla_cost_analysis": compiled_flops,
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "peak_tflops_measured": measured_peaks,
        "process_cpu_s_per_wall_s": cores_busy,
        "mfu": achieved / peak_tflops,
        "mfu_uses": "model_flops_analytic.total",
        "final_loss": float(step_metrics["loss"]),
        "note": args.note,
    }


def print_table(result: dict[str, Any]) -> None:
    s, f = result["settings"], result["model_flops_analytic"]
    xla = result["model_flops_xla_cost_analysis"]
    rows = [
        ("device", f"{result['device']['kind']} x{result['device']['count']}"),
        ("model", f"{s['preset']} ({result['num_params'] / 1e6:.1f}M params, "
                  f"{result['matmul_params'] / 1e6:.1f}M in matmuls), random weights"),
        ("batch", f"{s['batch']} x ({s['prompt_len']} + {s['response_len']}) tokens, "
                  f"{s['micro_batches']} micro-batch(es)"),
        ("numerics", f"compute {s['dtype']}, params {s['param_dtype']}, remat {s['remat']}, "
                     f"attention {s['attention_impl']}"),
        ("compile (lower + compile)", f"{result['compile_s']:.2f} s"),
        ("first step (after compile)", f"{result['first_step_s']:.2f} s"),
        ("step time (median)", f"{result['step_s_median']:.3f} s over "
                               f"{len(result['step_s_all'])} steps"),
        ("process CPU s / wall s", f"{result['process_cpu_s_per_wall_s']:.2f} during the "
                                   f"timed steps (of {os.cpu_count()} cores)"),
        ("tokens/s", f"{result['tokens_per_s']:,.0f}"),
        ("model FLOPs/step (analytic)", f"{f['total']:.3e} (matmul {f['matmul']:.3e}, "
                                        f"attention {f['attention']:.3e})"),
        ("XLA cost_analysis FLOPs", "n/a" if xla is None else
         f"{xla:.3e} ({xla / f['total']:.2f}x analytic; scan bodies counted once)"),
        ("achieved", f"{result['achieved_tflops']:.3f} TFLOP/s"),
        ("peak", f"{result['peak_tflops']:.3f} TFLOP/s ({result['peak_source']})"),
        ("MFU (analytic FLOPs)", f"{100 * result['mfu']:.1f} %"),
    ]
    harness.print_table(["quantity", "value"], rows, align="<<")


def save(result: dict[str, Any], path: pathlib.Path) -> None:
    """Adds ``result`` to the JSON file, replacing an entry with the same device + settings."""
    entries = (harness.read_result(path) or {"entries": []})["entries"]
    entries = [e for e in entries if e["key"] != result["key"]] + [result]
    harness.write_result({"entries": entries}, path)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    save(result, pathlib.Path(args.out))


if __name__ == "__main__":
    main()
