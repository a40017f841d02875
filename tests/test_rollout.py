"""The rollout's pieces on hand-built groups (token layout, dynamic sampling, overlong shaping,
the train batch, metrics), the sampling settings training refuses, one toy step scored at the
sampling temperature (the RL loop on 2 processes: test_train_multiprocess.py)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
import toy

from rlvr_jax import config as config_lib
from rlvr_jax import recipes, rollout, rollout_correction, train
from rlvr_jax.config import base_config
from rlvr_jax.prompt_stream import usable_examples
from rlvr_jax.tasks.prompts import BOXED_INSTRUCTION, prompt_token_mask

E2E = pathlib.Path(__file__).parent / "e2e"
EOS = 9


def make_groups(rewards, lengths, prompt_ids=None, L=4, seed=0) -> rollout.Groups:
    """Groups with ``rewards [B, G]`` and completions of ``lengths [B, G]`` (token ``EOS``
    last when shorter than ``L``), random log-probs and entropies. The last prompt token is
    the question, the last two the user message."""
    rewards = np.asarray(rewards, np.float32)
    lengths = np.asarray(lengths)
    B, G = rewards.shape
    rng = np.random.default_rng(seed)
    mask = np.arange(L) < lengths[..., None]  # [B, G, L]
    tokens = np.where(mask, rng.integers(1, 8, (B, G, L)), 0).astype(np.int32)
    ends = (lengths < L) & (lengths > 0)
    b, g = np.nonzero(ends)
    tokens[b, g, lengths[b, g] - 1] = EOS
    noise = lambda: np.where(mask, rng.normal(size=(B, G, L)), 0).astype(np.float32)  # noqa: E731
    prompt_ids = prompt_ids or [[1, 2]] * B
    return rollout.Groups(
        examples=[{"id": f"q{i}", "question": "?", "answer": "1"} for i in range(B)],
        prompt_ids=prompt_ids,
        prompt_selections=[{"question": np.arange(len(ids)) >= len(ids) - 1,
                            "user_message": np.arange(len(ids)) >= len(ids) - 2}
                           for ids in prompt_ids],
        completion_tokens=tokens, completion_mask=mask,
        sampling_logp=-np.abs(noise()), sampling_entropy=np.abs(noise()),
        truncated_mass=np.zeros((B, G, L), np.float32),
        texts=[["x"] * G for _ in range(B)], rewards=rewards,
        answers=[["1" if r else "2" for r in row] for row in rewards],
    )


def test_prompt_and_completion_tokens_left_pad_prompts_and_repeat_them_per_sample():
    groups = make_groups([[1, 0], [0, 1]], [[1, 3], [4, 0]], prompt_ids=[[5, 6, 7], [8]])
    out = rollout.prompt_and_completion_tokens(groups, bucket=4, pad_id=0)
    prompts = np.asarray([[0, 5, 6, 7], [0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 8]])
    np.testing.assert_array_equal(out["tokens"][:, :4], prompts)
    np.testing.assert_array_equal(out["tokens"][:, 4:], groups.completion_tokens.reshape(4, 4))
    np.testing.assert_array_equal(out["attention_mask"][:, :4], prompts > 0)
    np.testing.assert_array_equal(out["response_mask"].sum(-1), [1, 3, 4, 0])
    assert out["tokens"].dtype == np.int32 and out["response_mask"].dtype == np.float32


def test_shaped_rewards_add_the_overlong_penalty_in_tokens():
    config = base_config()
    config.rollout.max_new_tokens, config.rollout.overlong_buffer = 4, 2
    config.rollout.overlong_coef = 0.5
    groups = make_groups([[1, 1], [0, 1]], [[1, 3], [4, 2]])
    # L_max - L_cache = 2: no penalty up to 2 tokens, (2 - len) / 2 above, so -0.5 and -1.
    np.testing.assert_allclose(rollout.shaped_rewards(groups, config.rollout),
                               [[1.0, 0.75], [-0.5, 1.0]])
    config.rollout.overlong_buffer = 0
    assert rollout.shaped_rewards(groups, config.rollout) is groups.rewards


class FakeSampler:
    """Rewards per prompt position: position p is a mixed group when p % 3 == 0."""

    def __init__(self):
        self.keys = []

    def sample(self, params, examples, positions, key, *, num_samples, max_new_tokens, strategy):
        self.keys.append(key)
        rewards = [[1, 0] if p % 3 == 0 else [1, 1] for p in positions]
        return make_groups(rewards, [[2, 2]] * len(positions))

    def prompt_problem(self, example):
        return None


class CountingTask:
    """A task whose only figures are how many groups it saw and their mean reward."""

    def group_metrics(self, examples, rewards):
        return {"groups/all": float(len(examples)), "reward_mean/all": float(rewards.mean())}


class FakeStream:
    def __init__(self):
        self.position = 0
        self.skipped = 0

    def take(self, n, reject=None):
        positions = np.arange(self.position, self.position + n)
        self.position += n
        return [{"id": int(p)} for p in positions], positions


def test_dynamic_sampling_keeps_mixed_groups_and_fills_up_with_dropped_ones():
    config = base_config()
    config.rollout.prompts_per_step, config.rollout.group_size = 2, 2
    config.rollout.dynamic_sampling = True
    sampler, key = FakeSampler(), jax.random.key(0)
    groups, rounds = rollout.sample_groups(sampler, FakeStream(), None, key, config.rollout)
    # positions 0..5 in rounds of 2: mixed at 0 and 3, so two rounds fill the batch.
    assert (rounds.rounds, rounds.mixed_groups_kept) == (2, 2)
    np.testing.assert_array_equal(groups.rewards, [[1, 0], [1, 0]])
    for i, used in enumerate(sampler.keys):
        np.testing.assert_array_equal(jax.random.key_data(used),
                                      jax.random.key_data(jax.random.fold_in(key, i)))
    config.rollout.max_sampling_rounds = 1
    groups, rounds = rollout.sample_groups(FakeSampler(), FakeStream(), None, key, config.rollout)
    assert (rounds.rounds, rounds.mixed_groups_kept) == (1, 1)
    np.testing.assert_array_equal(groups.rewards, [[1, 0], [1, 1]])  # filled with a dropped one
    config.rollout.dynamic_sampling = False
    groups, rounds = rollout.sample_groups(FakeSampler(), FakeStream(), None, key, config.rollout)
    assert (rounds.rounds, rounds.mixed_groups_kept) == (1, 2)
    np.testing.assert_array_equal(groups.rewards, [[1, 0], [1, 1]])


def test_sampler_rejects_prompts_over_max_prompt_len():
    """The toy tokenizer has one token per character: the prompt is ``<user>`` + question +
    ``<assistant>``, so a question of n characters has n + 2 tokens."""
    from rlvr_jax.tasks import PromptFormat, Task

    task = Task("t", load_split=None, verifier=None,
                prompt_format=PromptFormat(instruction="", system_prompt=None))
    sampler = rollout.Sampler(None, toy.make_tokenizer(), task, max_prompt_len=8,
                              prompt_bucket=8, length_bucket=4, eos_ids=(1,), pad_id=0,
                              unstack_layers=False)
    fits, over = {"id": "fits", "question": "a" * 6}, {"id": "over", "question": "a" * 7}
    assert sampler.prompt_problem(fits) is None
    assert sampler.prompt_problem(over) == (
        "its prompt has 9 tokens, more than rollout.max_prompt_len=8")
    assert usable_examples([over, fits, over], sampler.prompt_problem, "evaluation") == [fits]


def test_outcome_metrics_describe_every_sampled_group_and_the_kept_ones_apart():
    """Positions 0..3 are drawn in two rounds, rewards [1, 0], [1, 1], [1, 1], [1, 0]; dynamic
    sampling keeps the two mixed groups. Unprefixed figures describe all four, kept/ the two."""
    config = base_config()
    config.rollout.prompts_per_step, config.rollout.group_size = 2, 2
    config.rollout.dynamic_sampling = True
    sampler = FakeSampler()
    sampler.prompt_bucket, sampler.pad_id, sampler.eos_ids = 2, 0, (EOS,)
    sampler.task = CountingTask()
    _, out, groups = rollout.collect(sampler, FakeStream(), None, jax.random.key(0), config)
    np.testing.assert_array_equal(groups.rewards, [[1, 0], [1, 0]])
    expected = {
        "reward_mean": 0.75, "kept/reward_mean": 0.5,
        "frac_all_correct": 0.5, "kept/frac_all_correct": 0.0,
        "frac_mixed": 0.5, "kept/frac_mixed": 1.0,
        "frac_all_wrong": 0.0, "kept/frac_all_wrong": 0.0,
        "pass@1": 0.75, "kept/pass@1": 0.5, "pass@2": 1.0, "kept/pass@2": 1.0,
        "distinct_answers": 1.5, "kept/distinct_answers": 2.0,
        "kept/shaped_reward_mean": 0.5, "sampled_groups": 4.0, "sampling_rounds": 2.0,
        "groups/all": 4.0, "kept/groups/all": 2.0,
        "reward_mean/all": 0.75, "kept/reward_mean/all": 0.5,
    }
    assert {key: out[key] for key in expected} == expected
    assert "shaped_reward_mean" not in out  # shaped rewards exist for the train batch only
    config.rollout.dynamic_sampling = False  # nothing filtered: nothing to tell apart
    _, out, _ = rollout.collect(sampler, FakeStream(), None, jax.random.key(0), config)
    assert not any(key.startswith("kept/") for key in out) and "sampled_groups" not in out
    assert (out["reward_mean"], out["shaped_reward_mean"], out["groups/all"]) == (0.75, 0.75, 2)


def policy_for(groups, seed=1) -> dict[str, np.ndarray]:
    """Host rollout-policy arrays as the train step returns them: response log-probs and
    entropies ``[N, L]`` and advantages ``[N]``."""
    B, G, L = groups.completion_tokens.shape
    rng = np.random.default_rng(seed)
    logp = -np.abs(rng.normal(size=(B * G, L))).astype(np.float32)
    return {"logp": logp, "entropy": np.abs(logp) + 1,
            "advantages": rng.normal(size=B * G).astype(np.float32)}


@pytest.mark.parametrize("source", ["trainer", "sampler"])
def test_train_batch_holds_rewards_and_the_old_logprobs_of_the_sampler_source(source):
    config = base_config()
    config.rollout.old_logp_source = source
    groups = make_groups([[1, 0, 0], [1, 1, 0]], [[4, 2, 1], [3, 4, 4]])
    tokens = rollout.prompt_and_completion_tokens(groups, bucket=2, pad_id=0)
    reference = np.random.default_rng(2).normal(size=(6, 6)).astype(np.float32)
    batch = rollout.train_batch(groups, tokens, groups.rewards - 0.5, config, reference)
    np.testing.assert_array_equal(batch["rewards"], [0.5, -0.5, -0.5, 0.5, 0.5, -0.5])
    np.testing.assert_array_equal(batch["ref_logp"], reference[:, 2:])
    if source == "sampler":  # the step takes them as the old policy
        np.testing.assert_array_equal(batch["old_logp"], groups.sampling_logp.reshape(6, 4))
    else:  # the step scores the old policy itself
        assert "old_logp" not in batch
    assert "sampling_logp" not in batch and "prompt_mask" not in batch


@pytest.mark.parametrize("selection, counted", [
    ("question", [[0, 0, 0, 1], [0, 0, 0, 1]]),
    ("user_message", [[0, 0, 1, 1], [0, 0, 1, 1]]),
    ("templated_prompt", [[0, 1, 1, 1], [0, 0, 1, 1]]),
])
def test_train_batch_gives_progrpo_the_selected_prompt_tokens_of_each_group(selection, counted):
    config = recipes.apply_variant(base_config(), "progrpo")
    config.advantage.prompt_tokens = selection
    groups = make_groups([[1, 0], [0, 1]], [[4, 2], [3, 4]], prompt_ids=[[5, 6, 7], [8, 9]])
    tokens = rollout.prompt_and_completion_tokens(groups, bucket=4, pad_id=0)
    batch = rollout.train_batch(groups, tokens, groups.rewards, config)
    np.testing.assert_array_equal(batch["prompt_mask"], np.repeat(counted, 2, axis=0))


def test_train_batch_gives_the_correction_the_sampler_logprobs():
    config = base_config()
    config.rollout.correction = "token"
    groups = make_groups([[1, 0, 0], [1, 1, 0]], [[4, 2, 1], [3, 4, 4]])
    tokens = rollout.prompt_and_completion_tokens(groups, bucket=2, pad_id=0)
    batch = rollout.train_batch(groups, tokens, groups.rewards, config)
    np.testing.assert_array_equal(batch["sampling_logp"], groups.sampling_logp.reshape(6, 4))
    assert "old_logp" not in batch  # the trainer's, scored by the step


def test_policy_metrics_log_the_correction_weights_of_the_trainer_logprobs():
    config = base_config()
    config.rollout.correction = "sequence"
    groups = make_groups([[1, 0], [0, 0]], [[4, 2], [1, 4]])
    tokens = rollout.prompt_and_completion_tokens(groups, bucket=2, pad_id=0)
    batch = rollout.train_batch(groups, tokens, groups.rewards, config)
    policy = policy_for(groups)
    out = rollout.policy_metrics(groups, batch, policy, config)
    expected = rollout_correction.weight_statistics(
        policy["logp"], groups.sampling_logp.reshape(4, -1), batch["response_mask"],
        level="sequence", cap=2.0)
    assert expected["correction_weight_max"] > 0
    assert {key: out[key] for key in expected} == expected
    config.rollout.correction = "none"
    assert "correction_weight_max" not in rollout.policy_metrics(groups, batch, policy, config)


def test_prompt_selection_without_tokenizer_offsets_is_a_clear_error():
    config = recipes.apply_variant(base_config(), "progrpo")
    groups = make_groups([[1, 0]], [[4, 2]])
    groups.prompt_selections = [{}]  # what a tokenizer without offsets gives
    tokens = rollout.prompt_and_completion_tokens(groups, bucket=2, pad_id=0)
    with pytest.raises(ValueError, match=r"prompt_tokens='question' needs the tokenizer's "
                                         r"character offsets.*'templated_prompt'"):
        rollout.train_batch(groups, tokens, groups.rewards, config)
    config.advantage.prompt_tokens = "templated_prompt"
    rollout.train_batch(groups, tokens, groups.rewards, config)
    rollout.train_batch(groups, tokens, groups.rewards, base_config())  # grpo: unused


@pytest.fixture(scope="module")
def smollm2():
    from rlvr_jax import models

    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.mark.parametrize("selection", ["question", "user_message", "templated_prompt"])
def test_sampler_prompts_select_the_question_the_user_message_or_everything(smollm2,
                                                                            selection):
    """Through Sampler.encode, Groups and the left-padded [B, P] mask, on SmolLM2's template."""
    from rlvr_jax.tasks import PromptFormat, Task

    task = Task("t", load_split=None, verifier=None, prompt_format=PromptFormat())
    sampler = rollout.Sampler(None, smollm2, task, max_prompt_len=256, prompt_bucket=64,
                              length_bucket=64, eos_ids=(2,), pad_id=2, unstack_layers=False)
    examples = [{"id": 0, "question": "What is 12 + 30?"},
                {"id": 1, "question": "Name the largest prime below 100."}]
    prompt_ids, selections = sampler.encode(examples)
    groups = make_groups([[1, 0], [0, 1]], [[4, 2], [3, 4]], prompt_ids=prompt_ids)
    groups.prompt_selections = selections
    P = rollout.prompt_and_completion_tokens(groups, 64, pad_id=2)["tokens"].shape[1] - 4
    mask = prompt_token_mask(groups.prompt_ids, groups.prompt_selections, selection, P)
    for row, example in enumerate(examples):
        ids = np.asarray(prompt_ids[row])
        text = smollm2.decode(np.pad(ids, (P - len(ids), 0))[mask[row]])
        expected = {"question": example["question"],
                    "user_message": f"{example['question']}\n\n{BOXED_INSTRUCTION}",
                    "templated_prompt": task.format_prompt(example, smollm2)}[selection]
        assert text == expected


