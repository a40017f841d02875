"""Time per decode step of `rlvr_jax.sampling.generate` against the memory-bandwidth roofline.

Meant for a GPU (H100 / H200): Qwen2.5-0.5B- and 1.5B-shaped models with random weights,
parameters and compute in ``--dtype`` (bfloat16 by default), one prompt of ``--prompt-len``
real random tokens per row, batches ``--batches``, EOS ignored (``eos_ids=()``) so every row
decodes exactly ``--new-tokens`` tokens, sampling at temperature 1 without truncation
(``--strategy sample``, what RL rollouts use) or greedy (``--strategy greedy``). It also runs
on CPU with a small configuration (``--presets tiny``) as a smoke check. ``--attention-impl``
sets ``ModelConfig.attention_impl``, which changes the prefill only (decode steps always run
the einsum attention), so it leaves the step time as measured here unchanged.

**Time per decode step.** ``generate`` prefills the prompt and samples the first token, then
runs one decode step per further token. A call with ``n = --new-tokens`` and one with 1 new
token share every shape (the decode buffer is bucketed to ``n`` via ``length_bucket=n``, the
prompt to ``prompt_bucket=--prompt-len``), so they run the same compiled program, which does
``n - 1`` decode steps in the first case and none in the second:

    step time = (t(n new tokens) - t(1 new token)) / (n - 1)

Both calls are warmed up (compiled) first; each time is the best of ``--repeats``.

**Bytes read per decode step** (the roofline model), for batch ``B``, ``L`` layers, ``K``
key/value heads of size ``Dh``, hidden size ``D``, vocabulary ``V``:

    params = b_p · (L · layer_params + D + V · D + B · D)
    kv     = 2 · L · B · K · S_avg · Dh · b_c,    S_avg = P + n / 2
    bytes  = params + kv

``layer_params`` counts every weight of a layer (attention and MLP projections, biases, norm
scales), ``D`` the final norm, ``V · D`` the unembedding (the embedding matrix when tied) and
``B · D`` the embedding rows the step looks up; ``b_p`` and ``b_c`` are the bytes of one
parameter and one activation (the cache's dtype is the compute dtype). Decode step ``s``
(``s = 1 .. n - 1``) attends over ``P + s`` cached positions, so ``S_avg = P + n / 2`` is the
mean cache length. This is what an ideal kernel must read. The model's attention reads every
slot of its ``P + n`` slot buffer (``length_bucket=n``), masked, on every step:
``kv_full_buffer_bytes`` in the JSON is that figure, for telling kernel inefficiency from the
reads the implementation makes by design. Writes (one new key and value per layer and row),
the sampler's passes over the ``[B, V]`` float32 logits (``logits_bytes_per_pass`` in the
JSON) and activations are not in the model.

**Rooflines.** Memory: ``bytes / bandwidth``, with the bandwidth measured on the device (the
larger of a timed reduction and a timed copy of a ``--bandwidth-mib`` array, best of 5;
``--bandwidth-gbs`` overrides it; the data-sheet figure is printed beside it). Compute:

    flops = 2 · N_matmul · B + 4 · B · L · H · Dh · S_avg

over the dense bf16 data-sheet peak (``--peak-tflops`` overrides; none on CPU), where
``N_matmul`` counts the weights in matmuls (projections and unembedding) and the second term
is QKᵀ and PV over the average cache. Small batches are bound by memory, large ones become
bound by compute, so each row reports both roofline times, which one is larger ("bound"),
the fraction of the bandwidth roofline reached (``bytes / step time / bandwidth``) and the
fraction of the larger roofline reached. Target: >= 70% of the bandwidth roofline at batch 64
on H100 / H200.

**Memory.** Before each batch, a rough upper estimate of what the call allocates beyond the
resident parameters (per-layer weight copies, the KV cache three times, the prefill's
attention and MLP activations, the sampler's logits) is compared with the device's free
memory (``memory_stats``, when the backend reports it); a batch that would not fit, or that
fails with an out-of-memory error, is a skipped row with the reason.

**Output.** A table, and JSON at ``--out`` (default on a GPU:
``benchmarks/results/decode_roofline.json``; elsewhere only when ``--out`` is given). Rows
already in that file from the same device kind and measurement settings are kept unless
re-measured, so runs of one preset each fill one table. The file is rewritten after every
row, so a run stopped part-way (a time limit) keeps the rows it measured.

    python -m benchmarks.decode_roofline                       # a GPU: both presets, B 1..256
    python -m benchmarks.decode_roofline --presets qwen2.5-0.5b --batches 64 --repeats 5
    python -m benchmarks.decode_roofline --presets tiny --batches 1 2 --prompt-len 16 \\
        --new-tokens 64 --repeats 2 --dtype float32 --out /tmp/decode_roofline.json  # CPU
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.shapes import NAMES, model_config
from rlvr_jax import models, sampling
from rlvr_jax.models.config import ATTENTION_IMPLS

TARGET_FRACTION = 0.7
TARGET_BATCH = 64
DEFAULT_PRESETS = ("qwen2.5-0.5b", "qwen2.5-1.5b")

def matmul_weight_count(config: models.ModelConfig) -> int:
    """Weights that take part in a token's matmuls: every layer's projections + unembedding."""
    D, F, H, K, Dh = (config.hidden_size, config.mlp_dim, config.num_heads, config.num_kv_heads,
                      config.head_dim)
    per_layer = D * H * Dh * 2 + D * K * Dh * 2 + 3 * D * F  # q, o, k, v; gate, up, down
    return config.num_layers * per_layer + config.vocab_size * D


def average_cache_length(prompt_len: int, new_tokens: int) -> float:
    """Mean cached positions attended over by decode steps ``s = 1 .. n - 1`` (``P + s``)."""
    return prompt_len + new_tokens / 2


def kv_bytes(config: models.ModelConfig, batch: int, cache_length: float) -> float:
    """``2 · L · B · K · S · Dh · b_c``: keys and values of ``cache_length`` positions."""
    return (2.0 * config.num_layers * batch * config.num_kv_heads * cache_length
            * config.head_dim * jnp.dtype(config.dtype).itemsize)


def decode_bytes_per_step(config: models.ModelConfig, batch: int, prompt_len: int,
                          new_tokens: int) -> dict[str, float]:
    """Bytes one decode step reads in the roofline model: parameters + KV cache at ``S_avg``."""
    D = config.hidden_size
    param_count = (config.num_layers * config.params_per_layer + D
                   + config.vocab_size * D + batch * D)
    params = float(param_count * jnp.dtype(config.param_dtype).itemsize)
    kv = kv_bytes(config, batch, average_cache_length(prompt_len, new_tokens))
    return {"params": params, "kv": kv, "total": params + kv}


def decode_flops_per_step(config: models.ModelConfig, batch: int, prompt_len: int,
                          new_tokens: int) -> float:
    """``2 · N_matmul · B + 4 · B · L · H · Dh · S_avg``: matmuls + attention of one step."""
    cache_length = average_cache_length(prompt_len, new_tokens)
    attention = 4.0 * batch * config.num_layers * config.num_heads * config.head_dim * cache_length
    return 2.0 * matmul_weight_count(config) * batch + attention


def roofline_fraction(bytes_per_step: float, step_s: float, bandwidth_gbs: float) -> float:
    """Achieved over available bandwidth: ``(bytes / bandwidth) / step time``."""
    if step_s <= 0 or bandwidth_gbs <= 0:
        raise ValueError(f"step time and bandwidth must be positive, got {step_s}, "
                         f"{bandwidth_gbs}")
    return bytes_per_step / (bandwidth_gbs * 1e9) / step_s


def estimate_generate_bytes(config: models.ModelConfig, batch: int, prompt_len: int,
                            buffer_length: int) -> float:
    """Rough upper estimate of what one ``generate`` call allocates beyond the parameters.

    Per-layer weight copies (``unstack_layers``), the unembedding cast if the dtypes differ,
    the ``[L, B, K, P + buffer, Dh]`` key and value caches three times (prefill output,
    per-layer copies, loop carry), the prefill's float32 attention scores and probabilities,
    MLP activations and residuals of one layer, eight ``[B, V]`` float32 sampler arrays and
    the six ``[B, buffer]`` output buffers.
    """
    c, p = jnp.dtype(config.dtype).itemsize, jnp.dtype(config.param_dtype).itemsize
    D, V = config.hidden_size, config.vocab_size
    slots = prompt_len + buffer_length
    layer_copies = config.num_layers * config.params_per_layer * p
    unembedding_cast = 0 if c == p else V * D * c
    caches = 3 * kv_bytes(config, batch, slots)
    prefill = batch * prompt_len * (2 * config.num_heads * slots * 4 + 3 * config.mlp_dim * c
                                    + 4 * D * 4)
    sampler = 8 * batch * V * 4
    outputs = 6 * batch * buffer_length * 4
    return float(layer_copies + unembedding_cast + caches + prefill + sampler + outputs)


def free_device_bytes(device: jax.Device) -> float | None:
    """``bytes_limit - bytes_in_use`` from the device's memory stats; None if not reported."""
    stats = device.memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0))


