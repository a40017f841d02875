"""Task mixtures: proportions, determinism and resumption, per-component verification, prompts,
answer extraction, errors, the LENS recipe's mixture, and per-component training metrics."""

import ast
import collections
import fractions
import importlib.util
import json
import operator
import pathlib

import numpy as np
import pytest

from rlvr_jax import config as config_lib
from rlvr_jax import rollout, tasks
from rlvr_jax.rewards.verification import Status, Verification
from rlvr_jax.tasks.mixture import MixtureSource, parse_components, position_counts
from rlvr_jax.tasks.prompts import BOXED_INSTRUCTION, PromptFormat

ROOT = pathlib.Path(__file__).parent.parent
CLOSED = collections.Counter()


class ExactVerifier:
    """In-process: a completion is right when it equals the answer; the answer is its last
    word; ``close`` is counted in ``CLOSED`` under ``tag``."""

    def __init__(self, tag: str):
        self.tag = tag

    def extract(self, completion):
        return completion.split()[-1] if completion.split() else None

    def verify(self, completions, references):
        scores = [float(c == r) for c, r in zip(completions, references, strict=True)]
        return Verification(np.asarray(scores, np.float32), (Status.OK,) * len(scores))

    def close(self):
        CLOSED.update([self.tag])


def _fake_task(size: int = 10, tag: str = "fake", instruction: str = "Say it.") -> tasks.Task:
    """``size`` examples ``{'id': '<tag>/<i>', 'question': 'q<i>', 'answer': '<i>'}``."""
    data = [{"id": f"{tag}/{i}", "question": f"q{i}", "answer": str(i)} for i in range(size)]
    return tasks.Task(name=tag, load_split=lambda split: data, verifier=ExactVerifier(tag),
                      prompt_format=PromptFormat(instruction=instruction))


tasks.register("fake_for_mixture", _fake_task)


def fake(size, weight, tag, **extra):
    return {"name": "fake_for_mixture", "weight": weight, "label": tag,
            "options": {"size": size, "tag": tag, **extra}}


def ids(examples):
    return [example["id"] for example in examples]


@pytest.mark.parametrize("sizes, weights, counts", [
    ([50, 30], [3, 1], [90, 30]),  # L = max(ceil(50 / .75), ceil(30 / .25)) = 120
    ([7, 5], [0.5, 0.5], [7, 7]),  # L = max(14, 10)
    ([3, 3], [1, 2], [3, 6]),  # L = max(9, ceil(4.5))
    ([1, 1, 1], [1, 1, 1.5], [1, 1, 2]),  # L = 4; quotas 8/7, 8/7, 12/7: the last gets the 4th
])
def test_position_counts_follow_the_weights(sizes, weights, counts):
    exact = [fractions.Fraction(repr(w)) for w in weights]
    assert position_counts(sizes, exact) == counts
    total = sum(counts)
    for size, weight, count in zip(sizes, exact, counts, strict=True):
        assert abs(count - weight / sum(exact) * total) < 1
        assert count >= size


def test_one_stream_epoch_holds_each_components_share_and_every_example():
    task = tasks.get("mixture", components=[
        fake(40, 0.5, "a"), fake(30, 0.3, "b"), fake(10, 0.2, "c")], seed=3)
    source = task.source("train")
    assert len(source) == 100  # max(40 / .5, 30 / .3, 10 / .2)
    epoch, _ = rollout.PromptStream(task, "train", seed=5).take(len(source))
    labels = collections.Counter(example["task"] for example in epoch)
    assert labels == {"a": 50, "b": 30, "c": 20}
    seen = collections.Counter(example["id"] for example in epoch)
    a_counts = collections.Counter(seen[f"a/{i}"] for i in range(40))
    assert a_counts == {1: 30, 2: 10}  # one full walk of 40, then 10 of the next
    assert all(seen[f"b/{i}"] == 1 for i in range(30))
    assert all(seen[f"c/{i}"] == 2 for i in range(10))  # walked twice, in two orders


def test_long_stream_proportions_match_the_weights():
    """3000 positions over many epochs: each share within 0.03 of its weight (>3 sigma)."""
    task = tasks.get("mixture", components=[
        fake(13, 0.6, "a"), fake(7, 0.3, "b"), fake(5, 0.1, "c")], seed=0)
    examples, _ = rollout.PromptStream(task, "train", seed=1).take(3000)
    shares = collections.Counter(example["task"] for example in examples)
    for label, weight in {"a": 0.6, "b": 0.3, "c": 0.1}.items():
        assert abs(shares[label] / 3000 - weight) < 0.03, (label, shares)


