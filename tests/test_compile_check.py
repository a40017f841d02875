"""The ahead-of-time compile check (``rlvr_jax.compile_check``) and the rollout's sharded
generation, on fake CPU devices with the tiny toy model; the TPU path where libtpu is installed.

The memory figures are checked against closed forms written here from the toy model's
architecture (parameter counts, batch arrays, their shards), not against captured output.
"""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import toy
from processes import SCRIPT_DIR as MULTIDEVICE

from rlvr_jax import accelerators, compile_check

ROOT = pathlib.Path(__file__).parent.parent
E2E = ROOT / "tests" / "e2e"

# The toy recipe's run (tests/e2e/toy.py): N = B * G rows of T = P + L tokens.
B, G, P, L = 8, 8, 16, 4
N, T = B * G, P + L
DEVICES = 8


def toy_parameter_count() -> int:
    """Parameters of tests/e2e/toy.py's Llama: embedding, LM head, per layer q/k/v/o, the
    SwiGLU MLP and two RMSNorms, and the final norm."""
    vocab, d, layers, heads, kv_heads, head_dim, mlp = 17, 32, 2, 4, 2, 8, 64
    attention = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2
    per_layer = attention + 3 * d * mlp + 2 * d
    return 2 * vocab * d + layers * per_layer + d