def _best_seconds(fn: Any, x: jax.Array, repeats: int) -> float:
    jax.block_until_ready(fn(x))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth_gbs(mib: int, repeats: int = 5) -> dict[str, float]:
    """Streaming bandwidth of the default device, GB/s, best of ``repeats``.

    ``read``: a float32 sum of a ``mib`` MiB array (reads it once); ``copy``: ``x + 1`` on it
    (reads and writes it once, 2 × its bytes).
    """
    x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    size = x.size * 4
    read_s = _best_seconds(jax.jit(jnp.sum), x, repeats)
    copy_s = _best_seconds(jax.jit(lambda a: a + 1.0), x, repeats)
    return {"read": size / read_s / 1e9, "copy": 2 * size / copy_s / 1e9}


def _strategy(name: str) -> sampling.SamplingStrategy:
    return sampling.greedy() if name == "greedy" else sampling.temperature(1.0)


def time_decode_step(config: models.ModelConfig, params: Any, batch: int,
                     args: argparse.Namespace) -> dict[str, float]:
    """Seconds per decode step, ``(t(n) - t(1)) / (n - 1)``, plus the two times behind it."""
    rng = np.random.default_rng(batch)
    prompts = jnp.asarray(rng.integers(0, config.vocab_size, (batch, args.prompt_len)), jnp.int32)
    mask = jnp.ones((batch, args.prompt_len), bool)
    strategy = _strategy(args.strategy)

    def call(new_tokens: int) -> float:
        start = time.perf_counter()
        out = sampling.generate(
            config, params, prompts, mask, jax.random.key(0), max_new_tokens=new_tokens,
            strategy=strategy, eos_ids=(), prompt_bucket=args.prompt_len,
            length_bucket=args.new_tokens,
        )
        jax.block_until_ready(out.tokens)
        seconds = time.perf_counter() - start
        if int(out.lengths.min()) != new_tokens:
            raise RuntimeError(f"a row stopped before {new_tokens} tokens with EOS ignored")
        return seconds

    first_s = call(args.new_tokens)  # compiles; the 1-token call reuses the program
    call(1)
    full_s, one_token_s = math.inf, math.inf
    for _ in range(args.repeats):
        full_s = min(full_s, call(args.new_tokens))
        one_token_s = min(one_token_s, call(1))
    return {
        "first_call_s": first_s,
        "full_s": full_s,
        "one_token_s": one_token_s,
        "step_s": (full_s - one_token_s) / (args.new_tokens - 1),
    }


