"""Does a run fit on a slice? Its programs compiled ahead of time, with per-chip memory and
FLOPs, before any accelerator is rented.

    python -m rlvr_jax.compile_check --config=configs/<recipe>.py[:variant] \\
        --topology=v5p:4x4x4 [--config.<key>=<value> ...] [--out=result.json]

``--topology`` names the devices to compile for:

* ``<tpu>:<AxB[xC]>`` (``v4``, ``v5e``, ``v5p``, ``v6e``): the chips of that TPU slice, from
  libtpu's topology description (``pip install 'jax[tpu]'``; no TPU needed). The figures are
  those of the TPU compiler for that slice.
* ``cpu:<n>``: ``n`` host CPU devices (``jax_num_cpu_devices``), compared with no memory limit.
* ``<gpu>:<n>`` (``h100:8``, ``a100-80gb:8``, ...: ``rlvr_jax.accelerators``): compiled for ``n``
  CPU devices and compared with that GPU's memory. An ESTIMATE, labelled so: the XLA:CPU
  compiler schedules, fuses and rematerialises differently from XLA:GPU.

Nothing is allocated: the model's architecture comes from its preset or its HF
``config.json`` (no weights), the train state from :func:`train_step.create_train_state` under
``jax.eval_shape``, the batch from :func:`train_step.batch_shapes`, all as
``jax.ShapeDtypeStruct`` with the run's ``NamedSharding`` on the run's mesh
(``config.mesh``, ``config.sharding``). The programs of one RL step are lowered and compiled,
as the train loop builds them:

* ``generate``: ``sampling.generate``'s compiled core for ``rollout.prompts_per_step``
  prompts x ``rollout.group_size`` samples, prompts at ``rollout.max_prompt_len`` (bucketed);
* ``train_step``: ``train_step.make_train_step`` (the rollout policy's scores, the estimator,
  micro-batches, remat, optimizer);
* ``score``: the KL reference's log-prob pass (``logprobs.make_logprob_fn``) over all
  ``N = B x G`` sequences at once, compiled by default only when the run has a KL term
  (``loss.kl_coef > 0``).

Per chip and program, ``compiled.memory_analysis()`` gives the arguments, outputs (less those
aliased to donated arguments), temporaries and generated code; the train state's arrays that
stay resident while a program runs without taking them as arguments (the optimizer state
during generation and scoring, the frozen reference policy of a KL term) are added. Their sum
is the program's peak estimate; the run fits when every program's fits the chip's memory
(``rlvr_jax.accelerators``), and the verdict names the largest term of the worst program. The
TPU compiler refuses outright a program whose buffers exceed the chip's HBM: such a program
does not fit, and its figure is the bytes the refusal names (a lower bound). FLOPs
come from ``compiled.cost_analysis()``: per chip, and with every loop's body counted once (the
layer scan, the micro- and mini-batch scans, the decode ``while`` loop), so they are a
per-iteration figure, not the step's total. Writes the table as JSON with ``--out``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from rlvr_jax import accelerators, logprobs, models, sampling, sharding
from rlvr_jax import config as config_lib
from rlvr_jax import optimizer as optimizer_lib
from rlvr_jax import train_step as train_step_lib

PROGRAMS = ("generate", "score", "train_step")


def default_programs(config: Any) -> tuple[str, ...]:
    """The programs the run ``config`` builds: ``score`` only for a KL reference."""
    return ("generate", "train_step") + (("score",) if config.loss.kl_coef else ())
MEMORY_TERMS = ("arguments", "outputs", "temporaries", "generated_code", "resident")


@dataclasses.dataclass(frozen=True)
class Target:
    """What ``--topology`` names: the devices to compile for and the chip to compare with.

    ``chip`` is None for ``cpu:<n>`` (no memory limit); ``estimate`` is true when the devices
    are CPUs standing in for ``chip`` (a GPU).
    """

    topology: str
    devices: tuple[Any, ...]
    chip: accelerators.Accelerator | None
    estimate: bool

    @property
    def label(self) -> str:
        if self.chip is None:
            return f"{self.topology} (host CPU devices, no memory limit)"
        if self.estimate:
            return (f"{self.topology}: ESTIMATE compiled by XLA:CPU for {len(self.devices)} "
                    f"devices against {self.chip.device_kind}'s memory")
        return f"{self.topology} ({len(self.devices)} x {self.chip.device_kind}, TPU compiler)"


def _cpu_devices(count: int) -> tuple[Any, ...]:
    """``count`` host CPU devices (asking for them if the backend has not started yet)."""
    with contextlib.suppress(RuntimeError):  # the CPU backend is up already (XLA_FLAGS)
        jax.config.update("jax_num_cpu_devices", count)
    devices = jax.devices("cpu")
    if len(devices) < count:
        raise ValueError(
            f"the topology needs {count} CPU devices but the CPU backend has {len(devices)}; "
            f"run in a fresh process or set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{count}")
    return tuple(devices[:count])


def _tpu_devices(chip_name: str, shape: str) -> tuple[Any, ...]:
    """The chips of TPU slice ``<chip_name>:<shape>`` from libtpu, one device per chip (a v4
    topology lists both TensorCores of each chip; a v4 runs them as one megacore device)."""
    try:
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(topology_name=f"{chip_name}:{shape}",
                                                platform="tpu")
    except Exception as error:  # libtpu missing, or a shape it does not know
        raise ValueError(
            f"cannot describe TPU topology {chip_name}:{shape}: {error}. It needs libtpu "
            "(pip install 'jax[tpu]') and a slice shape the chip exists in (v5p: 2x2x1, "
            "2x2x2, 2x4x4, 4x4x4, ...; v5e / v6e: 2x2, 2x4, 4x4, ..., 16x16)") from error
    return tuple(d for d in topology.devices if getattr(d, "core_on_chip", 0) == 0)


def parse_topology(topology: str) -> Target:
    """``--topology`` (see the module docstring) as a :class:`Target`; ValueError if malformed."""
    name, sep, size = topology.partition(":")
    name = name.lower()
    if not sep or not size:
        raise ValueError(f"--topology={topology!r}: expected <chip>:<shape> (v5p:2x2x2, "
                         "v5e:4x4), cpu:<n> or <gpu>:<n> (h100:8)")
    gpu = name in accelerators.ACCELERATORS and accelerators.get(name).platform == "gpu"
    if name == "cpu" or gpu:
        if not size.isdigit() or int(size) < 1:
            raise ValueError(f"--topology={topology!r}: {name}:<n> takes a device count")
        chip = None if name == "cpu" else accelerators.get(name)
        return Target(topology, _cpu_devices(int(size)), chip, estimate=chip is not None)
    chip = accelerators.get(name)
    dims = size.split("x")
    if not all(d.isdigit() and int(d) > 0 for d in dims):
        raise ValueError(f"--topology={topology!r}: a TPU slice shape is like 2x2x2 or 4x4")
    return Target(topology, _tpu_devices(name, size), chip, estimate=False)


def model_config(config: Any) -> models.ModelConfig:
    """The run's architecture and dtype policy, from a preset or an HF directory's
    ``config.json`` (the weights are not read)."""
    name = config.model.name
    if os.path.isdir(name):
        with open(os.path.join(name, "config.json")) as f:
            architecture = models.config_from_hf(json.load(f))
    elif name.lower() in models.PRESETS:
        architecture = models.get_preset(name)
    else:
        raise ValueError(f"model.name={name!r}: the compile check reads a preset "
                         f"({', '.join(sorted(models.PRESETS))}) or an HF directory")
    return architecture.replace(dtype=jnp.dtype(config.model.dtype),
                                param_dtype=jnp.dtype(config.model.param_dtype),
                                remat_policy=config.model.remat_policy)


def per_chip_bytes(tree: Any) -> int:
    """Bytes of one device's shard of every ``ShapeDtypeStruct`` (with sharding) in ``tree``."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def _abstract_state(config: Any, model: models.ModelConfig, tx: Any, mesh: Any,
                    rules: Any) -> tuple[Any, Any]:
    """``create_train_state``'s state as sharded shapes, and its shardings (nothing built)."""
    captured = {}

    def build():
        state, captured["shardings"] = train_step_lib.create_train_state(
            model, tx, jax.random.key(config.seed), mesh, rules)
        return state

    abstract = jax.eval_shape(build)
    return _with_shardings(abstract, captured["shardings"]), captured["shardings"]