def test_rollout_and_policy_metrics_by_hand():
    config = base_config()
    groups = make_groups([[1, 0], [0, 0]], [[4, 2], [1, 4]])
    groups.completion_tokens[1, 1, 3] = EOS  # ends at the limit with EOS: not cut off
    tokens = rollout.prompt_and_completion_tokens(groups, bucket=2, pad_id=0)
    batch = rollout.train_batch(groups, tokens, groups.rewards - 0.5, config)
    rounds = rollout.SamplingRounds(rounds=3, mixed_groups_kept=1)
    out = rollout.rollout_metrics(groups, batch, groups.rewards - 0.5, rounds, (EOS,))
    assert out["reward_mean"] == 0.25 and out["shaped_reward_mean"] == -0.25
    assert out["frac_hit_max_tokens"] == 0.25  # only row (0, 0): 4 tokens, no EOS
    assert out["response_length_mean"] == 2.75 and out["response_length_max"] == 4
    assert out["tokens"] == 11 + 2 * 4  # response tokens + real prompt tokens
    assert (out["sampling_rounds"], out["mixed_groups_kept"]) == (3, 1)
    assert out["frac_all_wrong"] == 0.5 and out["pass@2"] == 0.5
    policy = policy_for(groups)
    out = rollout.policy_metrics(groups, batch, policy, config)
    valid = groups.completion_mask.reshape(4, 4)
    gap = np.abs(groups.sampling_logp.reshape(4, 4) - policy["logp"])[valid]
    np.testing.assert_allclose(out["entropy"], policy["entropy"][valid].mean(), rtol=1e-6)
    np.testing.assert_allclose(out["sampled_token_nll"], -policy["logp"][valid].mean(),
                               rtol=1e-6)
    np.testing.assert_allclose(out["sampler_trainer_logp_gap_mean"], gap.mean(), rtol=1e-6)
    np.testing.assert_allclose(out["sampler_trainer_logp_gap_max"], gap.max(), rtol=1e-6)
    np.testing.assert_allclose(out["advantage_abs_mean"], np.abs(policy["advantages"]).mean(),
                               rtol=1e-6)


