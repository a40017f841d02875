"""Held-out evaluation: unbiased pass@k, response length and exploration statistics.

A fixed set of ``eval.num_prompts`` held-out prompts (the first ones of the task's eval split
in its seeded order, the same at every evaluation) gets ``n`` samples each with a fixed key, so
successive evaluations differ only through the policy (the trainer takes ``n =
eval.samples_per_prompt`` during training and ``eval.samples_per_prompt_at_ends`` before and
after it).
Reported: ``pass@k`` for ``k`` in ``{1, 2, 4, ..., n}`` (and ``n``), mean response length,
fractions of all-correct / all-wrong groups, distinct (correct) final answers per prompt, and
the mean entropy of the sampling distribution.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from rlvr_jax import metric_writer, metrics, sampling
from rlvr_jax.rollout import Groups, Sampler


def pass_at_k_ks(n: int) -> list[int]:
    """``[1, 2, 4, ..., n]``: powers of two below ``n``, then ``n`` itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) < n]
    return [*ks, n]


def evaluate(
    sampler: Sampler,
    params: Any,
    examples: list[dict[str, Any]],
    key: jax.Array,
    settings: ml_collections.ConfigDict,
    max_new_tokens: int,
    batch_prompts: int,
    num_samples: int,
) -> tuple[dict[str, float], Groups]:
    """Evaluates ``params`` on ``examples`` with ``n = num_samples`` samples per prompt and the
    ``eval`` config section's sampling ``settings``; returns metrics and the sampled groups."""
    n = num_samples
    strategy = sampling.SamplingStrategy(**settings.sampling)
    parts = []
    for start in range(0, len(examples), batch_prompts):
        chunk = examples[start:start + batch_prompts]
        positions = np.arange(start, start + len(chunk))
        parts.append(sampler.sample(params, chunk, positions, key, num_samples=n,
                                    max_new_tokens=max_new_tokens, strategy=strategy))
    groups = Groups.concatenate(parts)
    lengths = groups.completion_mask.sum(-1)
    out = {f"pass@{k}": v for k, v in metrics.pass_at_k_curve(groups.rewards,
                                                             pass_at_k_ks(n)).items()}
    stats = metrics.group_statistics(groups.rewards)
    out.update({
        "reward_mean": float(stats["reward_mean"]),
        "frac_all_correct": float(stats["frac_all_correct"]),
        "frac_all_wrong": float(stats["frac_all_wrong"]),
        "response_length_mean": float(lengths.mean()),
        "sampling_entropy": float(groups.sampling_entropy[groups.completion_mask].mean())
        if groups.completion_mask.any() else 0.0,
        **metrics.answer_diversity(groups.answers, groups.rewards),
    })
    return out, groups


def prompt_records(groups: Groups) -> dict[str, list[Any]]:
    """Per-prompt outcomes of an evaluation, in prompt order (lists of ``B`` entries): the
    question, samples ``n`` and correct samples ``c`` (pass@k of a prompt is
    ``metrics.pass_at_k(n, c, k)``), distinct final answers and distinct correct answers, and
    the mean response length in tokens."""
    distinct, distinct_correct = metrics.distinct_answer_counts(groups.answers, groups.rewards)
    B, n = groups.rewards.shape
    return {
        "question": [str(example["question"]) for example in groups.examples],
        "samples": [n] * B,
        "correct": (groups.rewards > 0).sum(-1).tolist(),
        "distinct_answers": distinct.tolist(),
        "distinct_correct_answers": distinct_correct.tolist(),
        "response_length": groups.completion_mask.sum(-1).mean(-1).tolist(),
    }


def recorded(workdir: str, step: int) -> bool:
    """Whether the run in ``workdir`` recorded an evaluation at ``step`` (``records.jsonl``)."""
    path = os.path.join(workdir, metric_writer.RECORDS_FILE)
    return os.path.exists(path) and any(
        record["step"] == step and "eval" in record for record in metric_writer.read_metrics(path))
