"""``python -m rlvr_jax.train`` with the toy task registered (the CLI under test)."""

import toy

from rlvr_jax import train

if __name__ == "__main__":
    toy.register()
    train.main()
