"""Variants: controlled ones differ from GRPO only in ``advantage.*``; paper recipes carry their
paper's settings; every comparison sweep and every paper recipe's baselines are controlled."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import pytest

from launch import sweep
from rlvr_jax import config as config_lib
from rlvr_jax import recipes
from rlvr_jax.config import base_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEPS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "sweeps").glob("*.py"))
PAPER_RECIPE_FILES = ("asym_grpo_qwen3_4b_math", "lens_qwen25_3b_math", "progrpo_qwen25_7b_dapo")


def changed_keys(a: Any, b: Any) -> set[str]:
    flat_a, flat_b = config_lib.flatten(a), config_lib.flatten(b)
    return {k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k, "?") != flat_b.get(k, "?")}


def outside_advantage(keys: set[str]) -> set[str]:
    return {k for k in keys if not k.startswith("advantage.")}


@pytest.mark.parametrize("variant", list(recipes.CONTROLLED))
def test_controlled_variants_change_only_the_advantage(variant):
    grpo = recipes.apply_variant(base_config(), "grpo")
    other = recipes.apply_variant(base_config(), variant)
    assert outside_advantage(changed_keys(grpo, other)) == set()
    assert other.advantage.estimator == recipes.CONTROLLED[variant]


@pytest.mark.parametrize("variant", list(recipes.CONTROLLED_LOSSES))
def test_controlled_loss_variants_change_only_the_loss_objective(variant):
    grpo = recipes.apply_variant(base_config(), "grpo")
    other = recipes.apply_variant(base_config(), variant)
    assert changed_keys(grpo, other) == {"loss.objective"}
    assert other.loss.objective == recipes.CONTROLLED_LOSSES[variant]
    assert other.advantage.estimator == "grpo"


def test_a_loss_variant_keeps_the_recipes_own_loss_settings():
    config = base_config()
    config.loss.kl_cov_ratio, config.loss.clip_high = 2e-3, 0.28  # a recipe's choices
    recipes.apply_variant(config, "kl_cov")
    assert (config.loss.objective, config.loss.kl_cov_ratio, config.loss.clip_high) == (
        "kl_cov", 2e-3, 0.28)
    assert set(recipes.CONTROLLED_LOSSES).isdisjoint(recipes.CONTROLLED)


def test_paper_recipes_carry_their_papers_settings():
    dapo = recipes.apply_variant(base_config(), "dapo_recipe")
    assert (dapo.advantage.estimator, dapo.loss.aggregation, dapo.loss.clip_high) == (
        "grpo", "token_mean", 0.28)
    assert dapo.rollout.dynamic_sampling and dapo.rollout.overlong_buffer == 256 // 4
    grpo_paper = recipes.apply_variant(base_config(), "grpo_recipe")
    assert grpo_paper.loss.aggregation == "seq_mean_token_mean"
    dr_grpo_paper = recipes.apply_variant(base_config(), "dr_grpo_recipe")
    assert dr_grpo_paper.loss.aggregation == "seq_sum_over_max_len"
    progrpo_paper = recipes.apply_variant(base_config(), "progrpo_recipe")
    assert outside_advantage(changed_keys(dapo, progrpo_paper)) == set()
    assert set(recipes.CONTROLLED).isdisjoint(recipes.PAPER_RECIPES)
    assert all(name.endswith("_recipe") for name in recipes.PAPER_RECIPES)


def test_unknown_variant_names_both_kinds():
    with pytest.raises(ValueError, match=r"unknown variant 'dapo'; controlled .*grpo.*"
                                         r"paper recipes: .*dapo_recipe"):
        recipes.apply_variant(base_config(), "dapo")


@pytest.mark.parametrize("path", SWEEPS, ids=[pathlib.Path(p).stem for p in SWEEPS])
def test_comparison_sweeps_differ_only_in_the_advantage_and_the_seed(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep files name their recipes relative to the repository
    runs = sweep.expand(sweep.load_function(path, "get_sweep")(), "root")
    configs = sweep.resolve_runs(runs)
    assert len(configs) > 1
    for run, config in zip(runs[1:], configs[1:], strict=True):
        changed = outside_advantage(changed_keys(configs[0], config))
        assert changed <= {"seed"}, (run.name, changed)


@pytest.mark.parametrize("name", PAPER_RECIPE_FILES)
def test_paper_recipe_baselines_share_the_methods_settings(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    method, *baselines = module.VARIANTS
    assert baselines
    reference = module.get_config(method)
    for baseline in baselines:
        changed = outside_advantage(changed_keys(reference, module.get_config(baseline)))
        assert changed == set(), (baseline, changed)