_REFUSAL = re.compile(r"memory required for ([\w ]+?) \(([\d.]+)([KMGT]?)\) exceeds available "
                      r"HBM \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def refused_bytes(message: str) -> tuple[str, int, int] | None:
    """What the TPU compiler's out-of-memory refusal names: ``(what, bytes required, bytes of
    HBM available)``, e.g. ``("HLO temporaries", ...)`` from "the total memory required for
    HLO temporaries (116.60G) exceeds available HBM (95.74G)"; None for another message."""
    match = _REFUSAL.search(message)
    if match is None:
        return None
    what, needed, unit, available, available_unit = match.groups()
    return (what, round(float(needed) * _UNITS[unit]),
            round(float(available) * _UNITS[available_unit]))


def _compile(lowered: Any) -> tuple[Any, float, str | None]:
    """The compiled program, the compile wall time, and the compiler's out-of-memory refusal
    (then no program), which the TPU compiler raises instead of compiling an executable whose
    buffers exceed the chip's HBM."""
    began = time.perf_counter()
    try:
        compiled, refusal = lowered.compile(), None
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        compiled, refusal = None, str(error).splitlines()[0]
    return compiled, time.perf_counter() - began, refusal


def _flops(compiled: Any) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])


def _memory(compiled: Any, resident: int) -> dict[str, int]:
    analysis = compiled.memory_analysis()
    return {
        "arguments": int(analysis.argument_size_in_bytes),
        "outputs": int(analysis.output_size_in_bytes - analysis.alias_size_in_bytes),
        "temporaries": int(analysis.temp_size_in_bytes),
        "generated_code": int(analysis.generated_code_size_in_bytes),
        "resident": resident,
    }


