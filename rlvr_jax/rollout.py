"""Prompts -> groups of completions -> verified rewards -> a training batch.

One rollout step, host side around the compiled ``sampling.generate`` on the training
parameters, in pieces that each do one thing (:func:`collect` composes them):

1. :func:`sample_groups`: ``B`` prompts from a deterministic, resumable :class:`PromptStream`,
   chat-formatted and left-padded (lengths rounded up to ``rollout.prompt_bucket``), ``G``
   completions each, verified into rewards ``[B, G]`` (process pool, timeouts). An example
   whose prompt is over ``rollout.max_prompt_len`` is passed over with a warning and counted
   (``prompts_skipped``), so one bad example never stops a run or its resume. Random numbers
   depend only on the run seed, the step and the prompt's stream position, so two runs that
   differ only in the estimator see identical first rollouts (paired-seed experiments). With
   ``rollout.dynamic_sampling`` groups whose rewards are all equal are dropped and new prompts
   drawn (:class:`SamplingRounds` counts them and keeps every group drawn).
2. :func:`prompt_and_completion_tokens`: the ``[N, P + L]`` token arrays (``N = B * G``).
3. With the KL term, the frozen reference policy's log-probs (``logprobs.make_logprob_fn``) at
   the sampling temperature, fetched to every host.
4. :func:`shaped_rewards` (DAPO's overlong penalty in tokens) and :func:`train_batch`: what the
   train step needs to score the rollout policy and run the estimator in its own compiled
   program (``train_step``: old log-probs, estimator statistics, advantages and the update).
5. :func:`rollout_metrics`: the figures of the rollout that need no policy scores, a pure
   function of the above; :func:`policy_metrics`: those of the rollout policy's scores the
   train step returns (entropies, the sampler-vs-trainer gap, advantages). The outcome figures
   (rewards, pass@k, group fractions, answer diversity) describe every group sampled, before
   DAPO's dynamic-sampling filter; with the filter on, the same figures of the kept groups (the
   train batch) are logged under ``kept/``.

The result is the train batch of ``train_step`` (``N = B * G`` rows) and a dict of metrics.
Multi-host: every process draws the same global prompts and gathers the generations; each
process verifies its own slice of the completions and the rewards are all-gathered
(``rewards.distributed``), so no verifier work is repeated; the train batch is then assembled
from each host's rows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from rlvr_jax import advantages, logprobs, metrics, models, rollout_correction, sampling, shaping
from rlvr_jax.prompt_stream import PromptStream
from rlvr_jax.rewards.distributed import verify_across_processes
from rlvr_jax.tasks.prompts import encode_prompt, prompt_token_mask

Batch = dict[str, np.ndarray]


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


_ARRAY_FIELDS = ("completion_tokens", "completion_mask", "sampling_logp", "sampling_entropy",
                 "truncated_mass", "rewards")  # leading axis B
_LIST_FIELDS = ("examples", "prompt_ids", "prompt_selections", "texts", "answers")  # B entries


@dataclasses.dataclass
class Groups:
    """``B`` prompts with ``G`` completions each, on the host."""

    examples: list[dict[str, Any]]
    prompt_ids: list[list[int]]  # B token lists, unpadded
    prompt_selections: list[dict[str, np.ndarray]]  # B dicts: "question" / "user_message" ->
    # bool [len(prompt_ids[b])] (prompts.encode_prompt; empty without tokenizer offsets)
    completion_tokens: np.ndarray  # [B, G, L] int32
    completion_mask: np.ndarray  # [B, G, L] bool
    sampling_logp: np.ndarray  # [B, G, L] log-probs of the distribution sampled from
    sampling_entropy: np.ndarray  # [B, G, L]
    truncated_mass: np.ndarray  # [B, G, L]
    texts: list[list[str]]  # [B][G] decoded completions
    rewards: np.ndarray  # [B, G] verifier rewards in {0, 1}
    answers: list[list[str | None]]  # [B][G] extracted final answers
    timeouts: int = 0
    crashes: int = 0
    generation_seconds: float = 0.0  # wall time of sampling.generate (to the host arrays)
    verification_seconds: float = 0.0  # wall time of decoding and verifying the completions

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
            generation_seconds=sum(p.generation_seconds for p in parts),
            verification_seconds=sum(p.verification_seconds for p in parts),
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
    unstack_layers: bool  # sampling.generate's per-layer decode loop
    mesh_and_rules: tuple[Any, Any] | None = None  # the run's (mesh, rules): decode rows
    # sharded over the batch mesh axes (sampling.generate); None: every device decodes all

    def prompt_problem(self, example: dict[str, Any]) -> str | None:
        """Why ``example`` cannot be sampled (its prompt is over ``max_prompt_len`` tokens), or
        None when it can: the ``reject`` of :meth:`PromptStream.take`."""
        prompt = encode_prompt(self.task.render_prompt(example, self.tokenizer), self.tokenizer)
        if len(prompt.ids) > self.max_prompt_len:
            return (f"its prompt has {len(prompt.ids)} tokens, more than "
                    f"rollout.max_prompt_len={self.max_prompt_len}")
        return None

    def encode(
        self, examples: list[dict[str, Any]]
    ) -> tuple[list[list[int]], list[dict[str, np.ndarray]]]:
        """Chat-formatted prompt token lists and their question / user-message token masks
        (``prompts.encode_prompt``); raises on a prompt over ``max_prompt_len``."""
        ids, selections = [], []
        for example in examples:
            prompt = encode_prompt(self.task.render_prompt(example, self.tokenizer),
                                   self.tokenizer)
            if len(prompt.ids) > self.max_prompt_len:
                raise ValueError(
                    f"prompt of example {example.get('id')!r} has {len(prompt.ids)} tokens, more "
                    f"than rollout.max_prompt_len={self.max_prompt_len}"
                )
            ids.append(prompt.ids)
            selections.append(prompt.selections)
        return ids, selections

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
        began = time.perf_counter()
        prompt_ids, prompt_selections = self.encode(examples)
        tokens, mask = left_pad(prompt_ids, self.prompt_bucket, self.pad_id)
        generation = sampling.generate(
            self.model_config, params, tokens, mask, key, max_new_tokens=max_new_tokens,
            num_samples=num_samples, strategy=strategy, eos_ids=self.eos_ids,
            prompt_ids=np.asarray(positions, np.int32), pad_id=self.pad_id,
            prompt_bucket=self.prompt_bucket, length_bucket=self.length_bucket,
            unstack_layers=self.unstack_layers, mesh_and_rules=self.mesh_and_rules,
        )
        host = {name: to_host(value) for name, value in generation._asdict().items()}
        generated = time.perf_counter()
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
            examples=examples, prompt_ids=prompt_ids, prompt_selections=prompt_selections,
            completion_tokens=host["tokens"], completion_mask=host["mask"],
            sampling_logp=host["sampling_logprobs"], sampling_entropy=host["sampling_entropy"],
            truncated_mass=host["truncated_mass"],
            texts=texts, rewards=np.asarray(report.rewards, np.float32).reshape(B, G),
            answers=[[self.task.extract_answer(t, example) for t in group]
                     for group, example in zip(texts, examples, strict=True)],
            timeouts=report.timeouts, crashes=report.crashes,
            generation_seconds=generated - began,
            verification_seconds=time.perf_counter() - generated,
        )


def prompt_and_completion_tokens(groups: Groups, bucket: int, pad_id: int) -> Batch:
    """Train-batch token arrays for ``N = B * G`` rows: prompt (left-padded) + completion."""
    prompt_tokens, prompt_mask = left_pad(groups.prompt_ids, bucket, pad_id)  # [B, P]
    B, G, L = groups.completion_tokens.shape
    repeat = lambda x: np.repeat(x, G, axis=0)  # noqa: E731
    tokens = np.concatenate([repeat(prompt_tokens), groups.completion_tokens.reshape(B * G, L)], 1)
    mask = np.concatenate([repeat(prompt_mask), groups.completion_mask.reshape(B * G, L)], 1)
    return {
        "tokens": tokens.astype(np.int32),  # [N, P + L]
        "attention_mask": mask,  # [N, P + L]
        "response_mask": groups.completion_mask.reshape(B * G, L).astype(np.float32),  # [N, L]
    }


@dataclasses.dataclass(frozen=True)
class SamplingRounds:
    """How dynamic sampling filled the batch: rounds drawn, mixed groups kept (at most B), and
    every group drawn before the filter (``None`` without dynamic sampling: the batch's groups
    are all that was drawn)."""

    rounds: int
    mixed_groups_kept: int
    sampled: Groups | None = None
    prompts_skipped: int = 0  # examples passed over for a prompt over max_prompt_len


def sample_groups(
    sampler: Sampler, stream: PromptStream, params: Any, key: jax.Array,
    rollout: ml_collections.ConfigDict,
) -> tuple[Groups, SamplingRounds]:
    """``B = rollout.prompts_per_step`` groups of ``G = rollout.group_size`` completions.

    Without ``rollout.dynamic_sampling``: the next ``B`` prompts of the stream. With it, groups
    whose rewards are all equal are dropped and ``B`` more prompts drawn, up to
    ``rollout.max_sampling_rounds`` rounds; a batch still short is filled with dropped groups.
    Round ``i`` samples with ``fold_in(key, i)``.
    """
    B = rollout.prompts_per_step
    strategy = sampling.SamplingStrategy(**rollout.sampling)
    kept: list[Groups] = []
    dropped: list[Groups] = []
    drawn: list[Groups] = []
    rounds = 0
    skipped_before = stream.skipped
    while sum(len(g.examples) for g in kept) < B:
        examples, positions = stream.take(B, sampler.prompt_problem)
        groups = sampler.sample(
            params, examples, positions, jax.random.fold_in(key, rounds),
            num_samples=rollout.group_size, max_new_tokens=rollout.max_new_tokens,
            strategy=strategy,
        )
        rounds += 1
        if not rollout.dynamic_sampling:
            kept.append(groups)
            break
        drawn.append(groups)
        mixed = np.asarray(shaping.mixed_groups(groups.rewards))
        kept.append(groups.select(np.nonzero(mixed)[0]))
        dropped.append(groups.select(np.nonzero(~mixed)[0]))
        if rounds >= rollout.max_sampling_rounds:
            break
    num_mixed = sum(len(g.examples) for g in kept)
    groups = Groups.concatenate([g for g in kept + dropped if len(g.examples)])
    sampled = Groups.concatenate(drawn) if drawn else None
    return groups.select(np.arange(B)), SamplingRounds(rounds, min(num_mixed, B), sampled,
                                                       stream.skipped - skipped_before)


def shaped_rewards(groups: Groups, rollout: ml_collections.ConfigDict) -> np.ndarray:
    """Verifier rewards ``[B, G]`` plus DAPO's overlong penalty (in tokens) when
    ``rollout.overlong_buffer > 0``."""
    if not rollout.overlong_buffer:
        return groups.rewards
    lengths = groups.completion_mask.sum(-1)  # [B, G]
    penalty = shaping.overlong_penalty(lengths, max_len=rollout.max_new_tokens,
                                       cache_len=rollout.overlong_buffer)
    return groups.rewards + rollout.overlong_coef * np.asarray(penalty)


def train_batch(
    groups: Groups,
    tokens: Batch,
    rewards: np.ndarray,
    config: ml_collections.ConfigDict,
    reference_logp: np.ndarray | None = None,
) -> Batch:
    """The train batch of ``train_step``: ``tokens`` plus what the step needs to score the
    rollout policy and run ``config.advantage`` itself.

    ``rewards [B, G]`` (shaped) become ``rewards [N]``, rows group-major. The sampler's
    log-probs of the tempered distribution are the old log-probs (``old_logp``) when
    ``rollout.old_logp_source == "sampler"``, and the correction's denominator
    (``sampling_logp``) with ``rollout.correction``; an estimator that reads prompt tokens gets
    ``prompt_mask [N, P]``, the tokens ``config.advantage.prompt_tokens`` selects
    (``prompts.prompt_token_mask``); the KL term gets the reference's response log-probs
    (``reference_logp [N, T]`` -> ``ref_logp [N, L]``).
    """
    G, L = groups.completion_tokens.shape[1:]
    N, T = tokens["tokens"].shape
    P = T - L
    batch = {**tokens, "rewards": np.asarray(rewards, np.float32).reshape(N)}
    sampling_logp = groups.sampling_logp.reshape(N, L).astype(np.float32)
    if config.rollout.old_logp_source == "sampler":
        batch["old_logp"] = sampling_logp
    if config.rollout.correction != "none":
        batch["sampling_logp"] = sampling_logp
    if "prompt_mask" in advantages.spec(config.advantage.estimator).inputs:
        batch["prompt_mask"] = np.repeat(prompt_token_mask(  # [N, P]
            groups.prompt_ids, groups.prompt_selections, config.advantage.prompt_tokens, P),
            G, axis=0)
    if reference_logp is not None:
        batch["ref_logp"] = reference_logp[:, P:]
    return batch


def outcome_metrics(groups: Groups) -> dict[str, float]:
    """Mean verifier reward, unbiased pass@k (``k = 1..G``), fractions of all-correct /
    all-wrong / mixed groups and answer diversity of ``groups``."""
    return {
        **{k: float(v) for k, v in metrics.group_statistics(groups.rewards).items()},
        **{f"pass@{k}": v for k, v in metrics.pass_at_k_curve(groups.rewards).items()},
        **metrics.answer_diversity(groups.answers, groups.rewards),
    }


def sampled_and_kept(
    figures: Callable[[Groups], dict[str, float]], groups: Groups, rounds: SamplingRounds
) -> dict[str, float]:
    """``figures`` of every group sampled and, when dynamic sampling filtered them, of the
    kept ``groups`` (the train batch) under ``kept/``."""
    if rounds.sampled is None:
        return figures(groups)
    return {**figures(rounds.sampled), **{f"kept/{k}": v for k, v in figures(groups).items()}}


def rollout_metrics(
    groups: Groups,
    batch: Batch,
    rewards: np.ndarray,
    rounds: SamplingRounds,
    eos_ids: tuple[int, ...],
) -> dict[str, float]:
    """Figures of one rollout that need no policy scores, from the host arrays alone.

    :func:`outcome_metrics` of every group sampled (before dynamic sampling's filter; those of
    the kept groups under ``kept/`` when it filtered), the mean shaped reward of the train
    batch (``kept/shaped_reward_mean`` when filtered), response lengths, the sampler's
    full-vocabulary entropy, verifier timeouts / crashes, dynamic-sampling rounds (and
    ``sampled_groups``) and the tokens seen.
    """
    L = groups.completion_tokens.shape[-1]
    P = batch["tokens"].shape[1] - L
    valid = batch["response_mask"] > 0  # [N, L]
    lengths = groups.completion_mask.sum(-1)  # [B, G]
    filtered = rounds.sampled is not None
    return {
        **sampled_and_kept(outcome_metrics, groups, rounds),
        ("kept/" if filtered else "") + "shaped_reward_mean": float(rewards.mean()),
        **({"sampled_groups": float(len(rounds.sampled.examples))} if filtered else {}),
        "response_length_mean": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "frac_hit_max_tokens": float(np.mean((lengths == L) & ~_ends_with_eos(groups, eos_ids))),
        "sampling_entropy": _masked_mean(groups.sampling_entropy, groups.completion_mask),
        "truncated_mass": _masked_mean(groups.truncated_mass, groups.completion_mask),
        "verifier_timeouts": float(groups.timeouts),
        "verifier_crashes": float(groups.crashes),
        "sampling_rounds": float(rounds.rounds),
        "mixed_groups_kept": float(rounds.mixed_groups_kept),
        "tokens": float(valid.sum() + batch["attention_mask"][:, :P].sum()),
    }


def _masked_mean(x: np.ndarray, mask: np.ndarray, empty: float = 0.0) -> float:
    mask = np.asarray(mask, bool)
    return float(x[mask].mean()) if mask.any() else empty


def policy_metrics(
    groups: Groups,
    batch: Batch,
    rollout_policy: Batch,
    config: ml_collections.ConfigDict,
) -> dict[str, float]:
    """Figures of the rollout policy's scores, which the train step computes
    (``rollout_policy``: host ``logp``, ``entropy`` ``[N, L]``, ``advantages``).

    Full-vocabulary ``entropy`` over all response tokens, and split into the tokens of correct
    and of incorrect responses (``entropy_correct``, ``entropy_incorrect``; NaN when a batch has
    no such token), the sampled-token NLL (named as such), the sampler-vs-trainer log-prob gap,
    the mean ``|advantage|`` and, with ``rollout.correction``, the weights' statistics. The
    trainer's figures are at the sampling temperature, so ``entropy`` matches
    ``sampling_entropy`` and the gap compares the two old log-probs ``rollout.old_logp_source``
    chooses between (what enters the ratio).
    """
    valid = batch["response_mask"] > 0  # [N, L]
    N, L = valid.shape
    correct = (groups.rewards > 0).reshape(N, 1)  # [N, 1] the verifier's verdict on the row
    trainer_logp, entropy = rollout_policy["logp"], rollout_policy["entropy"]  # [N, L]
    sampler_logp = groups.sampling_logp.reshape(N, L)
    gap = np.abs(sampler_logp - trainer_logp)[valid]
    out = {
        "entropy": _masked_mean(entropy, valid),
        "entropy_correct": _masked_mean(entropy, valid & correct, float("nan")),
        "entropy_incorrect": _masked_mean(entropy, valid & ~correct, float("nan")),
        "sampled_token_nll": _masked_mean(-trainer_logp, valid),
        "sampler_trainer_logp_gap_mean": float(gap.mean()) if gap.size else 0.0,
        "sampler_trainer_logp_gap_max": float(gap.max()) if gap.size else 0.0,
        "advantage_abs_mean": float(np.abs(rollout_policy["advantages"]).mean()),
    }
    if config.rollout.correction != "none":
        out.update(rollout_correction.weight_statistics(
            trainer_logp, sampler_logp, batch["response_mask"], level=config.rollout.correction,
            cap=config.rollout.correction_cap))
    return out


def collect(
    sampler: Sampler,
    stream: PromptStream,
    params: Any,
    key: jax.Array,
    config: ml_collections.ConfigDict,
    logprob_fn: Callable[..., logprobs.TokenLogprobs] | None = None,
    reference_params: Any = None,
) -> tuple[Batch, dict[str, float], Groups]:
    """One rollout: the train batch, its metrics (:func:`rollout_metrics`), and the groups
    (for :func:`policy_metrics` after the step, and sample logging).

    Composes the pieces above around the compiled sampler; ``logprob_fn`` scores the batch
    under ``reference_params`` when the KL term has a reference (``time``: ``scoring_seconds``).
    For a ``mixture`` task the metrics also hold ``reward_mean/<component>`` and
    ``groups/<component>`` (see ``MixtureTask.group_metrics``), of every group sampled and,
    under dynamic sampling, of the kept ones under ``kept/``.
    """
    groups, rounds = sample_groups(sampler, stream, params, key, config.rollout)
    tokens = prompt_and_completion_tokens(groups, sampler.prompt_bucket, sampler.pad_id)
    scoring_began = time.perf_counter()
    reference_logp = None
    if reference_params is not None:
        reference_logp = to_host(logprob_fn(
            reference_params, tokens["tokens"], tokens["attention_mask"],
            temperature=config.rollout.sampling.temperature).logprobs)  # what was sampled
    scoring_seconds = time.perf_counter() - scoring_began
    rewards = shaped_rewards(groups, config.rollout)
    batch = train_batch(groups, tokens, rewards, config, reference_logp)
    out = rollout_metrics(groups, batch, rewards, rounds, sampler.eos_ids)
    out["prompts_skipped"] = float(rounds.prompts_skipped)
    out["scoring_seconds"] = scoring_seconds
    out.update(sampled_and_kept(lambda g: sampler.task.group_metrics(g.examples, g.rewards),
                                groups, rounds))
    return batch, out, groups


def _ends_with_eos(groups: Groups, eos_ids: tuple[int, ...]) -> np.ndarray:
    """bool [B, G]: the completion's last generated token is an EOS id."""
    lengths = groups.completion_mask.sum(-1)
    last = np.take_along_axis(groups.completion_tokens, np.maximum(lengths - 1, 0)[..., None],
                              -1)[..., 0]
    return (lengths > 0) & np.isin(last, np.asarray(eos_ids))
