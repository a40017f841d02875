"""Peak memory of chunked token log-probs + entropies against the naive full-logits version.

The figures come from XLA's compiled memory analysis
(``jax.jit(f).lower(...).compile().memory_analysis()``), so the script runs on a CPU without
allocating the tens of gigabytes the naive version would need. "temp" is the scratch memory
XLA plans for the computation (where the ``[B, T, V]`` logits live); arguments (hidden states,
unembedding) and outputs are listed separately because both versions share them.

    python -m benchmarks.logprobs                       # vocab 151,936, length 4,096, batch 8
    python -m benchmarks.logprobs --length 512 --vocab 32000   # a quick check
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from benchmarks import harness
from rlvr_jax.logprobs import chunked_logprobs_and_entropy

GIB = 2**30


def naive_logprobs_and_entropy(hidden, unembedding, targets):
    logits = jnp.einsum("btd,dv->btv", hidden, unembedding, preferred_element_type=jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, T, V]
    chosen = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return chosen, -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def memory(fn, *args) -> dict[str, float]:
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    return {
        "temp_gib": analysis.temp_size_in_bytes / GIB,
        "argument_gib": analysis.argument_size_in_bytes / GIB,
        "output_gib": analysis.output_size_in_bytes / GIB,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=896, help="Qwen2.5-0.5B's width")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", help="hidden states and unembedding")
    parser.add_argument("--out", default=harness.result_path("logprobs"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)

    dtype = jnp.dtype(args.dtype)
    hidden = jax.ShapeDtypeStruct((args.batch, args.length, args.hidden), dtype)
    unembedding = jax.ShapeDtypeStruct((args.hidden, args.vocab), dtype)
    targets = jax.ShapeDtypeStruct((args.batch, args.length), jnp.int32)

    def chunked(h, w, y):
        return chunked_logprobs_and_entropy(h, w, y, chunk_size=args.chunk_size)

    def loss(fn):
        return lambda h, w, y: sum(jnp.sum(x) for x in fn(h, w, y))

    def grad(fn):
        return jax.grad(loss(fn), argnums=(0, 1))

    rows = []
    for mode, naive_fn, chunked_fn in [
        ("forward", naive_logprobs_and_entropy, chunked),
        ("forward+backward", grad(naive_logprobs_and_entropy), grad(chunked)),
    ]:
        naive = memory(naive_fn, hidden, unembedding, targets)
        ours = memory(chunked_fn, hidden, unembedding, targets)
        rows.append(
            {
                "mode": mode,
                "naive": naive,
                "chunked": ours,
                "temp_ratio": ours["temp_gib"] / naive["temp_gib"],
            }
        )

    logits_gib = args.batch * args.length * args.vocab * 4 / GIB
    print(f"device: {jax.devices()[0].platform} (compiled memory analysis; nothing allocated)")
    print(
        f"B={args.batch} T={args.length} V={args.vocab} D={args.hidden} dtype={args.dtype} "
        f"chunk={args.chunk_size}; full f32 logits would be {logits_gib:.2f} GiB"
    )
    harness.print_table(
        ["mode", "naive temp GiB", "chunked temp GiB", "ratio", "args GiB"],
        [[row["mode"], f"{row['naive']['temp_gib']:.3f}", f"{row['chunked']['temp_gib']:.3f}",
          f"{row['temp_ratio']:.3f}", f"{row['chunked']['argument_gib']:.3f}"] for row in rows],
    )
    result = {
        "method": "XLA compiled memory_analysis (temp_size_in_bytes), no allocation",
        **harness.machine(),
        "config": vars(args),
        "full_logits_gib": logits_gib,
        "rows": rows,
    }
    harness.write_result(result, args.out)


if __name__ == "__main__":
    main()
