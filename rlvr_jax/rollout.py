"""Prompts -> groups of completions -> verified rewards -> advantages -> a training batch.

One rollout step, host side around two compiled functions (``sampling.generate`` and the
train step's scorer), all on the training parameters:

1. ``B`` prompts from a deterministic, resumable :class:`PromptStream`, chat-formatted and
   left-padded (lengths rounded up to ``rollout.prompt_bucket``).
2. ``G`` completions each; random numbers depend only on the run seed, the step and the
   prompt's stream position, so two runs that differ only in the estimator see identical
   first rollouts (paired-seed experiments).
3. Verifier rewards ``[B, G]`` (process pool, timeouts), plus DAPO's overlong penalty in
   tokens when ``rollout.overlong_buffer > 0``. With ``rollout.dynamic_sampling`` groups whose
   rewards are all equal are dropped and new prompts drawn, up to ``max_sampling_rounds``
   rounds; if the batch is still short it is filled with dropped groups (counted).
4. Log-probs and full-vocabulary entropies of prompt and response tokens under the current
   policy (and the frozen reference, for the KL term), the sampler-vs-trainer log-prob gap,
   and the configured advantage estimator.

The result is the train batch of ``train_step`` (``N = B * G`` rows) and a dict of metrics.
Multi-host: every process draws the same global prompts and gathers the generations; each
process verifies its own slice of the completions and the rewards are all-gathered
(``rewards.distributed``), so no verifier work is repeated; the train batch is then assembled
from each host's rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlvr_jax import advantages, metrics, models, sampling, shaping
from rlvr_jax.rewards.distributed import verify_across_processes
from rlvr_jax.tasks.order import epoch_order

Batch = dict[str, np.ndarray]


class PromptStream:
    """Examples of one task split in a seeded order, addressed by a global position.

    Position ``i`` is example ``epoch_order(n, seed, i // n)[i % n]``: the stream is endless
    (reshuffled each epoch), identical on every host, and resumes exactly from ``position``.
    """

    def __init__(self, task: Any, split: str, seed: int, position: int = 0):
        self.source = task.source(split)
        self.seed = seed
        self.position = position
        self._epoch: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_order(len(self.source), self.seed, epoch))
        return self._epoch[1]

    def take(self, n: int) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The next ``n`` examples and their global positions ``[n]``."""
        positions = np.arange(self.position, self.position + n)
        size = len(self.source)
        examples = [self.source[int(self._order(p // size)[p % size])] for p in positions]
        self.position += n
        return examples, positions


def left_pad(sequences: list[list[int]], bucket: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to a multiple of ``bucket``: ``(tokens [B, P], mask [B, P])``."""
    length = sampling.round_up(max(len(s) for s in sequences), bucket)
    tokens = np.full((len(sequences), length), pad_id, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for row, seq in enumerate(sequences):
        tokens[row, length - len(seq):] = seq
        mask[row, length - len(seq):] = True
    return tokens, mask


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-host sharded) array on this host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


_ARRAY_FIELDS = ("completion_tokens", "completion_mask", "sampler_policy_logp", "sampling_logp",
                 "sampling_entropy", "truncated_mass", "rewards")  # leading axis B
_LIST_FIELDS = ("examples", "prompt_ids", "texts", "answers")  # B entries


@dataclasses.dataclass
class Groups:
    """``B`` prompts with ``G`` completions each, on the host."""

    examples: list[dict[str, Any]]
    prompt_ids: list[list[int]]  # B token lists, unpadded
    completion_tokens: np.ndarray  # [B, G, L] int32
    completion_mask: np.ndarray  # [B, G, L] bool
    sampler_policy_logp: np.ndarray  # [B, G, L] untruncated T = 1 log-probs from the sampler
    sampling_logp: np.ndarray  # [B, G, L]
    sampling_entropy: np.ndarray  # [B, G, L]
    truncated_mass: np.ndarray  # [B, G, L]
    texts: list[list[str]]  # [B][G] decoded completions
    rewards: np.ndarray  # [B, G] verifier rewards in {0, 1}
    answers: list[list[str | None]]  # [B][G] extracted final answers
    timeouts: int = 0
    crashes: int = 0

    def select(self, rows: np.ndarray) -> Groups:
        """The groups at ``rows`` (indices into the B prompts)."""
        return dataclasses.replace(
            self, **{name: getattr(self, name)[rows] for name in _ARRAY_FIELDS},
            **{name: [getattr(self, name)[int(r)] for r in rows] for name in _LIST_FIELDS},
        )

    @staticmethod
    def concatenate(parts: list[Groups]) -> Groups:
        if len(parts) == 1:
            return parts[0]
        join = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        chain = lambda name: [x for p in parts for x in getattr(p, name)]  # noqa: E731
        return Groups(
            **{name: join(name) for name in _ARRAY_FIELDS},
            **{name: chain(name) for name in _LIST_FIELDS},
            timeouts=sum(p.timeouts for p in parts), crashes=sum(p.crashes for p in parts),
        )


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Generates and verifies groups of completions for a task with one model."""

    model_config: models.ModelConfig
    tokenizer: Any
    task: Any
    max_prompt_len: int
    prompt_bucket: int
    length_bucket: int
    eos_ids: tuple[int, ...]
    pad_id: int
    unstack_layers: bool = True  # sampling.generate's per-layer decode loop

    def encode(self, examples: list[dict[str, Any]]) -> list[list[int]]:
        """Chat-formatted prompt token lists; raises on a prompt over ``max_prompt_len``."""
        encoded = []
        for example in examples:
            text = self.task.format_prompt(example, self.tokenizer)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_prompt_len:
                raise ValueError(
                    f"prompt of example {example.get('id')!r} has {len(ids)} tokens, more than "
                    f"rollout.max_prompt_len={self.max_prompt_len}"
                )
            encoded.append(list(ids))
        return encoded

    def sample(
        self,
        params: Any,
        examples: list[dict[str, Any]],
        positions: np.ndarray,
        key: jax.Array,
        *,
        num_samples: int,
        max_new_tokens: int,
        strategy: sampling.SamplingStrategy,
    ) -> Groups:
        prompt_ids = self.encode(examples)
        tokens, mask = left_pad(prompt_ids, self.prompt_bucket, self.pad_id)
        generation = sampling.generate(
            self.model_config, params, tokens, mask, key, max_new_tokens=max_new_tokens,
            num_samples=num_samples, strategy=strategy, eos_ids=self.eos_ids,
            prompt_ids=np.asarray(positions, np.int32), pad_id=self.pad_id,
            prompt_bucket=self.prompt_bucket, length_bucket=self.length_bucket,
            unstack_layers=self.unstack_layers,
        )
        host = {name: to_host(value) for name, value in generation._asdict().items()}
        B, G, _ = host["tokens"].shape
        texts = [
            [self.tokenizer.decode(host["tokens"][b, g][host["mask"][b, g]],
                                   skip_special_tokens=True) for g in range(G)]
            for b in range(B)
        ]
        flat_texts = [t for group in texts for t in group]
        flat_examples = [ex for ex in examples for _ in range(G)]
        report = verify_across_processes(self.task, flat_texts, flat_examples)
        return Groups(
            examples=examples, prompt_ids=prompt_ids,
            completion_tokens=host["tokens"], completion_mask=host["mask"],
            sampler_policy_logp=host["policy_logprobs"], sampling_logp=host["sampling_logprobs"],
            sampling_entropy=host["sampling_entropy"], truncated_mass=host["truncated_mass"],
            texts=texts, rewards=np.asarray(report.rewards, np.float32).reshape(B, G),
            answers=[[self.task.extract_answer(t, example) for t in group]
                     for group, example in zip(texts, examples, strict=True)],
            timeouts=report.timeouts, crashes=report.crashes,
        )


def strategy_from(settings: Mapping[str, Any]) -> sampling.SamplingStrategy:
    """A sampling strategy from a config section with temperature/top_k/top_p/min_p."""
    return sampling.SamplingStrategy(
        temperature=float(settings.get("temperature", 1.0)), top_k=int(settings.get("top_k", 0)),
        top_p=float(settings.get("top_p", 1.0)), min_p=float(settings.get("min_p", 0.0)),
    )


def assemble(groups: Groups, bucket: int, pad_id: int) -> Batch:
    """Train-batch token arrays for ``N = B * G`` rows: prompt (left-padded) + completion."""
    prompt_tokens, prompt_mask = left_pad(groups.prompt_ids, bucket, pad_id)  # [B, P]
    B, G, L = groups.completion_tokens.shape
    repeat = lambda x: np.repeat(x, G, axis=0)  # noqa: E731
    tokens = np.concatenate([repeat(prompt_tokens), groups.completion_tokens.reshape(B * G, L)], 1)
    mask = np.concatenate([repeat(prompt_mask), groups.completion_mask.reshape(B * G, L)], 1)
    return {
        "tokens": tokens.astype(np.int32),  # [N, P + L]
        "attention_mask": mask,  # [N, P + L]
        "response_mask": groups.completion_mask.reshape(B * G, L).astype(np.float32),
    }


def collect(
    sampler: Sampler,
    stream: PromptStream,
    params: Any,
    key: jax.Array,
    rollout: Mapping[str, Any],
    advantage: Mapping[str, Any],
    score: Callable[[Any, np.ndarray, np.ndarray], Any],
    reference_params: Any = None,
) -> tuple[Batch, dict[str, float], Groups]:
    """One rollout: the train batch, its metrics, and the groups (for sample logging).

    For a ``mixture`` task the metrics also hold ``reward_mean/<component>`` and
    ``groups/<component>`` (see ``MixtureTask.group_metrics``).
    """
    B, G = int(rollout["prompts_per_step"]), int(rollout["group_size"])
    strategy = strategy_from(rollout)
    kept: list[Groups] = []
    dropped: list[Groups] = []
    rounds = 0
    while sum(len(g.examples) for g in kept) < B:
        examples, positions = stream.take(B)
        groups = sampler.sample(
            params, examples, positions, jax.random.fold_in(key, rounds), num_samples=G,
            max_new_tokens=int(rollout["max_new_tokens"]), strategy=strategy,
        )
        rounds += 1
        if not rollout["dynamic_sampling"]:
            kept.append(groups)
            break
        mixed = np.asarray(shaping.mixed_groups(groups.rewards))
        kept.append(groups.select(np.nonzero(mixed)[0]))
        dropped.append(groups.select(np.nonzero(~mixed)[0]))
        if rounds >= int(rollout["max_sampling_rounds"]):
            break
    num_mixed = sum(len(g.examples) for g in kept)
    groups = Groups.concatenate([g for g in kept + dropped if len(g.examples)])
    groups = groups.select(np.arange(B))

    batch = assemble(groups, sampler.prompt_bucket, sampler.pad_id)
    N, T = batch["tokens"].shape
    L = groups.completion_tokens.shape[-1]
    P = T - L
    scores = score(params, batch["tokens"], batch["attention_mask"])
    trainer_logp = np.asarray(scores.logprobs)[:, P:]  # [N, L]
    entropy = np.asarray(scores.entropy)[:, P:]
    response_mask = batch["response_mask"]
    sampler_logp = groups.sampler_policy_logp.reshape(N, L)
    gap = np.abs(sampler_logp - trainer_logp)[response_mask > 0]
    batch["old_logp"] = trainer_logp if rollout["old_logp_source"] == "trainer" else sampler_logp
    if reference_params is not None:
        batch["ref_logp"] = np.asarray(
            score(reference_params, batch["tokens"], batch["attention_mask"]).logprobs)[:, P:]

    lengths = groups.completion_mask.sum(-1)  # [B, G]
    rewards = groups.rewards
    if rollout["overlong_buffer"]:
        rewards = rewards + float(rollout["overlong_coef"]) * np.asarray(shaping.overlong_penalty(
            lengths, max_len=int(rollout["max_new_tokens"]),
            cache_len=int(rollout["overlong_buffer"])))
    stats = {
        "logp": batch["old_logp"].reshape(B, G, L),
        "response_mask": response_mask.reshape(B, G, L),
        "prompt_logp": np.asarray(scores.logprobs)[::G, :P],
        "prompt_mask": np.asarray(scores.mask)[::G, :P],
    }
    adv = np.asarray(advantages.compute(
        advantage["estimator"], rewards, stats, **dict(advantage["options"])), np.float32)
    batch["advantages"] = adv.reshape(N, *adv.shape[2:])

    valid = response_mask > 0
    out = {
        "reward_mean": float(groups.rewards.mean()),
        "shaped_reward_mean": float(rewards.mean()),
        **{f"pass@{k}": v for k, v in metrics.pass_at_k_curve(groups.rewards).items()},
        **{k: float(v) for k, v in metrics.group_statistics(groups.rewards).items()
           if k != "reward_mean"},
        **metrics.answer_diversity(groups.answers, groups.rewards),
        "response_length_mean": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "frac_hit_max_tokens": float(np.mean(
            (lengths == L) & ~_ends_with_eos(groups, sampler.eos_ids))),
        "entropy": float(entropy[valid].mean()) if valid.any() else 0.0,
        "sampling_entropy": float(groups.sampling_entropy[groups.completion_mask].mean())
        if valid.any() else 0.0,
        "sampled_token_nll": float(-trainer_logp[valid].mean()) if valid.any() else 0.0,
        "truncated_mass": float(groups.truncated_mass[groups.completion_mask].mean())
        if valid.any() else 0.0,
        "sampler_trainer_logp_gap_mean": float(gap.mean()) if gap.size else 0.0,
        "sampler_trainer_logp_gap_max": float(gap.max()) if gap.size else 0.0,
        "advantage_abs_mean": float(np.abs(adv).mean()),
        "verifier_timeouts": float(groups.timeouts),
        "verifier_crashes": float(groups.crashes),
        "sampling_rounds": float(rounds),
        "mixed_groups_kept": float(min(num_mixed, B)),
        "tokens": float(valid.sum() + np.asarray(batch["attention_mask"][:, :P]).sum()),
    }
    out.update(sampler.task.group_metrics(groups.examples, groups.rewards))
    return batch, out, groups


def _ends_with_eos(groups: Groups, eos_ids: tuple[int, ...]) -> np.ndarray:
    """bool [B, G]: the completion's last generated token is an EOS id."""
    lengths = groups.completion_mask.sum(-1)
    last = np.take_along_axis(groups.completion_tokens, np.maximum(lengths - 1, 0)[..., None],
                              -1)[..., 0]
    return (lengths > 0) & np.isin(last, np.asarray(eos_ids))
