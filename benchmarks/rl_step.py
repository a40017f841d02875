"""Seconds per step of the main job's RL loop (``rlvr_jax.train.run``) with a random-weight
model, split into generation, verification, scoring and update.

The main job's recipe (``--config``, default ``configs/smollm2_arith.py:grpo``: the
one- and two-digit addition task, 4 prompts x 4 samples, at most 24 new tokens) runs as it
is, except for:

- the model: the ``--preset`` architecture (default Qwen2.5-0.5B) with random weights and its
  vocabulary resized to the ``--tokenizer``'s (SmolLM2's 49,152 tokens by default: a shape
  benchmark needs a real tokenizer, not real weights), written as an HF checkpoint
  (bfloat16 safetensors) to ``<workdir>/model`` and loaded by the job like any checkpoint;
- ``model.dtype`` and ``model.attention_impl`` from the flags (the trained parameters stay
  float32, the job's rule);
- ``total_steps = --steps``; evaluation only after the last step, on one batch of the
  rollout's shape (``eval.num_prompts`` = prompts per step, ``eval.samples_per_prompt`` =
  group size); no TensorBoard;
- ``--set key=value`` changes any other key (e.g. ``--set rollout.max_new_tokens=256``).

Random weights rarely sample EOS, so every response runs to ``rollout.max_new_tokens``.

Each step's ``time/*`` scalars come from the run's ``metrics.jsonl``: ``generation_seconds``
(sampling), ``verification_seconds`` (rewards), ``scoring_seconds`` (old / reference
log-probs), ``update_seconds`` (the batch's transfer and the compiled train step) and
``step_seconds`` (the whole step). The first step includes compilation: the summary gives it
apart, and the median of each scalar over the later steps. The job's final checkpoint save
and evaluation come after the last step and are in ``run_s`` only.

    python -m benchmarks.rl_step --tokenizer .gpu_assets/smollm2-tokenizer    # a GPU
    python -m benchmarks.rl_step --preset tiny --dtype float32 --attention-impl xla \\
        --tokenizer <dir> --steps 2 --workdir /tmp/rl_step --out /tmp/rl_step.json  # a CPU
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import pathlib
import shutil
import time
import traceback
from collections.abc import Sequence
from typing import Any

import jax

from benchmarks import harness
from benchmarks.shapes import NAMES, model_config
from benchmarks.step_metrics import read_steps, summarize
from rlvr_jax import models, train
from rlvr_jax.models.config import ATTENTION_IMPLS

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "configs/smollm2_arith.py:grpo"


def load_recipe(spec: str) -> Any:
    """The config of ``path.py[:variant]`` (relative to the repository root if not found)."""
    path, _, variant = spec.partition(":")
    if not os.path.isfile(path) and (ROOT / path).is_file():
        path = str(ROOT / path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {spec}: no recipe file {path}")
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> (key, value as a Python literal, else the string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected key=value")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def job_config(args: argparse.Namespace, model_dir: str) -> Any:
    """The recipe with this benchmark's changes (see the module docstring)."""
    config = load_recipe(args.config)
    config.model.name = model_dir
    config.model.tokenizer = args.tokenizer
    config.model.dtype = args.dtype
    config.model.attention_impl = args.attention_impl
    config.total_steps = args.steps
    config.eval.at_start = False
    config.eval.every_steps = 0
    config.eval.num_prompts = config.rollout.prompts_per_step
    config.eval.samples_per_prompt = config.rollout.group_size
    config.eval.samples_per_prompt_at_ends = None
    config.checkpoint.save_every_steps = 0  # the job still saves after its last step
    config.logging.tensorboard = False
    config.update_from_flattened_dict(dict(args.set))
    return config


