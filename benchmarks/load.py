"""Checkpoint load time and peak host memory of `rlvr_jax.models.load`.

Cases (each measured in a fresh subprocess, so the peak belongs to that load alone):
  smollm2-gguf        the embedded SmolLM2-135M-Instruct GGUF (Q4_1/Q8_0, dequantised)
  smollm2-gguf-hf     the same file through transformers' own GGUF loader, for reference
  qwen2.5-1.5b-hf     a random Qwen2.5-1.5B-shaped HF safetensors checkpoint (bfloat16,
                      sharded with an index) written locally by `save_hf`

Peak host memory is `ru_maxrss` minus the resident size just before loading (after imports).
On a CPU backend the loaded parameters themselves live in host memory, so the ideal peak is
about the parameter bytes plus one stacked layer leaf; file pages touched through the
memory map count as resident too.

    python -m benchmarks.load [--work-dir DIR] [--cases smollm2-gguf,qwen2.5-1.5b-hf]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks import harness

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("smollm2-gguf", "smollm2-gguf-hf", "qwen2.5-1.5b-hf")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _measure(case: str, work_dir: str) -> dict:
    """Runs inside the subprocess: one load, its time and memory."""
    import resource
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlvr_jax import models
    from rlvr_jax.models.embedded import smollm2_gguf_path

    gguf_path = smollm2_gguf_path()
    jnp.zeros(1).block_until_ready()
    before = _rss_mib()
    start = time.perf_counter()
    if case == "smollm2-gguf":
        _, params = models.load(gguf_path)
        param_bytes = sum(x.nbytes for x in jax.tree.leaves(jax.block_until_ready(params)))
    elif case == "smollm2-gguf-hf":
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
            dtype=torch.float32)
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    elif case == "qwen2.5-1.5b-hf":
        _, params = models.load(os.path.join(work_dir, "qwen2.5-1.5b"),
                                dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
        param_bytes = sum(x.nbytes for x in jax.tree.leaves(jax.block_until_ready(params)))
    else:
        raise ValueError(f"unknown case {case!r}; cases: {CASES}")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "load_s": round(seconds, 2), "param_mib": round(param_bytes / 2**20),
            "peak_rss_increase_mib": round(peak - before), "rss_before_mib": round(before),
            "backend": jax.default_backend(), "numpy": np.__version__}


def _write_random_qwen(work_dir: str) -> str:
    import jax
    import jax.numpy as jnp

    from rlvr_jax import models

    directory = os.path.join(work_dir, "qwen2.5-1.5b")
    if os.path.isfile(os.path.join(directory, "config.json")):
        return directory
    config = models.PRESETS["qwen2.5-1.5b"].replace(dtype=jnp.bfloat16,
                                                   param_dtype=jnp.bfloat16)
    params = models.init_params(config, jax.random.key(0))
    models.save_hf(config, params, directory, max_shard_bytes=1 << 30)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=None, help="where the random checkpoint goes")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work_dir = args.work_dir or os.path.join(tempfile.gettempdir(), "rlvr_jax_load_bench")
    if args.measure:
        print(json.dumps(_measure(args.measure, work_dir)))
        return
    cases = args.cases.split(",")
    if "qwen2.5-1.5b-hf" in cases:
        subprocess.run([sys.executable, "-c", "import sys; from benchmarks import load; "
                        "load._write_random_qwen(sys.argv[1])", work_dir], check=True,
                       cwd=REPO_ROOT)
    rows = []
    for case in cases:
        out = subprocess.run([sys.executable, "-m", "benchmarks.load", "--measure", case,
                              "--work-dir", work_dir], check=True, capture_output=True, text=True,
                             cwd=REPO_ROOT)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    harness.print_table(["case", "load s", "params MiB", "peak RSS +MiB"], [
        [r["case"], f"{r['load_s']:.2f}", r["param_mib"], r["peak_rss_increase_mib"]]
        for r in rows
    ])
    harness.write_result({"cpu_count": os.cpu_count(), "results": rows},
                         harness.result_path("load"))


if __name__ == "__main__":
    main()