def test_same_seed_same_order_and_a_resumed_stream_continues_identically():
    def mixture(seed):
        return tasks.get("mixture", components=[fake(11, 2, "a"), fake(6, 1, "b")],
                                seed=seed)

    def order(seed):
        source = mixture(seed).source("train")
        return [source[i] for i in range(len(source))]

    assert order(7) == order(7)
    assert ids(order(7)) != ids(order(8))

    stream = rollout.PromptStream(mixture(7), "train", seed=2)
    stream.take(37)
    expected, positions = stream.take(50)
    resumed = rollout.PromptStream(mixture(7), "train", seed=2, position=37)
    again, again_positions = resumed.take(50)
    assert ids(again) == ids(expected) and list(again_positions) == list(positions)


def _value(expression: str) -> fractions.Fraction:
    """Exact value of an arithmetic expression with + - * / and parentheses."""
    binary = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv}

    def walk(node):
        if isinstance(node, ast.Constant):
            return fractions.Fraction(node.value)
        if isinstance(node, ast.UnaryOp):
            return -walk(node.operand) if isinstance(node.op, ast.USub) else walk(node.operand)
        return binary[type(node.op)](walk(node.left), walk(node.right))

    return walk(ast.parse(expression.strip(), mode="eval").body)


def _expression(example) -> str:
    question = example["question"]
    if example["task"] == "chain_sum":
        return question.split(":", 1)[1].rstrip(" =")
    return question.removeprefix("Calculate ").rstrip(".")


