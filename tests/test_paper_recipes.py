"""Paper recipes in configs/: their key settings equal the values their docstrings cite, and the
baselines of a recipe differ from its method only in ``advantage.*`` (tests/test_recipes.py)."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from rlvr_jax import advantages
from rlvr_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ASYM_RECIPE = ROOT / "configs" / "asym_grpo_qwen3_4b_math.py"

# The setting table of the recipe's docstring, typed out by hand.
ASYM_CITED = {
    "model.name": "qwen3-4b",
    "task.name": "math",
    "eval.task": "math500",
    "advantage.estimator": "asym_grpo",
    "advantage.options.beta_pos": 0.9,
    "advantage.options.beta_neg": 0.4,
    "rollout.prompts_per_step": 128,
    "rollout.group_size": 8,
    "rollout.max_new_tokens": 4096,
    "rollout.sampling.temperature": 1.0,
    "optim.name": "adamw",
    "optim.learning_rate": 1e-6,
    "optim.weight_decay": 0.1,
    "optim.warmup_steps": 10,
    "batching.mini_batches": 4,
    "total_steps": 300,
    "loss.clip_low": 0.2,
    "loss.clip_high": 0.2,
    "loss.kl_coef": 0.0,
    "loss.entropy_coef": 0.0,
    "loss.aggregation": "token_mean",
}



def load_recipe(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def asym_recipe():
    return load_recipe(ASYM_RECIPE)


def test_asym_grpo_recipe_has_the_cited_settings(asym_recipe):
    settings = config_lib.flatten(asym_recipe.get_config("asym_grpo"))
    assert {key: settings[key] for key in ASYM_CITED} == ASYM_CITED


def test_asym_grpo_docstring_cites_the_paper(asym_recipe):
    doc = asym_recipe.__doc__
    assert "arXiv:2604.04894" in doc
    for key in ("beta_pos / beta_neg", "model", "train data", "temperature", "KL / entropy"):
        assert key in doc, key


def test_recipe_betas_give_the_spec_worked_values(asym_recipe):
    """estimators.md: with p = 0.25, A = +2.687875 for the correct, -0.644394 for the wrong."""
    options = dict(asym_recipe.get_config("asym_grpo").advantage.options)
    rewards = np.asarray([[1.0, 0.0, 0.0, 0.0]], np.float32)  # [1, 4], p = 0.25
    values = np.asarray(advantages.asym_grpo(rewards, **options))
    np.testing.assert_allclose(values[0], [2.687875, -0.644394, -0.644394, -0.644394], rtol=1e-5)


def test_asym_recipe_rejects_an_unknown_variant(asym_recipe):
    with pytest.raises(ValueError, match=r"unknown variant 'lens'.*asym_grpo"):
        asym_recipe.get_config("lens")