def check(config: Any, target: Target, programs: tuple[str, ...] | None = None,
          progress: Any = None) -> dict[str, Any]:
    """Compiles ``programs`` (default: :func:`default_programs`) of the run ``config`` for
    ``target``; the result table (see the module docstring), as a JSON-able dict.
    ``progress(message)`` is told of each stage."""
    say = progress or (lambda message: None)
    programs = default_programs(config) if programs is None else programs
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise ValueError(f"unknown program(s) {unknown}; choose from {PROGRAMS}")
    config_lib.validate(config)
    config_lib.validate_devices(config, len(target.devices))
    model = model_config(config)
    mesh = sharding.make_mesh(config.mesh, target.devices)
    rules = sharding.rules_from_config(config.sharding)
    tx, _ = optimizer_lib.make_optimizer(
        optimizer_lib.updates_per_rl_step(config.batching), **config.optim)
    say("building the abstract train state")
    state, shardings = _abstract_state(config, model, tx, mesh, rules)
    params_bytes, state_bytes = per_chip_bytes(state.params), per_chip_bytes(state)
    reference_bytes = params_bytes if config.loss.kl_coef else 0  # a frozen copy of params

    rollout = config.rollout
    B, G, L = rollout.prompts_per_step, rollout.group_size, rollout.max_new_tokens
    P = sampling.round_up(rollout.max_prompt_len, rollout.prompt_bucket)
    N, T = B * G, P + L
    rows = sharding.batch_sharding(mesh, rules)

    def lower(program: str) -> tuple[Any, int]:
        """The lowering of ``program`` and the bytes resident beside its arguments."""
        if program == "generate":
            lowered = sampling.lower_generate(
                model, state.params, B, P, max_new_tokens=L, num_samples=G,
                strategy=sampling.SamplingStrategy(**rollout.sampling),
                mesh_and_rules=(mesh, rules), length_bucket=rollout.length_bucket,
                unstack_layers=rollout.unstack_decode_layers)
            return lowered, state_bytes - params_bytes + reference_bytes
        if program == "score":
            score = logprobs.make_logprob_fn(model, mesh, rules, shardings.params,
                                             chunk_size=config.batching.logprob_chunk_size)
            tokens = jax.ShapeDtypeStruct((N, T), jnp.int32, sharding=rows)
            mask = jax.ShapeDtypeStruct((N, T), jnp.bool_, sharding=rows)
            lowered = score.lower(state.params, tokens, mask,
                                  temperature=rollout.sampling.temperature)
            return lowered, state_bytes - params_bytes + reference_bytes
        step = train_step_lib.make_train_step(config, model, tx, mesh, rules, shardings)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rows)
                 for k, v in train_step_lib.batch_shapes(config, N, T, L).items()}
        with sharding.activate(mesh, rules):
            return step.lower(state, batch), reference_bytes

    limit = None if target.chip is None else target.chip.memory_bytes
    results = {}
    for program in programs:
        say(f"lowering {program}")
        lowered, resident = lower(program)
        say(f"compiling {program}")
        compiled, seconds, refusal = _compile(lowered)
        if refusal is None:
            memory = _memory(compiled, resident)
            flops, fits = _flops(compiled), None if limit is None else sum(memory.values()) <= limit
        else:  # the required bytes of what the compiler names: a lower bound of the program's
            refused = refused_bytes(refusal)
            required = 0 if refused is None else refused[1]
            memory = {term: 0 for term in MEMORY_TERMS} | {"temporaries": required,
                                                           "resident": resident}
            flops, fits = None, False
        total = sum(memory.values())
        results[program] = {**memory, "total": total, "flops": flops,
                            "compile_seconds": round(seconds, 2), "fits": fits,
                            "compiler_refused": refusal}
        say(f"{program}: {total / accelerators.GIB:.2f} GiB per chip, compiled in "
            f"{seconds:.1f} s" + ("" if refusal is None else f" (REFUSED: {refusal})"))
    worst = max(results, key=lambda p: results[p]["total"])
    largest = max(MEMORY_TERMS, key=lambda term: results[worst][term])
    fits = None if limit is None else all(r["fits"] for r in results.values())
    return {
        "config": {"model": config.model.name, "remat_policy": config.model.remat_policy,
                   "mesh": dict(sharding.mesh_shape(config.mesh, len(target.devices))),
                   "prompts_per_step": B, "group_size": G, "prompt_len": P,
                   "max_new_tokens": L, "mini_batches": config.batching.mini_batches,
                   "micro_batches": config.batching.micro_batches},
        "topology": target.topology,
        "target": target.label,
        "estimate": target.estimate,
        "devices": len(target.devices),
        "device_kind": target.devices[0].device_kind,
        "chip_memory_bytes": limit,
        "train_state_bytes": state_bytes,
        "programs": results,
        "worst_program": worst,
        "largest_contributor": f"{worst} {largest}",
        "fits": fits,
        "compile_seconds": round(sum(r["compile_seconds"] for r in results.values()), 2),
        "versions": {"jax": jax.__version__},
    }


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / accelerators.GIB:.2f}"


