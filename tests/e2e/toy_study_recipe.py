"""Recipe file for the study tests: the toy recipe with the variant given (the environment is
left alone), the toy model directory from $TOY_MODEL_DIR."""

import os

import toy

from rlvr_jax.recipes import apply_variant


def get_config(variant: str = "grpo"):
    return apply_variant(toy.toy_config(os.environ["TOY_MODEL_DIR"]), variant)