def write_random_checkpoint(args: argparse.Namespace, tokenizer: Any, directory: str) -> Any:
    """A ``--preset``-shaped model with random weights and the tokenizer's vocabulary, saved as
    an HF checkpoint; returns its config."""
    eos = tokenizer.eos_token_id
    config = model_config(args.preset, "bfloat16").replace(
        vocab_size=len(tokenizer), eos_token_ids=() if eos is None else (eos,),
        bos_token_id=tokenizer.bos_token_id,
    )
    params = models.init_params(config, jax.random.key(0))
    models.save_hf(config, params, directory)
    del params
    return config


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="recipe path[:variant]")
    parser.add_argument("--preset", default="qwen2.5-0.5b", choices=NAMES)
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct",
                        help="models.load_tokenizer argument (a preset, directory or file)")
    parser.add_argument("--dtype", default="bfloat16", help="model.dtype (compute)")
    parser.add_argument("--attention-impl", default="einsum", choices=ATTENTION_IMPLS)
    parser.add_argument("--steps", type=int, default=3, help="training steps (first compiles)")
    parser.add_argument("--set", type=parse_assignment, action="append", default=[],
                        metavar="KEY=VALUE", help="another config change (repeatable)")
    parser.add_argument("--workdir", default=None,
                        help="run directory (default: a fresh folder under /tmp)")
    parser.add_argument("--out", default=harness.result_path("rl_step"))
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or f"/tmp/rl_step_{os.getpid()}"
    if os.path.exists(workdir):
        shutil.rmtree(workdir)  # a fresh run, never a resumed one
    model_dir = os.path.join(workdir, "model")
    tokenizer = models.load_tokenizer(args.tokenizer)
    start = time.perf_counter()
    model = write_random_checkpoint(args, tokenizer, model_dir)
    checkpoint_s = time.perf_counter() - start
    config = job_config(args, model_dir)
    run_dir = os.path.join(workdir, "run")
    error = None
    start = time.perf_counter()
    try:
        train.run(config, run_dir)
    except Exception:  # the steps logged before it still count; the error is reported
        error = traceback.format_exc(limit=8)
        print(error, flush=True)
    run_s = time.perf_counter() - start
    steps = read_steps(run_dir)
    return {
        **harness.machine(),
        "settings": {"config": args.config, "preset": args.preset, "tokenizer": args.tokenizer,
                     "dtype": args.dtype, "attention_impl": args.attention_impl,
                     "steps": args.steps, "set": dict(args.set)},
        "model": {"num_params": model.num_params, "vocab_size": model.vocab_size},
        "job": {"prompts_per_step": config.rollout.prompts_per_step,
                "group_size": config.rollout.group_size,
                "max_new_tokens": config.rollout.max_new_tokens,
                "estimator": config.advantage.estimator},
        "random_checkpoint_write_s": checkpoint_s,
        "run_s": run_s,
        "error": error,
        "steps": steps,
        **summarize(steps),
    }


def print_table(result: dict[str, Any]) -> None:
    s, job = result["settings"], result["job"]
    print(f"RL step of rlvr_jax.train.run ({s['config']}) on {result['device']['kind']}: "
          f"{s['preset']}-shaped random weights ({result['model']['num_params'] / 1e6:.0f}M "
          f"params, vocab {result['model']['vocab_size']}), compute {s['dtype']}, attention "
          f"{s['attention_impl']}; {job['prompts_per_step']} prompts x {job['group_size']} "
          f"samples, {job['max_new_tokens']} new tokens")
    first, later = result["first_step"], result["median_after_first"]
    keys = sorted({*(first or {}), *(later or {})} - {"step", "train/tokens"})
    harness.print_table(
        ["scalar", "first step", "median of later"],
        [[key, "-" if first is None else f"{first.get(key, 0.0):.3f}",
          "-" if later is None else f"{later[key]:.3f}"] for key in keys])
    if result["error"]:
        print(f"the job failed after {result['steps_logged']} logged step(s):\n"
              f"{result['error']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    harness.write_result(result, args.out)
    if result["error"] or result["steps_logged"] < args.steps:
        raise SystemExit(f"rl_step: {result['steps_logged']} of {args.steps} steps logged"
                         + (" (the job raised; see 'error' in the JSON)" if result["error"]
                            else ""))
    return result


if __name__ == "__main__":
    main()