def verdict(result: dict[str, Any]) -> str:
    """One line: fits / does not fit, and the largest contributor of the worst program."""
    worst = result["programs"][result["worst_program"]]
    term = result["largest_contributor"].split()[-1]
    peak = f"{_gib(worst['total'])} GiB per chip in {result['worst_program']}"
    if result["fits"] is None:
        return f"no memory limit on {result['topology']}: peak {peak}"
    kind = "ESTIMATE: " if result["estimate"] else ""
    of = f"of {_gib(result['chip_memory_bytes'])} GiB"
    if result["fits"]:
        return f"{kind}FITS: peak {peak} {of}"
    refused = [name for name, r in result["programs"].items() if r["compiler_refused"]]
    refusal = (f"; the TPU compiler refused {', '.join(refused)} (its figure is the refused "
               "bytes, a lower bound)") if refused else ""
    return (f"{kind}DOES NOT FIT: {peak} {of}; largest contributor: {result['worst_program']} "
            f"{term} ({_gib(worst[term])} GiB){refusal}")


def print_report(result: dict[str, Any], file: Any = sys.stdout) -> None:
    """The per-chip table of :func:`check`'s result, then the verdict."""
    print(f"compile check: {result['config']['model']} on {result['target']}", file=file)
    print(f"mesh {result['config']['mesh']}; train state {_gib(result['train_state_bytes'])} "
          "GiB per chip", file=file)
    header = ["program", *MEMORY_TERMS, "total GiB", "TFLOP*", "compile s"]
    rows = [header]
    for name, r in result["programs"].items():
        flops = "-" if r["flops"] is None else f"{r['flops'] / 1e12:.2f}"
        label = f"{name} (REFUSED)" if r["compiler_refused"] else name
        rows.append([label, *(_gib(r[t]) for t in MEMORY_TERMS), _gib(r["total"]), flops,
                     f"{r['compile_seconds']:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))), file=file)
    print("memory in GiB per chip; * XLA cost analysis per chip, each loop body counted once",
          file=file)
    print(verdict(result), file=file)


def main() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    from rlvr_jax.train import _parse_flags

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Recipe: configs/<recipe>.py[:variant].", lock_config=True)
    topology_flag = flags.DEFINE_string(
        "topology", None, "v5p:2x2x2, v5e:4x4, v6e:8x8, v4:2x2x2, cpu:8 or h100:8.")
    programs_flag = flags.DEFINE_list(
        "programs", None, f"Programs to compile, of {PROGRAMS} (default: those the run builds: "
        "generate, train_step, and score for a KL reference).")
    out_flag = flags.DEFINE_string("out", None, "Write the result as JSON here.")
    flags.mark_flags_as_required(["config", "topology"])

    def app_main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            target = parse_topology(topology_flag.value)
            programs = tuple(programs_flag.value) if programs_flag.value else None
            result = check(config_flag.value, target, programs,
                           progress=lambda m: print(f"[compile_check] {m}", file=sys.stderr,
                                                    flush=True))
        except ValueError as error:
            sys.exit(f"error: {error}")
        print_report(result)
        if out_flag.value:
            os.makedirs(os.path.dirname(os.path.abspath(out_flag.value)), exist_ok=True)
            with open(out_flag.value, "w") as f:
                json.dump(result, f, indent=2)
            print(f"wrote {out_flag.value}")

    app.run(app_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