def run_check(tmp_path, model_dir, topology, *overrides, programs="generate,score,train_step",
              env_extra=None):
    out = tmp_path / f"{topology.replace(':', '_')}.json"
    env = dict(os.environ, TOY_MODEL_DIR=model_dir, PYTHONPATH=os.pathsep.join(sys.path),
               **(env_extra or {}))
    done = subprocess.run(
        [sys.executable, str(E2E / "run_compile_check.py"), f"--config={E2E / 'toy_recipe.py'}",
         f"--topology={topology}", f"--programs={programs}", f"--out={out}",
         f"--config.rollout.prompts_per_step={B}", *overrides],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    return done, (json.loads(out.read_text()) if out.exists() else None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return toy.write_model(str(tmp_path_factory.mktemp("toy_model")))


@pytest.fixture(scope="module")
def cpu_result(tmp_path_factory, model_dir):
    done, result = run_check(tmp_path_factory.mktemp("cc"), model_dir, f"cpu:{DEVICES}",
                             env_extra={"JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-5000:]
    return done.stdout, result


@pytest.mark.multidevice
def test_train_state_and_batch_are_counted_per_chip(cpu_result):
    """AdamW keeps two moments beside the f32 parameters; every toy parameter has the 32-wide
    embed axis, sharded 8 ways (fsdp), so a chip holds 3 x 4 bytes x params / 8 plus a few
    replicated scalars (step, key, optimizer counts). The train step's arguments are that
    state and the chip's 1/8 of the batch arrays."""
    _, result = cpu_result
    state = 3 * 4 * toy_parameter_count() // DEVICES
    assert state <= result["train_state_bytes"] <= state + 64
    batch = N * T * (4 + 1) + N * L * 4 + N * 4  # tokens, mask, response mask (f32 [N, L]),
    # rewards (f32 [N]): the step scores the old policy and runs GRPO itself
    step = result["programs"]["train_step"]
    assert step["arguments"] == pytest.approx(result["train_state_bytes"] + batch / DEVICES,
                                              rel=0.02)
    assert step["resident"] == 0  # no KL term: no reference policy
    generate = result["programs"]["generate"]  # the optimizer state stays resident
    assert generate["resident"] == result["train_state_bytes"] - 4 * toy_parameter_count() // 8


@pytest.mark.multidevice
def test_flops_and_report(cpu_result):
    """XLA's cost analysis counts a loop's body once, so the scoring pass's FLOPs per chip are
    at least one layer's and the LM head's matmuls, ``2 x weights x tokens / 8``, and within a
    small factor of it (the other layer, attention, softmaxes); the report names every
    program and a verdict without a memory limit for bare CPU devices."""
    stdout, result = cpu_result
    d, vocab, layer_weights = 32, 17, (toy_parameter_count() - 2 * 17 * 32 - 32) // 2
    one_pass = 2 * (layer_weights + vocab * d) * N * T / DEVICES
    assert one_pass <= result["programs"]["score"]["flops"] <= 4 * one_pass
    assert result["fits"] is None and result["devices"] == DEVICES
    assert result["config"]["mesh"] == {"data": 1, "fsdp": DEVICES, "tensor": 1}
    for program in compile_check.PROGRAMS:
        assert program in stdout
        memory = result["programs"][program]
        assert memory["total"] == sum(memory[t] for t in compile_check.MEMORY_TERMS)
    assert "no memory limit" in stdout


@pytest.mark.multidevice
def test_gpu_target_is_a_labelled_estimate(tmp_path, model_dir):
    done, result = run_check(tmp_path, model_dir, "h100:8", programs="train_step",
                             env_extra={"JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-5000:]
    assert result["estimate"] and "ESTIMATE" in result["target"]
    assert result["chip_memory_bytes"] == 80 * 10**9 and result["fits"]
    assert "ESTIMATE: FITS" in done.stdout


def test_verdict_names_the_largest_contributor_of_the_worst_program():
    gib = accelerators.GIB
    programs = {
        "generate": dict(arguments=1, outputs=0, temporaries=20, generated_code=0, resident=2),
        "train_step": dict(arguments=3, outputs=0, temporaries=9, generated_code=0, resident=0),
    }
    programs = {name: {k: v * gib for k, v in p.items()} for name, p in programs.items()}
    for p in programs.values():
        p["total"], p["compiler_refused"] = sum(p.values()), None
    result = {"programs": programs, "worst_program": "generate", "estimate": False,
              "largest_contributor": "generate temporaries", "chip_memory_bytes": 16 * gib,
              "fits": False, "topology": "v5e:2x2"}
    assert compile_check.verdict(result) == (
        "DOES NOT FIT: 23.00 GiB per chip in generate of 16.00 GiB; largest contributor: "
        "generate temporaries (20.00 GiB)")


def test_the_tpu_compilers_refusal_is_read():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
               "temporaries (116.60G) exceeds available HBM (95.74G).")
    assert compile_check.refused_bytes(message) == (
        "HLO temporaries", round(116.60 * 2**30), round(95.74 * 2**30))
    assert compile_check.refused_bytes("INTERNAL: something else") is None


@pytest.mark.parametrize("topology, message", [
    ("v5p", "expected <chip>:<shape>"), ("tpu9:2x2", "unknown accelerator"),
    ("h100:eight", "takes a device count"), ("v5e:4xfour", "shape is like"),
])
def test_bad_topology_is_named(topology, message):
    with pytest.raises(ValueError, match=message):
        compile_check.parse_topology(topology)


@pytest.mark.slow
@pytest.mark.multidevice
def test_the_train_loop_generates_sharded_over_the_batch_axes(tmp_path, model_dir):
    """Through ``train.run`` on 8 devices, the rollout's generations are split over the batch
    mesh axes: each device holds 1/8 of the tokens (and decoded, with its KV cache, 1/8 of the
    rows). Without the run's mesh and rules active around ``sampling.generate`` every device
    would decode the whole batch and hold all of it."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
               JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, str(MULTIDEVICE / "rollout_sharding.py"), model_dir,
                           str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    training = json.loads(done.stdout.strip().splitlines()[-1])["calls"][0]
    assert training["shape"] == [B, G, L] and training["devices"] == DEVICES
    assert training["per_device"] == [math.prod(training["shape"]) // DEVICES] * DEVICES


LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.skipif(not LIBTPU, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_topology_compiles_for_the_slice(tmp_path, model_dir):
    """On libtpu's description of a v5e-4 slice (no TPU needed): 4 'TPU v5 lite' chips of
    16 GiB, the train state split 4 ways. (Off a TPU VM run pytest with JAX_PLATFORMS=cpu:
    libtpu admits one process per machine, and this one's own JAX would otherwise hold it.)"""
    done, result = run_check(tmp_path, model_dir, "v5e:2x2", programs="train_step",
                             env_extra={"JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1"})
    assert done.returncode == 0, done.stderr[-5000:]
    assert result["devices"] == 4 and result["device_kind"] == "TPU v5 lite"
    assert result["chip_memory_bytes"] == 16 * 2**30 and result["fits"]
    state = 3 * 4 * toy_parameter_count() // 4
    assert state <= result["train_state_bytes"] <= state + 64
    assert "FITS" in done.stdout and "ESTIMATE" not in done.stdout
