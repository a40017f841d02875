"""``python -m rlvr_jax.train`` with the toy task registered (the CLI under test)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import toy

from rlvr_jax import train

if __name__ == "__main__":
    toy.register()
    train.main()
