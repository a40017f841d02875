"""Generated tokens/s of `rlvr_jax.sampling.generate` against `transformers`' PyTorch `generate`.

Both run SmolLM2-135M-Instruct with the same weights (ours exported with `models.save_hf` and
loaded by `transformers`), the same left-padded prompt batch, the same number of new tokens
(EOS ignored on both sides, so every row generates exactly `--new-tokens`) and the same
sampling settings, in float32 on this machine's CPU, side by side in one run. Each side is
warmed up once (our compilation is reported separately) and timed `--repeats` times,
alternating, keeping the best; tokens/s = batch × new tokens / wall time.

    python -m benchmarks.generate                          # batch 8 and 32, 128 new tokens
    python -m benchmarks.generate --batches 2 --new-tokens 16 --repeats 1   # a quick check
    python -m benchmarks.generate --threads 1    # one thread each, for a shared/loaded machine
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import torch
import transformers

from benchmarks import harness
from rlvr_jax import models, sampling

PROMPTS = [
    "The capital of France is",
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as "
    "many clips in May. How many clips did Natalia sell altogether in April and May? Answer:",
    "def fibonacci(n):",
    "Write a short poem about the sea.",
    "List three prime numbers greater than 100:",
    "Once upon a time, in a small village at the edge of a forest, there lived",
    "Translate to French: I would like a cup of coffee, please.",
    "2 + 2 =",
]


def prepare_ours(config, params, batch, key, args, strategy):
    """(seconds of the first call, compilation included; a function of a seed that runs it)."""

    def run(seed):
        out = sampling.generate(
            config,
            params,
            jnp.asarray(batch.input_ids),
            jnp.asarray(batch.attention_mask),
            jax.random.fold_in(key, seed),
            max_new_tokens=args.new_tokens,
            strategy=strategy,
            eos_ids=(),
        )
        jax.block_until_ready(out.tokens)
        assert int(out.lengths.min()) == args.new_tokens
        return out

    start = time.perf_counter()
    run(0)
    return time.perf_counter() - start, run


def prepare_torch(reference, batch, args):
    """A function of a seed that runs `transformers` generate, after one warm-up call."""
    kwargs = dict(
        input_ids=torch.from_numpy(batch.input_ids),
        attention_mask=torch.from_numpy(batch.attention_mask),
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=args.temperature > 0,
        pad_token_id=0,
    )
    if args.temperature > 0:
        kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)

    def run(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            out = reference.generate(**kwargs)
        assert out.shape[1] == batch.input_ids.shape[1] + args.new_tokens
        return out

    run(0)
    return run


def seconds(run, seed: int) -> float:
    start = time.perf_counter()
    run(seed)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0, help="0: each library's default")
    parser.add_argument("--out", default=harness.result_path("generate"))
    args = parser.parse_args()
    if args.threads:
        # Read when the XLA backend starts, which is after this point.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_cpu_multi_thread_eigen={'false' if args.threads == 1 else 'true'}"
            + f" intra_op_parallelism_threads={args.threads}"
        )
        torch.set_num_threads(args.threads)

    config, params = models.load("smollm2-135m-instruct")
    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    strategy = sampling.SamplingStrategy(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    with tempfile.TemporaryDirectory() as directory:
        models.save_hf(config, params, directory)
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32
        ).eval()
    reference.generation_config.eos_token_id = None

    rows = []
    for batch_size in args.batches:
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
        batch = tokenizer(texts, return_tensors="np", padding=True)
        compile_s, ours = prepare_ours(config, params, batch, jax.random.key(0), args, strategy)
        theirs = prepare_torch(reference, batch, args)
        ours_s, theirs_s = [], []
        for seed in range(1, args.repeats + 1):  # alternate: both see the same background load
            ours_s.append(seconds(ours, seed))
            theirs_s.append(seconds(theirs, seed))
        generated = batch_size * args.new_tokens
        rows.append(
            {
                "batch": batch_size,
                "prompt_length": int(batch.input_ids.shape[1]),
                "new_tokens": args.new_tokens,
                "ours_compile_s": compile_s,
                "ours_s": min(ours_s),
                "torch_s": min(theirs_s),
                "ours_tokens_per_s": generated / min(ours_s),
                "torch_tokens_per_s": generated / min(theirs_s),
                "ratio": min(theirs_s) / min(ours_s),
            }
        )

    record = harness.machine(torch=torch.__version__, transformers=transformers.__version__)
    print(
        f"SmolLM2-135M float32 on {record['device']['kind']} ({os.cpu_count()} cores), "
        f"load average {record['load_average_at_end'][0]:.1f}; sampling {strategy}; "
        f"best of {args.repeats}"
    )
    harness.print_table(
        ["batch", "prompt", "new", "ours tok/s", "torch tok/s", "ratio", "compile s"],
        [[row["batch"], row["prompt_length"], row["new_tokens"],
          f"{row['ours_tokens_per_s']:.1f}", f"{row['torch_tokens_per_s']:.1f}",
          f"{row['ratio']:.2f}", f"{row['ours_compile_s']:.1f}"] for row in rows],
        align=">" * 7,
    )
    result = {
        "model": "smollm2-135m-instruct (GGUF weights, float32)",
        **record,
        "torch_threads": torch.get_num_threads(),
        "config": vars(args),
        "rows": rows,
    }
    harness.write_result(result, args.out)


if __name__ == "__main__":
    main()
