"""Peak host memory of the main job, phase by phase: the main process and its children apart.

Runs ``rlvr_jax.train.run`` itself (the README's main job, ``configs/smollm2_arith.py:grpo``,
shortened to ``--steps`` steps with no evaluation and no intermediate checkpoint) and marks the
end of each phase: imports, weights loaded, tokenizer loaded, train state created, then per
step generation + verification (``rollout.sample_groups``), scoring (the KL reference's
log-prob pass, only with a KL term) and the update (``train_step``, which scores the rollout
policy itself), and last the final checkpoint and evaluation (one
batch). For every phase it records the main process's peak
resident set size during the phase (``VmHWM``, reset at each phase start through
``/proc/self/clear_refs``) and its resident size at the end, and the peak summed resident and
proportional set sizes (RSS, PSS) of its child processes (the verifier pool), sampled every
0.2 s. Step 1 includes every compilation; "steady" is the maximum over the later steps.

Beside the measured phases it prints the accounting: the bytes of the parameters, the AdamW
state, decode's per-layer parameter copies, and XLA's compiled memory analysis (arguments,
outputs, temporaries) of the train step (and of the reference's scoring pass, with a KL term),
compiled again after the run from the same shapes (``--no-xla-analysis`` skips that).

    python -m benchmarks.host_memory                  # 3 steps, about 5 min on 2 idle cores
    python -m benchmarks.host_memory --steps 2 --no-xla-analysis --out /tmp/host_memory.json
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import threading
import time
from typing import Any

PHASE_IMPORTS = "imports"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def _reset_peak() -> None:
    """Sets VmHWM back to the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class PhaseMeter:
    """Peak memory per phase: ``mark(name)`` closes the phase that ends now."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._children_peak = (0, 0)  # (rss, pss) bytes, summed over children
        self.rows: list[dict[str, Any]] = []
        self._began = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_children, args=(interval_s,),
                                        daemon=True)
        self._thread.start()

    def _sample_children(self, interval_s: float) -> None:
        import psutil

        while not self._stop.wait(interval_s):
            rss = pss = 0
            for child in self._process.children(recursive=True):
                try:
                    info = child.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, pss = rss + info.rss, pss + info.pss
            with self._lock:
                self._children_peak = tuple(map(max, self._children_peak, (rss, pss)))

    def mark(self, phase: str) -> None:
        with self._lock:
            children_rss, children_pss = self._children_peak
            self._children_peak = (0, 0)
        now = time.perf_counter()
        self.rows.append({
            "phase": phase,
            "seconds": round(now - self._began, 1),
            "peak_mib": round(_status_kib("VmHWM") / 1024),
            "end_mib": round(_status_kib("VmRSS") / 1024),
            "children_peak_rss_mib": round(children_rss / 2**20),
            "children_peak_pss_mib": round(children_pss / 2**20),
        })
        self._began = now
        print(f"[host_memory] {self.rows[-1]}", file=sys.stderr, flush=True)
        _reset_peak()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _nbytes(tree: Any) -> int:
    import jax

    return sum(x.nbytes for x in jax.tree.leaves(tree))


def _instrument(meter: PhaseMeter, captured: dict[str, Any]) -> list[tuple[Any, str, Any]]:
    """Wraps the main job's phase functions to mark their ends; returns what to restore."""
    import jax

    from rlvr_jax import logprobs, models, rollout
    from rlvr_jax import train_step as train_step_lib

    steps = {"generation": 0, "scoring": 0, "update": 0}

    def phase(kind: str) -> str:
        steps[kind] += 1
        return f"step {steps[kind]}: {kind}"

    original = {
        (models.ModelStore, "weights"): models.ModelStore.weights,
        (models.ModelStore, "tokenizer"): models.ModelStore.tokenizer,
        (train_step_lib, "create_train_state"): train_step_lib.create_train_state,
        (train_step_lib, "make_train_step"): train_step_lib.make_train_step,
        (logprobs, "make_logprob_fn"): logprobs.make_logprob_fn,
        (rollout, "sample_groups"): rollout.sample_groups,
    }

    def weights(self, *args, **kwargs):
        out = original[models.ModelStore, "weights"](self, *args, **kwargs)
        captured["param_bytes"] = _nbytes(out[1])  # sizes only: a reference would keep them
        captured["layer_bytes"] = _nbytes(out[1]["layers"])
        meter.mark("weights loaded")
        return out

    def tokenizer(self, *args, **kwargs):
        out = original[models.ModelStore, "tokenizer"](self, *args, **kwargs)
        meter.mark("tokenizer loaded")
        return out

    def create_train_state(*args, **kwargs):
        state, shardings = original[train_step_lib, "create_train_state"](*args, **kwargs)
        jax.block_until_ready(state)
        captured["state"] = jax.eval_shape(lambda: state)
        captured["opt_state_bytes"] = _nbytes(state.opt_state)
        meter.mark("train state created")
        return state, shardings

    def make_train_step(*args, **kwargs):
        step_fn = original[train_step_lib, "make_train_step"](*args, **kwargs)
        captured["step_fn"] = step_fn

        def run(state, batch):
            captured.setdefault("batch", jax.eval_shape(lambda: batch))
            out = jax.block_until_ready(step_fn(state, batch))
            meter.mark(phase("update"))
            return out

        return run

    def make_logprob_fn(*args, **kwargs):
        logprob_fn = original[logprobs, "make_logprob_fn"](*args, **kwargs)
        captured["logprob_fn_args"] = (args, kwargs)

        def run(params, tokens, attention_mask, **options):
            captured.setdefault("scoring_shape", (tokens.shape, options))
            out = jax.block_until_ready(logprob_fn(params, tokens, attention_mask, **options))
            meter.mark(phase("scoring"))
            return out

        return run

    def sample_groups(*args, **kwargs):
        out = original[rollout, "sample_groups"](*args, **kwargs)
        meter.mark(phase("generation"))
        return out

    replacements = {
        (models.ModelStore, "weights"): weights,
        (models.ModelStore, "tokenizer"): tokenizer,
        (train_step_lib, "create_train_state"): create_train_state,
        (train_step_lib, "make_train_step"): make_train_step,
        (logprobs, "make_logprob_fn"): make_logprob_fn,
        (rollout, "sample_groups"): sample_groups,
    }
    for (owner, name), fn in replacements.items():
        setattr(owner, name, fn)
    return [(owner, name, fn) for (owner, name), fn in original.items()]