def test_entropy_split_by_correctness_on_a_hand_built_batch():
    config = base_config()
    groups = make_groups([[1, 0], [0, 0]], [[4, 2], [1, 4]])  # rows: correct, then 3 wrong
    tokens = rollout.prompt_and_completion_tokens(groups, bucket=2, pad_id=0)
    row_entropy = np.array([1.0, 2.0, 3.0, 5.0], np.float32)  # the same at every position
    entropy = np.broadcast_to(row_entropy[:, None], (4, 4)).copy()
    entropy[~groups.completion_mask.reshape(4, 4)] = 100.0  # padding: never counted
    policy = {**policy_for(groups), "entropy": entropy}
    batch = rollout.train_batch(groups, tokens, groups.rewards, config)
    out = rollout.policy_metrics(groups, batch, policy, config)
    assert out["entropy_correct"] == pytest.approx(1.0)  # row 0's 4 tokens
    assert out["entropy_incorrect"] == pytest.approx((2 * 2 + 3 * 1 + 5 * 4) / 7)
    assert out["entropy"] == pytest.approx((1 * 4 + 2 * 2 + 3 * 1 + 5 * 4) / 11)
    wrong = dataclasses.replace(groups, rewards=np.zeros_like(groups.rewards))
    out = rollout.policy_metrics(wrong, batch, policy, config)
    assert np.isnan(out["entropy_correct"])  # no correct response: undefined, not 0
    assert out["entropy_incorrect"] == pytest.approx(out["entropy"])