def test_a_mixed_batch_is_verified_prompted_and_extracted_by_each_component():
    task = tasks.get("mixture", components=[
        {"name": "basic_arithmetic", "weight": 1,
         "options": {"answer_format": "last_number", "size": 20, "num_workers": 1,
                     "min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}},
        {"name": "chain_sum", "weight": 1,
         "options": {"size": 20, "num_workers": 1, "min_terms": 2, "max_terms": 3,
                     "min_digits": 1, "max_digits": 2}},
    ], seed=0)
    try:
        examples = [task.source("train")[i] for i in range(12)]
        assert {example["task"] for example in examples} == {"basic_arithmetic", "chain_sum"}
        truth = [_value(_expression(example)) for example in examples]
        assert all(value.denominator == 1 for value in truth)
        bare = [f"I get {value}" for value in truth]  # right number, no box
        boxed = [f"so \\boxed{{{value}}}" for value in truth]
        wrong = [f"so \\boxed{{{value + 1}}}" for value in truth]
        report = task.verify(bare + boxed + wrong, examples * 3)
        is_chain = np.asarray([example["task"] == "chain_sum" for example in examples])
        # basic_arithmetic takes the last number; chain_sum needs the strict (boxed) form.
        np.testing.assert_array_equal(report.rewards[:12], np.where(is_chain, 0.0, 1.0))
        chain_statuses = [s for s, chain in zip(report.statuses[:12], is_chain, strict=True)
                          if chain]
        assert chain_statuses == ["no_answer"] * int(is_chain.sum())
        np.testing.assert_array_equal(report.rewards[12:24], np.ones(12))
        np.testing.assert_array_equal(report.rewards[24:], np.zeros(12))
        for example, value in zip(examples, truth, strict=True):
            prompt = task.format_prompt(example)
            chain = example["task"] == "chain_sum"
            assert prompt.endswith((BOXED_INSTRUCTION if chain else "number only.") + "\n")
            answer = task.extract_answer(f"I get {value}", example)
            assert answer == (None if chain else str(value))
        with pytest.raises(ValueError, match="extract_answer\\(completion, example\\)"):
            task.extract_answer("I get 3")
    finally:
        task.close()


def test_close_closes_every_component():
    CLOSED.clear()
    task = tasks.get("mixture", components=[fake(3, 1, "x"), fake(3, 1, "y")])
    task.close()
    assert CLOSED == {"x": 1, "y": 1}


@pytest.mark.parametrize("components, message", [
    ([], "empty"),
    ("math", "must be a list"),
    ([{"name": "nope", "weight": 1}], r"component 0 \(nope\): unknown task 'nope'"),
    ([{"name": "chain_sum", "weight": 0}], r"'weight' must be a number > 0, got 0"),
    ([{"name": "chain_sum", "weight": -1.5}], "must be a number > 0"),
    ([{"name": "chain_sum", "weight": "1"}], "must be a number > 0"),
    ([{"name": "chain_sum", "weight": True}], "must be a number > 0"),
    ([{"name": "chain_sum", "weight": float("nan")}], "must be a number > 0"),
    (["chain_sum"], "component 0: expected a dict"),
    ([{"weight": 1}], "component 0: missing 'name'"),
    ([{"name": "chain_sum"}], "missing 'weight'"),
    ([{"name": "chain_sum", "weight": 1, "option": {}}], r"unknown keys \['option'\]"),
    ([{"name": "chain_sum", "weight": 1, "options": 3}], "'options' must be a dict"),
    ([{"name": "mixture", "weight": 1}], "do not nest"),
    ([{"name": "chain_sum", "weight": 1}, {"name": "chain_sum", "weight": 2}],
     r"share the labels \['chain_sum'\]"),
])
def test_malformed_components_are_named(components, message):
    with pytest.raises(ValueError, match=message):
        tasks.get("mixture", components=components)


def test_bad_component_options_and_foreign_examples_are_named():
    with pytest.raises(ValueError, match=r"component 1 \(basic_arithmetic\).*answer_format"):
        tasks.get("mixture", components=[
            fake(3, 1, "a"), {"name": "basic_arithmetic", "weight": 1,
                              "options": {"answer_format": "words"}}])
    task = tasks.get("mixture", components=[fake(3, 1, "a"), fake(3, 1, "b")])
    with pytest.raises(ValueError, match=r"task=None, not one of this mixture's components"):
        task.verify(["1"], [{"id": "x", "question": "q", "answer": "1"}])
    with pytest.raises(ValueError, match=r"task='c'"):
        task.format_prompt({"id": "x", "question": "q", "answer": "1", "task": "c"})
    with pytest.raises(ValueError, match="no examples"):
        MixtureSource(["a"], [[]], [fractions.Fraction(1)], seed=0)


def test_lens_recipe_trains_on_math_and_dapo_math_and_evaluates_on_math500():
    path = ROOT / "configs" / "lens_qwen25_3b_math.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for variant in module.VARIANTS:
        config = module.get_config(variant)
        config_lib.validate(config)
        assert config.task.name == "mixture" and config.eval.task == "math500"
        components = parse_components(config.task.options.to_dict()["components"])
        assert [c.name for c in components] == ["math", "dapo_math"]
        assert all(c.options["data_dir"] == config.eval.task_options.data_dir
                   for c in components)


def test_group_metrics_average_each_components_groups():
    task = tasks.get("mixture", components=[
        fake(3, 1, "a"), fake(3, 1, "b"), fake(3, 1, "c")])
    examples = [{"id": i, "task": label} for i, label in enumerate("aba")]
    group_rewards = np.asarray([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert task.group_metrics(examples, group_rewards) == {
        "groups/a": 2.0, "reward_mean/a": 0.25,  # (1 + 1) / 8
        "groups/b": 1.0, "reward_mean/b": 0.75,
        "groups/c": 0.0,  # no groups this step: no mean
    }


@pytest.mark.slow
def test_training_on_a_mixture_logs_each_components_reward_and_groups(tmp_path):
    import toy

    from rlvr_jax import train

    config = toy.toy_config(toy.write_model(str(tmp_path / "model")))
    options = {"size": 16, "num_workers": 1, "min_terms": 2, "max_terms": 2, "min_digits": 1,
               "max_digits": 1}
    config.task.name = "mixture"
    config.task.options = {"components": [
        {"name": "basic_arithmetic", "weight": 1, "options": {**options,
                                                              "answer_format": "last_number"}},
        {"name": "chain_sum", "weight": 1, "options": options}]}
    config.rollout.max_prompt_len = 192
    config.rollout.prompt_bucket = 64
    config.total_steps = 2
    config.eval.num_prompts = 4
    config.logging.tensorboard = False
    train.run(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [row for row in map(json.loads, f) if "train/reward_mean" in row]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        groups = {label: row[f"train/groups/{label}"] for label in ("basic_arithmetic",
                                                                    "chain_sum")}
        assert sum(groups.values()) == config.rollout.prompts_per_step
        weighted = sum(count * row[f"train/reward_mean/{label}"]
                       for label, count in groups.items() if count)
        assert weighted / config.rollout.prompts_per_step == pytest.approx(
            row["train/reward_mean"])