def _is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure_row(preset: str, config: models.ModelConfig, params: Any, batch: int,
                args: argparse.Namespace, bandwidth_gbs: float,
                peak_tflops: float | None) -> dict[str, Any]:
    """One table row: timings and rooflines, or ``skipped`` with the reason."""
    row: dict[str, Any] = {"preset": preset, "batch": batch}
    slots = args.prompt_len + args.new_tokens  # length_bucket = n: a buffer of n steps
    estimate = estimate_generate_bytes(config, batch, args.prompt_len, args.new_tokens)
    free = free_device_bytes(jax.devices()[0])
    row.update(estimated_call_bytes=estimate, free_device_bytes=free)
    if free is not None and estimate > free:
        row["skipped"] = (f"needs ~{estimate / 2**30:.1f} GiB beyond the parameters, "
                          f"{free / 2**30:.1f} GiB free")
        return row
    try:
        times = time_decode_step(config, params, batch, args)
    except jax.errors.JaxRuntimeError as error:
        if not _is_out_of_memory(error):
            raise
        row["skipped"] = f"out of memory: {str(error).splitlines()[0][:120]}"
        return row
    step_s = times["step_s"]
    if step_s <= 0:
        row.update(times, skipped="t(n) <= t(1): noise swamps the decode steps; raise "
                                  "--new-tokens or --repeats")
        return row
    traffic = decode_bytes_per_step(config, batch, args.prompt_len, args.new_tokens)
    flops = decode_flops_per_step(config, batch, args.prompt_len, args.new_tokens)
    memory_s = traffic["total"] / (bandwidth_gbs * 1e9)
    compute_s = None if peak_tflops is None else flops / (peak_tflops * 1e12)
    row.update(
        times,
        tokens_per_s=batch / step_s,
        bytes_per_step=traffic,
        kv_full_buffer_bytes=kv_bytes(config, batch, slots),
        logits_bytes_per_pass=float(batch * config.vocab_size * 4),
        achieved_gbs=traffic["total"] / step_s / 1e9,
        bandwidth_fraction=roofline_fraction(traffic["total"], step_s, bandwidth_gbs),
        flops_per_step=flops,
        memory_roofline_s=memory_s,
        compute_roofline_s=compute_s,
        bound=None if compute_s is None else ("compute" if compute_s > memory_s else "memory"),
        roofline_fraction=max(memory_s, compute_s or 0.0) / step_s,
    )
    return row


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS),
                        help="model presets (or 'tiny', a two-layer model for smoke runs)")
    parser.add_argument("--batches", type=int, nargs="+", default=[2**i for i in range(9)])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--strategy", choices=["sample", "greedy"], default="sample",
                        help="sample: temperature 1, no truncation; greedy: argmax")
    parser.add_argument("--dtype", default="bfloat16", help="parameter and compute dtype")
    parser.add_argument("--attention-impl", default="einsum", choices=ATTENTION_IMPLS,
                        help="ModelConfig.attention_impl (the prefill's attention)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per length (best)")
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="memory bandwidth for the roofline (default: measured)")
    parser.add_argument("--bandwidth-mib", type=int, default=None,
                        help="array size for the bandwidth measurement (default: 2048 on a "
                             "GPU, 256 otherwise)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="compute peak for the roofline (default: GPU data-sheet table)")
    parser.add_argument("--note", default="", help="free text stored with the result")
    parser.add_argument("--out", default=None,
                        help="JSON path (default on a GPU: "
                             "benchmarks/results/decode_roofline.json; elsewhere none)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.presets if name not in NAMES]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; known: {list(NAMES)}")
    try:
        jnp.dtype(args.dtype)
    except TypeError:
        parser.error(f"--dtype {args.dtype!r} is not a dtype name (e.g. bfloat16, float32)")
    if min(args.batches) < 1 or args.prompt_len < 1 or args.repeats < 1:
        parser.error("--batches, --prompt-len and --repeats must be at least 1")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the step time needs n - 1 > 0 steps)")
    for name in ("bandwidth_gbs", "peak_tflops", "bandwidth_mib"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    settings, bandwidth, peak = result["settings"], result["bandwidth_gbs"], result["peak_tflops"]
    print(f"decode step of rlvr_jax.sampling.generate on {result['device']['kind']}; "
          f"{settings['dtype']} params + compute, prompt {settings['prompt_len']}, "
          f"{settings['new_tokens']} new tokens (EOS ignored), {result['strategy']}, "
          f"best of {settings['repeats']}")
    print(f"bandwidth: measured {bandwidth['measured']['read']:.0f} GB/s read, "
          f"{bandwidth['measured']['copy']:.0f} GB/s copy; data sheet "
          f"{_fmt(bandwidth['data_sheet'], '.0f')} GB/s; roofline uses "
          f"{bandwidth['used']:.0f} GB/s ({bandwidth['source']})")
    print(f"compute peak: {_fmt(peak['used'], '.0f')} TFLOP/s ({peak['source']})")
    print(f"target: >= {TARGET_FRACTION:.0%} of the bandwidth roofline at batch "
          f"{TARGET_BATCH} on H100/H200 (%BW column)")
    header = ["preset", "batch", "step ms", "tok/s", "MB/step", "GB/s", "%BW", "mem ms",
              "flop ms", "bound", "%roof"]
    measured = [row for row in result["rows"] if "skipped" not in row]
    harness.print_table(header, [
        [row["preset"], row["batch"], f"{1e3 * row['step_s']:.3f}",
         f"{row['tokens_per_s']:.0f}", f"{row['bytes_per_step']['total'] / 1e6:.1f}",
         f"{row['achieved_gbs']:.0f}", f"{100 * row['bandwidth_fraction']:.0f}",
         f"{1e3 * row['memory_roofline_s']:.3f}",
         _fmt(None if row["compute_roofline_s"] is None else 1e3 * row["compute_roofline_s"],
              ".3f"),
         row["bound"] or "-", f"{100 * row['roofline_fraction']:.0f}"]
        for row in measured
    ])
    for row in result["rows"]:
        if "skipped" in row:
            print(f"{row['preset']} batch {row['batch']} skipped: {row['skipped']}")


def run(args: argparse.Namespace,
        on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every row of ``args``; ``on_row`` gets the result so far after each one."""
    device = jax.devices()[0]
    sheet = harness.data_sheet(device.device_kind) if device.platform == "gpu" else None
    mib = args.bandwidth_mib or (2048 if device.platform == "gpu" else 256)
    measured = measure_bandwidth_gbs(mib)
    if args.bandwidth_gbs is not None:
        used_bandwidth, source = args.bandwidth_gbs, "--bandwidth-gbs"
    else:
        used_bandwidth = max(measured.values())
        source = f"measured, larger of read and copy of {mib} MiB"
    if args.peak_tflops is not None:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    elif sheet is not None:
        peak, peak_source = sheet.bf16_tflops, f"bf16 dense data-sheet peak of {device.device_kind}"
    else:
        peak, peak_source = None, "none for this device: pass --peak-tflops"

    def result(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            **harness.machine(flax=flax.__version__),
            "settings": vars(args),
            "strategy": ("greedy" if args.strategy == "greedy"
                         else "sampling at temperature 1, no truncation"),
            "bandwidth_gbs": {"measured": measured, "measured_mib": mib,
                              "data_sheet": None if sheet is None else sheet.bandwidth_gbs,
                              "used": used_bandwidth, "source": source},
            "peak_tflops": {"used": peak, "source": peak_source},
            "target": f">= {TARGET_FRACTION:.0%} of the bandwidth roofline at batch {TARGET_BATCH} "
                      "on H100/H200",
            "bytes_model": "b_p (L layer_params + D + V D + B D) + 2 L B K (P + n/2) Dh b_c",
            "flops_model": "2 N_matmul B + 4 B L H Dh (P + n/2)",
            "rows": rows,
        }

    rows: list[dict[str, Any]] = []
    for preset in args.presets:
        config = model_config(preset, args.dtype, attention_impl=args.attention_impl)
        params = models.init_params(config, jax.random.key(0))
        for batch in args.batches:
            rows.append(measure_row(preset, config, params, batch, args, used_bandwidth, peak))
            print(f"  {preset} batch {batch}: "
                  + (f"skipped ({rows[-1]['skipped']})" if "skipped" in rows[-1]
                     else f"{1e3 * rows[-1]['step_s']:.3f} ms/step"), flush=True)
            if on_row is not None:
                on_row(result(rows))
        del params
        gc.collect()
    return result(rows)


MEASUREMENT_SETTINGS = ("prompt_len", "new_tokens", "strategy", "dtype", "repeats",
                        "bandwidth_gbs", "peak_tflops", "attention_impl")


def merge_rows(previous: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` plus the rows of ``previous`` for (preset, batch) pairs it did not measure.

    Only when ``previous`` comes from the same device kind and measurement settings (prompt
    length, new tokens, strategy, dtype, repeats, overrides), so that one table can be filled
    by several shorter runs (e.g. one preset each); otherwise ``result`` alone.
    """
    if previous is None or previous.get("device", {}).get("kind") != result["device"]["kind"]:
        return result
    if any(previous.get("settings", {}).get(name) != result["settings"][name]
           for name in MEASUREMENT_SETTINGS):
        return result
    measured = {(row["preset"], row["batch"]) for row in result["rows"]}
    kept = [row for row in previous.get("rows", [])
            if (row["preset"], row["batch"]) not in measured]
    rows = sorted(kept + result["rows"], key=lambda row: (row["preset"], row["batch"]))
    return {**result, "rows": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out or (harness.result_path("decode_roofline")
                       if jax.devices()[0].platform == "gpu" else None)
    previous = None if out is None else harness.read_result(out)

    def save(result: dict[str, Any]) -> None:
        if out is not None:
            harness.write_result(merge_rows(previous, result), out)

    result = run(args, on_row=save)
    print_table(result)
    if out is None:
        print("not written: not a GPU run and no --out given")
    return result


if __name__ == "__main__":
    main()