@pytest.mark.parametrize("key, value", [("top_k", 20), ("top_p", 0.9), ("min_p", 0.05)])
def test_validate_refuses_truncated_training_rollouts_but_not_truncated_evaluation(key, value):
    config = base_config()
    config.eval.sampling[key] = value
    config_lib.validate(config)  # evaluation only needs rewards
    config.rollout.sampling[key] = value
    with pytest.raises(ValueError, match=rf"rollout\.sampling\.{key}={value} truncates .*"
                                         r"untruncated policy at the sampling temperature"):
        config_lib.validate(config)


def test_validate_refuses_greedy_training_rollouts_but_not_greedy_evaluation():
    config = base_config()
    config.eval.sampling.temperature = 0.0
    config_lib.validate(config)
    config.rollout.sampling.temperature = 0.0
    with pytest.raises(ValueError, match=r"rollout\.sampling\.temperature=0 is greedy"):
        config_lib.validate(config)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    return toy.write_model(str(tmp_path_factory.mktemp("toy_model")))


def test_first_update_scores_the_rollout_at_the_sampling_temperature(tmp_path, toy_model):
    """One toy training step at T = 0.7 with the sampler's old log-probs: the trainer scores
    the sampled tokens as the sampler did (log-prob gap ~0, every ratio of the first update 1)
    and the first update's full-vocabulary entropy is the rollout's sampling entropy."""
    toy.register()
    config = toy.toy_config(toy_model)
    config.total_steps = 1
    config.rollout.sampling.temperature = 0.7
    config.rollout.old_logp_source = "sampler"
    config.eval.num_prompts = config.eval.samples_per_prompt = 1
    config.logging.tensorboard = False
    train.run(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        row = next(r for r in map(json.loads, f) if "update/entropy" in r)
    assert row["train/sampler_trainer_logp_gap_max"] < 1e-4
    assert abs(row["update/ratio_max"] - 1) < 1e-4 and abs(row["update/ratio_min"] - 1) < 1e-4
    np.testing.assert_allclose(row["update/entropy"], row["train/sampling_entropy"], atol=1e-5)
    np.testing.assert_allclose(row["train/entropy"], row["train/sampling_entropy"], atol=1e-5)