def _memory_analysis(compiled: Any) -> dict[str, int]:
    stats = compiled.memory_analysis()
    return {
        "argument_mib": round(stats.argument_size_in_bytes / 2**20),
        "output_mib": round(stats.output_size_in_bytes / 2**20),
        "alias_mib": round(stats.alias_size_in_bytes / 2**20),
        "temp_mib": round(stats.temp_size_in_bytes / 2**20),
        "generated_code_mib": round(stats.generated_code_size_in_bytes / 2**20, 1),
    }


def _xla_analysis(captured: dict[str, Any]) -> dict[str, dict[str, int]]:
    """XLA's memory analysis of the train step (and of the reference's scoring pass, when the
    run has one), from the run's shapes."""
    import jax
    import jax.numpy as jnp

    from rlvr_jax import logprobs

    out = {"train_step": _memory_analysis(
        captured["step_fn"].lower(captured["state"], captured["batch"]).compile())}
    if "logprob_fn_args" not in captured:  # no KL reference: no scoring pass
        return out
    (config, *_), _ = captured["logprob_fn_args"]
    shape, options = captured["scoring_shape"]
    tokens = jax.ShapeDtypeStruct(shape, jnp.int32)
    mask = jax.ShapeDtypeStruct(shape, jnp.bool_)
    chunk_size = captured["logprob_fn_args"][1]["chunk_size"]
    scoring = jax.jit(lambda p, t, m: logprobs.token_logprobs(
        config, p, t, m, chunk_size=chunk_size, temperature=options["temperature"]))
    out["scoring"] = _memory_analysis(
        scoring.lower(captured["state"].params, tokens, mask).compile())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/smollm2_arith.py:grpo")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-xla-analysis", dest="xla_analysis", action="store_false")
    parser.add_argument("--out", default=None, help="default benchmarks/results/host_memory.json")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (step 1 compiles; steady state is the steps after)")

    meter = PhaseMeter()
    import jax

    from benchmarks import harness
    from rlvr_jax import train

    jax.numpy.zeros(1).block_until_ready()  # the backend started, as before any real work
    meter.mark(PHASE_IMPORTS)
    modules = sorted(m for m in ("torch", "tensorflow", "tensorflow_datasets", "transformers")
                     if m in sys.modules)

    path, _, variant = args.config.partition(":")
    spec = importlib.util.spec_from_file_location("recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    config = recipe.get_config(*([variant] if variant else []))
    config.total_steps = args.steps
    config.eval.at_start = False
    config.eval.every_steps = 0  # one evaluation, at the end
    config.eval.num_prompts = config.rollout.prompts_per_step  # one batch of the rollout's shape
    config.checkpoint.save_every_steps = 0  # one checkpoint, at the end

    captured: dict[str, Any] = {}
    restore = _instrument(meter, captured)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            train.run(config, workdir)
            meter.mark("final checkpoint + evaluation")
    finally:
        for owner, name, fn in restore:
            setattr(owner, name, fn)
        meter.close()
    modules_after = sorted(m for m in ("torch", "tensorflow", "tensorflow_datasets",
                                       "transformers") if m in sys.modules)

    param_bytes, layer_bytes = captured["param_bytes"], captured["layer_bytes"]
    sizes = {
        "params_mib": round(param_bytes / 2**20),
        "opt_state_mib": round(captured["opt_state_bytes"] / 2**20),
        "decode_layer_copies_mib": round(layer_bytes / 2**20),
    }
    xla = _xla_analysis(captured) if args.xla_analysis else {}

    rows = meter.rows
    steady: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["phase"].startswith("step ") and not row["phase"].startswith("step 1:"):
            kind = row["phase"].split(": ")[1]
            best = steady.setdefault(kind, dict(row, phase=f"steady: {kind}"))
            for key in ("peak_mib", "end_mib", "children_peak_rss_mib", "children_peak_pss_mib"):
                best[key] = max(best[key], row[key])
    peak = max(row["peak_mib"] for row in rows)
    record = harness.machine()
    print(f"{args.config}, {args.steps} steps, on {record['device']['kind']} "
          f"({os.cpu_count()} cores), load average {record['load_average_at_end'][0]:.1f}")
    harness.print_table(
        ["phase", "s", "main peak MiB", "main end MiB", "children RSS MiB", "children PSS MiB"],
        [[r["phase"], r["seconds"], r["peak_mib"], r["end_mib"], r["children_peak_rss_mib"],
          r["children_peak_pss_mib"]] for r in [*rows, *steady.values()]])
    print(f"main process peak: {peak} MiB; imported after startup: {', '.join(modules)}; "
          f"after the run: {', '.join(modules_after)}")
    print("sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    for name, stats in xla.items():
        print(f"XLA {name}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    result = {
        **record,
        "config": {"recipe": args.config, "steps": args.steps},
        "main_peak_mib": peak,
        "phases": rows,
        "steady": list(steady.values()),
        "modules_imported": {"at_start": modules, "after_run": modules_after},
        "sizes": sizes,
        "xla_memory_analysis": xla,
    }
    harness.write_result(result, args.out or harness.result_path("host_memory"))


if __name__ == "__main__":
    main()
