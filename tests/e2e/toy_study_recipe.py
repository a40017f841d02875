"""Recipe file for the study tests: the toy recipe with the variant given (not the environment's
first one), the toy model directory from $TOY_MODEL_DIR."""

import os

import toy


def get_config(variant: str = "grpo"):
    os.environ["TOY_VARIANT"] = variant
    return toy.toy_config(os.environ["TOY_MODEL_DIR"])
