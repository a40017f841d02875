"""Writes ``verl_0_9_1.json``: verl 0.9.1's outputs on fixed random inputs, the reference numbers
of ``tests/test_policy_losses.py``, ``tests/test_exploration_advantages.py`` and
``tests/test_rollout_correction.py``.

verl is not a dependency of this project. To regenerate, in a scratch environment outside the
repository::

    python3 -m venv /tmp/verl-venv
    /tmp/verl-venv/bin/pip install torch==2.13.0 numpy
    /tmp/verl-venv/bin/pip install --no-deps verl==0.9.1
    # the packages verl's imports ask for, without their own dependencies:
    /tmp/verl-venv/bin/pip install --no-deps packaging ray msgpack protobuf requests urllib3 \
        idna certifi pyyaml jsonschema attrs referencing rpds-py jsonschema-specifications \
        tensordict pyvers cloudpickle omegaconf transformers regex huggingface_hub tqdm httpx2 \
        httpcore2 truststore h11 safetensors codetiming orjson
    /tmp/verl-venv/bin/python tests/reference/make_verl_reference.py

(Made with torch 2.13.0+cpu and those packages as of this commit; the JSON records the versions.)

Every case stores its inputs (float32 values) next to verl's outputs, computed in float64.
verl's loss aggregation names map to this project's (``losses.py``): ``token-mean`` ->
``token_mean``, ``seq-mean-token-mean`` -> ``seq_mean_token_mean``, ``seq-mean-token-sum`` ->
``seq_mean_token_sum``, ``seq-mean-token-sum-norm`` -> ``seq_sum_over_max_len`` (no empty rows
here, so verl's non-empty count equals ``N_seq``). Clip-Cov's random choice is made
deterministic by replacing ``torch.randperm`` with the identity: verl then excludes the first
``clip_num`` band tokens in row-major order, which is this project's choice with priority
``arange(N * L)``.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos, rollout_corr_helper
from verl.workers.config import ActorConfig, PolicyLossConfig

OUT = pathlib.Path(__file__).with_name("verl_0_9_1.json")
AGGREGATIONS = {
    "token-mean": "token_mean",
    "seq-mean-token-mean": "seq_mean_token_mean",
    "seq-mean-token-sum": "seq_mean_token_sum",
    "seq-mean-token-sum-norm": "seq_sum_over_max_len",
}
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
LOSS_OPTIONS = {  # verl loss mode -> (this project's objective, PolicyLossConfig fields)
    "vanilla": ("clipped", {}),
    "gspo": ("gspo", {}),
    "cispo": ("cispo", {}),
    "geo_mean": ("gmpo", {}),
    "clip_cov": ("clip_cov", {"clip_cov_ratio": 0.1, "clip_cov_lb": 0.5, "clip_cov_ub": 5.0}),
    "kl_cov": ("kl_cov", {"kl_cov_ratio": 0.1, "ppo_kl_coef": 0.5}),
}


def numbers(x) -> list:
    """Nested lists of floats with 9 significant digits (exact for float32 values)."""
    return np.vectorize(lambda v: float(f"{v:.9g}"))(np.asarray(x, np.float64)).tolist()


def loss_inputs(seed: int = 0, N: int = 6, L: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    old = -rng.exponential(1.0, size=(N, L))
    logp = old + rng.normal(scale=0.3, size=(N, L))
    advantages = rng.normal(size=N)
    lengths = np.array([8, 3, 6, 1, 8, 5])  # no empty row: verl's counts equal this project's
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.float64)
    return {name: value.astype(np.float32) for name, value in
            {"logp": logp, "logp_old": old, "advantages": advantages, "mask": mask}.items()}


def policy_loss_cases() -> list[dict]:
    inputs = loss_inputs()
    cases = []
    original_randperm = torch.randperm
    torch.randperm = lambda n, *args, **kwargs: torch.arange(n)  # fixed Clip-Cov selection
    try:
        for mode, (objective, options) in LOSS_OPTIONS.items():
            config = ActorConfig(
                strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                clip_ratio=CLIP_LOW, clip_ratio_low=CLIP_LOW, clip_ratio_high=CLIP_HIGH,
                policy_loss=PolicyLossConfig(loss_mode=mode, **options))
            loss_fn = core_algos.get_policy_loss_fn(mode)
            for verl_name, aggregation in AGGREGATIONS.items():
                if mode == "geo_mean" and aggregation != "seq_mean_token_mean":
                    continue  # verl's GMPO always takes the mean over sequences
                logp = torch.tensor(inputs["logp"], dtype=torch.float64, requires_grad=True)
                mask = torch.tensor(inputs["mask"], dtype=torch.float64)
                adv = torch.tensor(inputs["advantages"], dtype=torch.float64)[:, None] * mask
                old = torch.tensor(inputs["logp_old"], dtype=torch.float64)
                loss, _ = loss_fn(old_log_prob=old, log_prob=logp, advantages=adv,
                                  response_mask=mask, loss_agg_mode=verl_name, config=config)
                loss.backward()
                cases.append({"verl_loss_mode": mode, "objective": objective,
                              "verl_aggregation": verl_name, "aggregation": aggregation,
                              "options": options, "loss": loss.item(),
                              "grad_logp": numbers(logp.grad)})
    finally:
        torch.randperm = original_randperm
    return cases


def passk_cases() -> list[dict]:
    rng = np.random.default_rng(1)
    binary = rng.integers(0, 2, size=(6, 4)).astype(np.float32)
    binary[0] = [0, 1, 0, 0]  # exactly one correct
    binary[1] = [1, 1, 1, 1]  # all correct
    floats = rng.uniform(size=(5, 4)).astype(np.float32)
    floats[0, 1] = floats[0, 3] = 1.5  # a tie at the top
    cases = []
    for rewards in (binary, floats):
        B, G = rewards.shape
        L = 3
        token_rewards = np.zeros((B * G, L), np.float64)
        token_rewards[:, -1] = rewards.reshape(-1)
        for normalise in (True, False):
            advantages, _ = core_algos.compute_grpo_passk_outcome_advantage(
                token_level_rewards=torch.tensor(token_rewards),
                response_mask=torch.ones(B * G, L, dtype=torch.float64),
                index=np.repeat(np.arange(B), G), epsilon=1e-6,
                config=AlgoConfig(norm_adv_by_std_in_grpo=normalise))
            cases.append({"rewards": numbers(rewards), "normalise_by_std": normalise,
                          "advantages": numbers(advantages[:, 0].reshape(B, G))})
    return cases


def rollout_correction_cases() -> list[dict]:
    rng = np.random.default_rng(2)
    N, L = 6, 8
    sampler = -rng.exponential(1.0, size=(N, L)).astype(np.float32)
    trainer = (sampler + rng.normal(scale=0.4, size=(N, L))).astype(np.float32)
    lengths = np.array([8, 2, 5, 8, 1, 6])
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.float32)
    cases = []
    for level in ("token", "sequence"):
        log_ratio = torch.tensor(trainer, dtype=torch.float64) - torch.tensor(
            sampler, dtype=torch.float64)
        weights, metrics = rollout_corr_helper.compute_rollout_correction_weights(
            log_ratio=log_ratio, response_mask=torch.tensor(mask, dtype=torch.float64),
            rollout_is=level, rollout_is_threshold=2.0)
        cases.append({
            "level": level, "cap": 2.0, "trainer_logp": numbers(trainer),
            "sampler_logp": numbers(sampler), "mask": numbers(mask),
            "weights": numbers(weights), "mean": metrics["rollout_is_mean"],
            "max": metrics["rollout_is_max"],
            "fraction_high": metrics["rollout_is_ratio_fraction_high"],
        })
    return cases


def main() -> None:
    inputs = loss_inputs()
    reference = {
        "verl_version": "0.9.1",
        "torch_version": torch.__version__,
        "clip_low": CLIP_LOW,
        "clip_high": CLIP_HIGH,
        "loss_inputs": {name: numbers(value) for name, value in inputs.items()},
        "policy_losses": policy_loss_cases(),
        "grpo_passk": passk_cases(),
        "rollout_correction": rollout_correction_cases(),
    }
    OUT.write_text(json.dumps(reference, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
