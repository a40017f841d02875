"""Recipe file for the CLI end-to-end tests: the toy model directory comes from $TOY_MODEL_DIR."""

import os

import toy


def get_config(variant: str = "grpo"):
    os.environ.setdefault("TOY_VARIANT", variant or "grpo")
    return toy.toy_config(os.environ["TOY_MODEL_DIR"])
